"""REST API for runs and DAG files (SPEC section 9).

Views are glue over `dags.runs` (run lifecycle), `dags.serializers` (the run JSON, which
the serializers produce), `controlplane.core.spec` (parsing) and `dags.reports` (logs). The
other serializers here describe the JSON of the smaller responses for the OpenAPI schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, NotFound, ParseError
from rest_framework.generics import ListAPIView
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.core.clock import utcnow
from controlplane.core.rpc.client import wake_coordinator_soon
from controlplane.core.spec import (
    DagFile,
    DagSpecError,
    load_dag_file,
    parse_dag_file,
    parse_params_string,
    protected_name_problem,
)
from controlplane.core.states import values
from controlplane.roles import OperatorWrites, RunStartPermission
from dags.models import DagRun, RunStatus, StepRun
from dags.progress import DagNotFound, resolve_dag_path
from dags.reports import read_step_log_chunk, step_tries
from dags.runs import RunError, create_run, get_run, request_cancel, retry_run
from dags.serializers import BlankAsNullField, RfcTimeField, RunDetailSerializer, run_detail_json
from workers.api import BoundedPagination, ErrorSerializer

# What a DAG file name / explicit DAG name may contain (the parser's rule); it also keeps
# API callers inside the DAGs dir: no "/" and no leading "." means no path traversal.
_DAG_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_PARAM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_SPEC_NAME = "api"


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The run's state does not allow this."
    default_code = "conflict"


# ---- serializers (the run list and detail render through theirs; the rest document the JSON)


class RunListItemSerializer(serializers.Serializer):
    dag_run_id = serializers.CharField(source="id")
    dag_name = serializers.CharField()
    status = serializers.CharField(help_text="queued, running, succeeded, failed or cancelled")
    waiting_reason = BlankAsNullField(help_text="why a queued run waits; null otherwise")
    execution_mode = serializers.CharField(help_text="local or distributed")
    worker_id = BlankAsNullField()
    attempt = serializers.IntegerField()
    queued_at = RfcTimeField()
    started_at = RfcTimeField(allow_null=True)
    finished_at = RfcTimeField(allow_null=True)
    root_dag_run_id = serializers.CharField(source="root_run_id")
    parent_dag_run_id = serializers.CharField(source="parent_id", allow_null=True)
    parent_dag_run_name = serializers.CharField(source="parent.dag_name", allow_null=True)


class RunCreateSerializer(serializers.Serializer):
    dag = serializers.CharField(required=False, help_text="a DAG in the DAGs dir (file stem)")
    spec = serializers.CharField(required=False, help_text="DAG YAML, instead of dag")
    name = serializers.CharField(
        required=False, help_text="with spec: the main DAG's name when the YAML has none"
    )
    params = serializers.JSONField(required=False, help_text='{"K": "V"} or the string "K=V K2=V2"')


class RunCreatedSerializer(serializers.Serializer):
    dag_run_id = serializers.CharField()


class SpecErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="PATH: MESSAGE, or PATH: hint: HOW TO FIX (only for an invalid DAG spec)",
    )


class StepLogSerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.CharField()
    attempt = serializers.IntegerField()
    tries = serializers.IntegerField(help_text="tries of a retried step in this attempt")
    try_ = serializers.IntegerField(help_text="which try the log is of (the last unless ?try=)")
    log = serializers.CharField(
        help_text="the tail of the step's log (at most 1 MiB; 64 KiB with ?offset=)"
    )
    start = serializers.IntegerField(help_text="byte offset in the log file where `log` begins")
    end = serializers.IntegerField(help_text="byte offset after `log`: the next ?offset=")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["try"] = fields.pop("try_")  # a keyword in Python, the field's name in JSON
        return fields


class RunLogsSerializer(serializers.Serializer):
    steps = StepLogSerializer(many=True)


class DagSerializer(serializers.Serializer):
    name = serializers.CharField()
    file = serializers.CharField()
    description = serializers.CharField()
    schedule = serializers.ListField(child=serializers.CharField())
    worker_selector = serializers.JSONField(help_text='a label map, "local", or null if invalid')
    valid = serializers.BooleanField()
    errors = serializers.ListField(
        child=serializers.CharField(), help_text="PATH: MESSAGE, each followed by its hint line"
    )
    warnings = serializers.ListField(
        child=serializers.CharField(), help_text="PATH: warning: MESSAGE (the DAG is still valid)"
    )


class DagListSerializer(serializers.Serializer):
    dags = DagSerializer(many=True)


class DagStepSerializer(serializers.Serializer):
    name = serializers.CharField()
    executor_type = serializers.CharField()
    command = serializers.CharField(allow_null=True)
    script = serializers.CharField(allow_null=True)
    depends = serializers.ListField(child=serializers.CharField())
    call = serializers.CharField(allow_null=True)
    worker_selector = serializers.DictField(child=serializers.CharField())


class DagDetailSerializer(DagSerializer):
    params = serializers.DictField(child=serializers.CharField())
    steps = DagStepSerializer(many=True)
    yaml = serializers.CharField()


class RunPagination(BoundedPagination):
    results_key = "dag_runs"
    default_limit = 50
    max_limit = 500


# ---- helpers


def _run_or_404(run_id: str) -> DagRun:
    try:
        return get_run(run_id)
    except RunError as exc:
        raise NotFound(str(exc)) from None


def _dags_dir() -> Path:
    return Path(settings.DAGU.paths.dags_dir).resolve()


def dag_files(dags_dir: Path) -> list[Path]:
    if not dags_dir.is_dir():
        return []
    return sorted(p for p in dags_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def find_dag_path(name: str, *, dags_dir: Path) -> Path:
    """The DAG file for `name`: its file stem, else the main DAG name of a file in dags_dir."""
    if not _DAG_NAME_RE.fullmatch(name):
        raise NotFound(f"DAG {name!r} not found: not a valid DAG name")
    try:
        # An absolute path keeps resolve_dag_path from also trying the working directory.
        return resolve_dag_path(str(dags_dir / name), dags_dir=dags_dir)
    except DagNotFound:
        pass
    for path in dag_files(dags_dir):
        try:
            if load_dag_file(path, dags_dir=dags_dir).main.name == name:
                return path
        except DagSpecError:
            continue
    raise NotFound(f'DAG "{name}" not found in {dags_dir}')


def describe_dag_file(path: Path, *, dags_dir: Path) -> tuple[dict[str, Any], DagFile | None]:
    """The DAG list entry for one file, and the parsed file (None when invalid)."""
    try:
        dag_file = load_dag_file(path, dags_dir=dags_dir)
    except DagSpecError as exc:
        entry = {
            "name": path.stem,
            "file": path.name,
            "description": "",
            "schedule": [],
            "worker_selector": None,
            "valid": False,
            "errors": exc.lines(),
            "warnings": [],
        }
        return entry, None
    main = dag_file.main
    entry = {
        "name": main.name,
        "file": path.name,
        "description": main.description,
        "schedule": list(main.schedule),
        "worker_selector": "local" if main.force_local else dict(main.worker_selector),
        "valid": True,
        "errors": [],
        "warnings": [str(w) for w in dag_file.warnings],
    }
    return entry, dag_file


def start_dag_run(
    request: HttpRequest | Request, dag_file: DagFile, *, params: dict[str, str], source: str
) -> DagRun:
    """Queue a run of `dag_file` as the requesting user (the API's and the DAG page's Start)."""
    return create_run(
        dag_file,
        now=utcnow(),
        default_mode=settings.DAGU.default_execution_mode,
        params=params,
        source=source,
        by=request.user.get_username(),
    )


def params_from_request(value: object) -> dict[str, str]:
    """`params` as a JSON object of scalars or a "K=V ..." string; ParseError otherwise."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            return parse_params_string(value)
        except ValueError as exc:
            raise ParseError(f"params: {exc}") from None
    if not isinstance(value, dict):
        raise ParseError('params: expected an object or a "K=V ..." string')
    params: dict[str, str] = {}
    for key, item in value.items():
        if not _PARAM_NAME_RE.fullmatch(key):
            raise ParseError(f'params: "{key}" is not a valid parameter name')
        if problem := protected_name_problem(key):
            raise ParseError(f"params: {problem}")
        if item is None or isinstance(item, dict | list):
            raise ParseError(f"params.{key}: expected a string, number or boolean")
        # Same scalar rule as label maps: true -> "true", 64 -> "64".
        params[key] = str(item).lower() if isinstance(item, bool) else str(item)
    return params


