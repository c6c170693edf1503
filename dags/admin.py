"""Admin for runs, attempts and steps: read-only views of what the core records, plus the
Cancel and Retry actions, which go through `dags.runs` like the API and the CLI do."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from controlplane.admin import DECISION_COLUMNS
from controlplane.core.clock import utcnow
from controlplane.models import DispatchDecision
from dags.models import Attempt, DagRun, StepRun
from dags.runs import RunError, request_cancel, retry_run


class ReadOnlyAdminMixin:
    """View-only: rows are written by the coordinator, the executor and `dags.runs`."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class StepRunInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = StepRun
    fields = (
        "position",
        "name",
        "status",
        "exit_code",
        "attempt",
        "retries",
        "started_at",
        "finished_at",
        "error",
    )
    readonly_fields = fields
    extra = 0
    show_change_link = True


class AttemptInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Attempt
    fields = (
        "number",
        "mode",
        "worker_id",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "end_reason",
    )
    readonly_fields = fields
    extra = 0


class DispatchDecisionInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = DispatchDecision
    fields = DECISION_COLUMNS
    readonly_fields = fields
    extra = 0


def run_page_link(run_id: str) -> SafeString:
    return format_html('<a href="{}">run page</a>', reverse("run-page", args=[run_id]))


@admin.register(DagRun)
class DagRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "dag_name",
        "status",
        "waiting_reason",
        "execution_mode",
        "worker_id",
        "attempt",
        "queued_at",
        "started_at",
        "finished_at",
        "parent",
        "page",
    )
    list_filter = ("status", "execution_mode", "waiting_reason", "dag_name")
    search_fields = ("id", "dag_name", "worker_id")
    list_select_related = ("parent",)
    date_hierarchy = "queued_at"
    inlines = (StepRunInline, AttemptInline, DispatchDecisionInline)
    actions = ("cancel_runs", "retry_runs")
    fieldsets = (
        (None, {"fields": ("id", "page", "dag_name", "status", "waiting_reason", "error")}),
        (
            "Dispatch",
            {
                "fields": (
                    "execution_mode",
                    "worker_selector",
                    "worker_id",
                    "attempt",
                    "on_worker_lost",
                    "max_redispatch",
                    "redispatch_count",
                    "cancel_requested",
                )
            },
        ),
        ("Hierarchy", {"fields": ("root", "parent", "parent_step", "parent_item")}),
        ("Times", {"fields": ("queued_at", "started_at", "finished_at")}),
        ("Who", {"fields": ("started_by", "cancelled_by", "retried_by")}),
        ("Input and output", {"fields": ("params", "outputs", "source", "spec")}),
    )
    readonly_fields = tuple(f for _, opts in fieldsets for f in opts["fields"])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DagRun | None = None) -> bool:
        # The changelist (obj None) needs "change" for the actions; a run's own page is
        # view-only, because nothing on it is the operator's to edit.
        return obj is None and super().has_change_permission(request)

    @admin.display(description="")
    def page(self, obj: DagRun) -> SafeString:
        return run_page_link(obj.id)

    @admin.action(description="Cancel selected runs", permissions=["change"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[DagRun]) -> None:
        self._apply(request, queryset, operation=request_cancel, done="cancel requested")

    @admin.action(description="Retry selected runs", permissions=["change"])
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[DagRun]) -> None:
        self._apply(request, queryset, operation=retry_run, done="queued again")

    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet[DagRun],
        *,
        operation: Callable[..., DagRun],
        done: str,
    ) -> None:
        now = utcnow()
        ok = 0
        for run_id in queryset.values_list("pk", flat=True):
            try:
                operation(run_id, now=now, by=request.user.get_username())
                ok += 1
            except RunError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        if ok:
            self.message_user(request, f"{ok} run(s) {done}.", messages.SUCCESS)


@admin.register(Attempt)
class AttemptAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "run",
        "number",
        "mode",
        "worker_id",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "end_reason",
    )
    list_filter = ("status", "mode")
    search_fields = ("run__id", "run__dag_name", "worker_id")
    list_select_related = ("run",)
    exclude = ("token",)  # a bearer credential for the worker's reports; not for display


@admin.register(StepRun)
class StepRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "run",
        "position",
        "name",
        "status",
        "exit_code",
        "attempt",
        "retries",
        "started_at",
        "finished_at",
    )
    list_filter = ("status",)
    search_fields = ("run__id", "run__dag_name", "name")
    list_select_related = ("run",)
