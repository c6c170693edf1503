"""The run JSON (SPEC section 1), produced by these serializers and nothing else.

`start --json`, `status --json` and every RunDetail API response call `run_json` /
`run_detail_json`, and the OpenAPI schema is generated from the same classes, so what is
documented is what is sent. The serializers are read-only: they only render.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Prefetch, prefetch_related_objects
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from controlplane.core.config import TimingConfig
from controlplane.models import DispatchDecision
from controlplane.placement import run_placement
from controlplane.placement_api import PlacementSerializer
from dags.models import Attempt, DagRun, StepRun
from dags.runs import iso


@extend_schema_field(OpenApiTypes.DATETIME)
class RfcTimeField(serializers.Field):
    """RFC 3339 UTC with a Z suffix, formatted exactly like `dags.runs.iso`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(read_only=True, **kwargs)

    def to_representation(self, value: datetime) -> str | None:
        return iso(value)


class BlankAsNullField(serializers.CharField):
    """A blank column sent as null ("no worker yet" rather than an empty name)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, read_only=True, **kwargs)

    def to_representation(self, value: str) -> str | None:
        return value or None


def _strings() -> serializers.DictField:
    return serializers.DictField(child=serializers.CharField(), read_only=True)


class StepJsonSerializer(serializers.Serializer):
    name = serializers.CharField(read_only=True)
    status = serializers.CharField(read_only=True)
    exit_code = serializers.IntegerField(allow_null=True, read_only=True)
    started_at = RfcTimeField(allow_null=True)
    finished_at = RfcTimeField(allow_null=True)
    attempt = serializers.IntegerField(read_only=True)
    error = serializers.CharField(read_only=True)
    output = BlankAsNullField(source="output_value")


class AttemptJsonSerializer(serializers.Serializer):
    number = serializers.IntegerField(read_only=True)
    mode = serializers.CharField(read_only=True)
    worker_id = BlankAsNullField()
    status = serializers.CharField(read_only=True)
    created_at = RfcTimeField()
    started_at = RfcTimeField(allow_null=True)
    finished_at = RfcTimeField(allow_null=True)
    end_reason = serializers.CharField(read_only=True)


class DecisionJsonSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(read_only=True)
    event = serializers.CharField(read_only=True)
    mode = serializers.CharField(read_only=True)
    why = serializers.CharField(read_only=True)
    selector = _strings()
    workers_considered = serializers.IntegerField(read_only=True)
    workers_matched = serializers.IntegerField(read_only=True)
    chosen_worker = BlankAsNullField()
    waiting_reason = BlankAsNullField()
    detail = serializers.CharField(read_only=True)
    decided_at = RfcTimeField()


class RunSerializer(serializers.Serializer):
    """The run as `start --json` prints it; RunDetailSerializer adds the placement."""

    dag_run_id = serializers.CharField(source="id", read_only=True)
    dag_name = serializers.CharField(read_only=True)
    status = serializers.CharField(read_only=True)
    waiting_reason = BlankAsNullField()
    execution_mode = serializers.CharField(read_only=True)
    worker_selector = _strings()
    worker_id = BlankAsNullField()
    attempt = serializers.IntegerField(read_only=True)
    params = _strings()
    error = serializers.CharField(read_only=True)
    outputs = _strings()
    queued_at = RfcTimeField()
    started_at = RfcTimeField(allow_null=True)
    finished_at = RfcTimeField(allow_null=True)
    root_dag_run_id = serializers.CharField(source="root_run_id", read_only=True)
    root_dag_run_name = serializers.SerializerMethodField()
    parent_dag_run_id = serializers.CharField(source="parent_id", allow_null=True, read_only=True)
    parent_dag_run_name = serializers.CharField(
        source="parent.dag_name", allow_null=True, read_only=True
    )
    children = serializers.SerializerMethodField()
    steps = StepJsonSerializer(many=True, read_only=True)
    attempts = AttemptJsonSerializer(many=True, read_only=True)
    dispatch_decisions = DecisionJsonSerializer(many=True, read_only=True)
    # Who did it (a username), null for the scheduler, a parent run or the CLI.
    started_by = BlankAsNullField()
    cancelled_by = BlankAsNullField()
    retried_by = BlankAsNullField()

    @extend_schema_field(OpenApiTypes.STR)
    def get_root_dag_run_name(self, run: DagRun) -> str:
        return run.root.dag_name if run.root_id and run.root else run.dag_name

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_children(self, run: DagRun) -> list[str]:
        return [child.id for child in run.children.all()]


class RunDetailSerializer(RunSerializer):
    """A run with its placement diagnosis."""

    # The placement is judged as of context["now"] with context["timing"] (run_detail_json).

    placement = serializers.SerializerMethodField(
        help_text="why a queued distributed run is not running; else null"
    )

    @extend_schema_field(PlacementSerializer(allow_null=True))
    def get_placement(self, run: DagRun) -> dict[str, Any] | None:
        return run_placement(run, now=self.context["now"], timing=self.context["timing"])


# What the serializers read, each in the order the JSON lists it: one query per relation.
RUN_JSON_PREFETCH = (
    "root",
    "parent",
    Prefetch("children", queryset=DagRun.objects.order_by("queued_at").only("id", "parent_id")),
    Prefetch("steps", queryset=StepRun.objects.order_by("position")),
    Prefetch("attempts", queryset=Attempt.objects.order_by("number")),
    Prefetch("dispatch_decisions", queryset=DispatchDecision.objects.order_by("decided_at", "id")),
)


def run_json(run: DagRun) -> dict[str, Any]:
    """The run JSON without placement (`start --json`)."""
    prefetch_related_objects([run], *RUN_JSON_PREFETCH)
    return dict(RunSerializer(run).data)


def run_detail_json(run: DagRun, *, now: datetime, timing: TimingConfig) -> dict[str, Any]:
    """The run JSON with its placement diagnosis: `status --json` and the API."""
    prefetch_related_objects([run], *RUN_JSON_PREFETCH)
    return dict(RunDetailSerializer(run, context={"now": now, "timing": timing}).data)