def dag_file_from_request(data: object) -> tuple[DagFile, str]:
    """Parse the DAG named by `dag` or given inline as `spec`; returns it and its source."""
    if not isinstance(data, dict):
        raise ParseError("request body: expected a JSON object")
    dag, spec = data.get("dag"), data.get("spec")
    if bool(dag) == bool(spec):
        raise ParseError('request body: give exactly one of "dag" (a DAG name) or "spec" (YAML)')
    dags_dir = _dags_dir()
    if dag:
        if not isinstance(dag, str):
            raise ParseError("dag: expected the name of a DAG in the DAGs dir")
        path = find_dag_path(dag, dags_dir=dags_dir)
        return load_dag_file(path, dags_dir=dags_dir), str(path)
    if not isinstance(spec, str):
        raise ParseError("spec: expected the DAG YAML as a string")
    name = data.get("name") or DEFAULT_SPEC_NAME
    if not isinstance(name, str) or not _DAG_NAME_RE.fullmatch(name):
        raise ParseError(f"name: {name!r} is not a valid DAG name (letters, digits, _ - .)")
    source = f"{name}.yaml"
    return parse_dag_file(spec, source=source, default_name=name, dags_dir=dags_dir), source


def spec_error_response(exc: DagSpecError) -> Response:
    errors = exc.lines()
    return Response(
        {"detail": f"invalid DAG spec: {len(exc.problems)} problem(s)", "errors": errors},
        status=status.HTTP_400_BAD_REQUEST,
    )


