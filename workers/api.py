"""REST API for workers (SPEC section 9): list, detail, drain and undrain.

The JSON comes from `workers.summary.worker_summaries`, the same source as the Workers page
and the `workers` command; the serializers below only describe it for the OpenAPI schema.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ParseError
from rest_framework.generics import ListAPIView
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.core.clock import utcnow
from controlplane.core.health import HEALTH_STATES
from controlplane.core.labels import (
    MAX_LABEL_KEY_NAME,
    MAX_LABEL_KEY_PREFIX,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    LabelError,
    parse_label_string,
)
from controlplane.roles import ManagerWrites
from workers.models import RegisteredVia, Worker
from workers.presence import set_draining
from workers.summary import summarize, worker_queryset, worker_summaries

logger = logging.getLogger(__name__)


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class RunningTaskSerializer(serializers.Serializer):
    dag_name = serializers.CharField()
    dag_run_id = serializers.CharField()
    root_dag_run_name = serializers.CharField()
    root_dag_run_id = serializers.CharField()
    parent_dag_run_name = serializers.CharField(help_text='"" for a root run')
    parent_dag_run_id = serializers.CharField(help_text='"" for a root run')
    started_at = serializers.DateTimeField()


class WorkerSerializer(serializers.Serializer):
    id = serializers.CharField()
    labels = serializers.DictField(child=serializers.CharField())
    health_status = serializers.ChoiceField(choices=HEALTH_STATES)
    last_heartbeat = serializers.DateTimeField(allow_null=True, help_text="RFC 3339, UTC")
    running_tasks = RunningTaskSerializer(many=True)
    host = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    max_active_runs = serializers.IntegerField()
    busy = serializers.IntegerField(help_text="runs this worker is executing now")
    draining = serializers.BooleanField()
    registered_via = serializers.ChoiceField(choices=RegisteredVia.choices)


class BoundedPagination(LimitOffsetPagination):
    """`limit`/`offset` pages as `{<results_key>: [...], count, next, previous}`."""

    results_key = "results"
    default_limit = 50
    max_limit = 500
    max_offset = 2**31 - 1  # far past any run table; a bigger one would overflow SQLite

    # DRF falls back to the defaults on a bad limit or offset; a typo should not silently
    # page from the start, so it is a 400 and the schema says what is valid.
    def get_limit(self, request: Request) -> int:
        limit = query_int(request, self.limit_query_param, low=1, high=None)
        return self.default_limit if limit is None else min(limit, self.max_limit)

    def get_offset(self, request: Request) -> int:
        return query_int(request, self.offset_query_param, low=0, high=self.max_offset) or 0

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"]["minimum"] = 1
                parameter["description"] += f" (at most {self.max_limit} are returned)"
            elif parameter["name"] == self.offset_query_param:
                parameter["schema"].update(minimum=0, maximum=self.max_offset)
        return parameters

    def get_paginated_response(self, data: list[Any]) -> Response:
        return Response(
            {
                self.results_key: data,
                "count": self.count,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "nullable": True, "format": "uri"}
        return {
            "type": "object",
            "required": [self.results_key, "count", "next", "previous"],
            "properties": {
                self.results_key: schema,
                "count": {"type": "integer"},
                "next": link,
                "previous": link,
            },
        }


def query_int(request: Request, name: str, *, low: int, high: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < low or (high and int(raw) > high):
        within = f"from {low} to {high}" if high else f"from {low}"
        raise ParseError(f"{name}: expected an integer {within}, got {raw[:40]!r}")
    return int(raw)


# The `?selector=` grammar, exactly as the view enforces it and the schema documents it:
# k=v pairs split by commas, spaces allowed around "," and "=", within the label limits.
# Keys and values carry no commas, whitespace or control characters (the class spells out
# what Python's str.strip() removes, so the regex means the same in every engine), keys no
# "=", and a key's name (after an optional prefix/) no "/".
_NOT_TEXT = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SELECTOR_PAIR = (
    rf" *(?:[^,={_NOT_TEXT}]{{0,{MAX_LABEL_KEY_PREFIX}}}/)?"
    rf"[^,=/{_NOT_TEXT}]{{1,{MAX_LABEL_KEY_NAME}}}"
    rf" *= *[^,{_NOT_TEXT}]{{0,{MAX_LABEL_VALUE}}} *"
)
SELECTOR_PATTERN = rf"^(?:{_SELECTOR_PAIR}(?:,{_SELECTOR_PAIR}){{0,{MAX_LABELS - 1}}})?$"
# `?health=` takes a state as the API prints it, or in lower case.
HEALTH_FILTERS = (*HEALTH_STATES, *(state.lower() for state in HEALTH_STATES))


def _one_worker(worker_id: str) -> dict[str, Any]:
    rows = worker_summaries(now=utcnow(), timing=settings.DAGU.timing, worker_id=worker_id)
    if not rows:
        raise NotFound(f'worker "{worker_id}" not found')
    return rows[0]


def _selector_filter(value: str) -> dict[str, str]:
    try:
        selector = parse_label_string(value)
    except LabelError as exc:
        raise ParseError(f"selector: {exc}") from None
    # The same engine hypothesis generates from: Python's `$` also takes a trailing newline.
    if not re.search(SELECTOR_PATTERN, value):
        raise ParseError(
            "selector: expected k=v,... with no empty items, and no spaces, commas or "
            "control characters inside a key or value"
        )
    return selector


def _health_filter(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in HEALTH_FILTERS:
        raise ParseError(
            f'health: unknown state "{value}"; expected one of {", ".join(HEALTH_STATES)}'
        )
    return value.upper()


class WorkerPagination(BoundedPagination):
    results_key = "workers"
    default_limit = 100
    max_limit = 1000


class WorkerListView(ListAPIView):
    serializer_class = WorkerSerializer
    pagination_class = WorkerPagination

    def get_queryset(self) -> QuerySet[Worker]:
        query = self.request.query_params
        return worker_queryset(
            now=utcnow(),
            timing=settings.DAGU.timing,
            selector=_selector_filter(query.get("selector", "")),
            health=_health_filter(query.get("health")),
        )

    @extend_schema(
        operation_id="listWorkers",
        parameters=[
            OpenApiParameter("health", OpenApiTypes.STR, enum=HEALTH_FILTERS),
            OpenApiParameter(
                "selector",
                OpenApiTypes.STR,
                description="only workers carrying every k=v,...",
                pattern=SELECTOR_PATTERN,
            ),
        ],
        responses={200: WorkerSerializer(many=True), 400: ErrorSerializer},
    )
    def get(self, request: Request) -> Response:
        # One page of rows, then their running runs in one query: never the whole fleet.
        page = self.paginate_queryset(self.get_queryset())
        assert page is not None
        rows = summarize(list(page), now=utcnow(), timing=settings.DAGU.timing)
        return self.get_paginated_response(rows)


class WorkerDetailView(APIView):
    @extend_schema(
        operation_id="getWorker", responses={200: WorkerSerializer, 404: ErrorSerializer}
    )
    def get(self, request: Request, worker_id: str) -> Response:
        return Response(_one_worker(worker_id))


def _drain(request: Request, worker_id: str, *, draining: bool) -> Response:
    # The coordinator reads the flag from the row; nothing else to tell it.
    if not set_draining(worker_id, draining=draining, by=request.user.get_username()):
        raise NotFound(f'worker "{worker_id}" not found')
    verb = "draining" if draining else "undrained"
    logger.info("worker %s %s via the API by %s", worker_id, verb, request.user)
    return Response(_one_worker(worker_id))


class WorkerDrainView(APIView):
    permission_classes = [ManagerWrites]

    @extend_schema(
        operation_id="drainWorker",
        request=None,
        responses={200: WorkerSerializer, 404: ErrorSerializer},
    )
    def post(self, request: Request, worker_id: str) -> Response:
        return _drain(request, worker_id, draining=True)


class WorkerUndrainView(APIView):
    permission_classes = [ManagerWrites]

    @extend_schema(
        operation_id="undrainWorker",
        request=None,
        responses={200: WorkerSerializer, 404: ErrorSerializer},
    )
    def post(self, request: Request, worker_id: str) -> Response:
        return _drain(request, worker_id, draining=False)