# ---- views


class DagRunListView(ListAPIView):
    permission_classes = [RunStartPermission]
    serializer_class = RunListItemSerializer
    pagination_class = RunPagination
    parser_classes = [JSONParser]  # the body is JSON (params is an object): no form encodings

    def get_queryset(self) -> QuerySet[DagRun]:
        qs = DagRun.objects.select_related("parent").order_by("-queued_at", "-id")
        query = self.request.query_params
        if (run_status := query.get("status")) is not None:
            if run_status not in values(RunStatus):
                raise ParseError(
                    f'status: unknown status "{run_status}"; expected one of '
                    + ", ".join(values(RunStatus))
                )
            qs = qs.filter(status=run_status)
        texts = [query.get(name) or "" for name in ("dag_name", "worker_id", "root", "parent")]
        if any("\x00" in text for text in texts):
            return qs.none()  # nothing stored holds a NUL (and PostgreSQL cannot compare one)
        if dag_name := query.get("dag_name"):
            qs = qs.filter(dag_name=dag_name)
        if worker_id := query.get("worker_id"):
            qs = qs.filter(worker_id=worker_id)
        if root := query.get("root"):
            qs = qs.filter(Q(pk=root) | Q(root_id=root))
        if parent := query.get("parent"):
            qs = qs.filter(parent_id=parent)
        return qs

    @extend_schema(
        operation_id="listDagRuns",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=values(RunStatus)),
            OpenApiParameter("dag_name", OpenApiTypes.STR),
            OpenApiParameter("worker_id", OpenApiTypes.STR),
            OpenApiParameter(
                "root", OpenApiTypes.STR, description="a root run id: that run and its sub-runs"
            ),
            OpenApiParameter("parent", OpenApiTypes.STR, description="a run id: its children"),
        ],
        responses={200: RunListItemSerializer(many=True), 400: ErrorSerializer},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="createDagRun",
        request=RunCreateSerializer,
        responses={201: RunCreatedSerializer, 400: SpecErrorSerializer, 404: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        try:
            dag_file, source = dag_file_from_request(request.data)
        except DagSpecError as exc:
            return spec_error_response(exc)
        params = params_from_request(request.data.get("params"))
        try:
            run = start_dag_run(request, dag_file, params=params, source=source)
        except RunError as exc:
            raise ParseError(str(exc)) from None
        wake_coordinator_soon(settings.DAGU)
        return Response({"dag_run_id": run.id}, status=status.HTTP_201_CREATED)


def run_detail(run: DagRun) -> dict[str, Any]:
    """The run JSON every RunDetail response sends: the run with its placement diagnosis."""
    return run_detail_json(run, now=utcnow(), timing=settings.DAGU.timing)


class DagRunDetailView(APIView):
    @extend_schema(
        operation_id="getDagRun", responses={200: RunDetailSerializer, 404: ErrorSerializer}
    )
    def get(self, request: Request, run_id: str) -> Response:
        return Response(run_detail(_run_or_404(run_id)))


class DagRunCancelView(APIView):
    permission_classes = [OperatorWrites]

    @extend_schema(
        operation_id="cancelDagRun",
        request=None,
        responses={200: RunDetailSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request, run_id: str) -> Response:
        _run_or_404(run_id)
        try:
            run = request_cancel(run_id, now=utcnow(), by=request.user.get_username())
        except RunError as exc:
            raise Conflict(str(exc)) from None
        return Response(run_detail(run))


class DagRunRetryView(APIView):
    permission_classes = [OperatorWrites]

    @extend_schema(
        operation_id="retryDagRun",
        request=None,
        responses={200: RunDetailSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request, run_id: str) -> Response:
        _run_or_404(run_id)
        try:
            run = retry_run(run_id, now=utcnow(), by=request.user.get_username())
        except RunError as exc:
            raise Conflict(str(exc)) from None
        wake_coordinator_soon(settings.DAGU)
        return Response(run_detail(run))


class DagRunLogsView(APIView):
    @extend_schema(
        operation_id="getDagRunLogs",
        parameters=[
            OpenApiParameter("step", OpenApiTypes.STR, description="only this step"),
            OpenApiParameter(
                "try",
                {"type": "integer", "minimum": 1, "maximum": 1000},
                description="with step: an earlier try (1 = first) of a retried step",
            ),
            OpenApiParameter(
                "offset",
                {"type": "integer", "minimum": 0, "maximum": 10**15 - 1},
                description="with step: follow the log from this byte (the last `end`); "
                "returns at most the last 64 KiB",
            ),
        ],
        responses={200: RunLogsSerializer, 400: ErrorSerializer, 404: ErrorSerializer},
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = _run_or_404(run_id)
        steps = list(run.steps.order_by("position"))
        step_name = request.query_params.get("step")
        if step_name:
            steps = [s for s in steps if s.name == step_name]
            if not steps:
                raise NotFound(f'run "{run_id}" has no step "{step_name}"')
        wanted = _try_param(request, steps if step_name else None)
        offset = _offset_param(request, steps if step_name else None)
        log_dir = Path(settings.DAGU.paths.log_dir)
        limit = FOLLOW_LOG_LIMIT if offset is not None else 1 << 20
        chunks = [
            (s, read_step_log_chunk(log_dir, s, offset=offset or 0, limit=limit, try_number=wanted))
            for s in steps
        ]
        return Response(
            {
                "steps": [
                    {
                        "name": s.name,
                        "status": s.status,
                        "attempt": s.attempt,
                        "tries": step_tries(s),
                        "try": wanted or step_tries(s),
                        "log": chunk.text,
                        "start": chunk.start,
                        "end": chunk.end,
                    }
                    for s, chunk in chunks
                ]
            }
        )


# A follower (the run page's log tail) gets at most this much per poll: bounded however
# fast the step writes or however far behind the reader is.
FOLLOW_LOG_LIMIT = 64 * 1024


def _offset_param(request: Request, steps: list[StepRun] | None) -> int | None:
    """`?offset=N` of the logs endpoint: a byte offset in the one named step's log."""
    raw = request.query_params.get("offset")
    if raw is None:
        return None
    if steps is None:
        raise ParseError("offset: give the step too (?step=NAME&offset=N)")
    if not raw.isdigit() or len(raw) > 15:
        raise ParseError(f"offset: expected a byte offset from 0, got {raw[:40]!r}")
    return int(raw)


def _try_param(request: Request, steps: list[StepRun] | None) -> int | None:
    """`?try=N` of the logs endpoint: a try the one named step has had, else 400/404."""
    raw = request.query_params.get("try")
    if raw is None:
        return None
    if steps is None:
        raise ParseError("try: give the step too (?step=NAME&try=N)")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ParseError(f"try: expected a try number from 1, got {raw[:40]!r}")
    [step] = steps
    if int(raw) > step_tries(step):
        raise NotFound(
            f'step "{step.name}" has {step_tries(step)} tries in its attempt {step.attempt}'
        )
    return int(raw)


class DagListView(APIView):
    @extend_schema(operation_id="listDags", responses={200: DagListSerializer})
    def get(self, request: Request) -> Response:
        dags_dir = _dags_dir()
        entries = [describe_dag_file(p, dags_dir=dags_dir)[0] for p in dag_files(dags_dir)]
        return Response({"dags": entries})


class DagDetailView(APIView):
    @extend_schema(
        operation_id="getDag", responses={200: DagDetailSerializer, 404: ErrorSerializer}
    )
    def get(self, request: Request, name: str) -> Response:
        dags_dir = _dags_dir()
        path = find_dag_path(name, dags_dir=dags_dir)
        entry, dag_file = describe_dag_file(path, dags_dir=dags_dir)
        main = dag_file.main if dag_file else None
        entry["params"] = dict(main.params) if main else {}
        entry["steps"] = [
            {
                "name": s.name,
                "executor_type": s.executor_type,
                "command": s.command,
                "script": s.script,
                "depends": list(s.depends),
                "call": s.call,
                "worker_selector": dict(s.worker_selector),
            }
            for s in (main.steps if main else ())
        ]
        try:
            entry["yaml"] = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            entry["yaml"] = ""
        return Response(entry)
