"""Admin for workers: a read-mostly mirror. The coordinator writes every field except
`draining`, which operators steer here (or with the drain actions)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from controlplane.core.health import (
    HEALTH_STATES,
    HEALTHY,
    OFFLINE,
    UNHEALTHY,
    WARNING,
    health_status,
)
from dags.models import DagRun, RunStatus
from workers.credentials import revoke
from workers.models import Worker, WorkerCredential, WorkerLabel
from workers.presence import set_draining

logger = logging.getLogger(__name__)

_HEALTH_COLOURS = {HEALTHY: "#16a34a", WARNING: "#ca8a04", UNHEALTHY: "#dc2626", OFFLINE: "#9ca3af"}


class WorkerLabelInline(admin.TabularInline):
    model = WorkerLabel
    fields = ("key", "value")
    readonly_fields = ("key", "value")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class HealthFilter(admin.SimpleListFilter):
    """Health as a heartbeat-age range, so it filters in SQL (SPEC section 8 thresholds)."""

    title = "health"
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(state, state.capitalize()) for state in HEALTH_STATES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Worker]) -> QuerySet[Worker]:
        state = self.value()
        if state not in HEALTH_STATES:
            return queryset
        timing = settings.DAGU.timing
        now = timezone.now()

        def age(seconds: float) -> object:
            return now - timedelta(seconds=seconds)

        if state == HEALTHY:
            return queryset.filter(last_heartbeat_at__gt=age(timing.health_warning_after))
        if state == WARNING:
            return queryset.filter(
                last_heartbeat_at__lte=age(timing.health_warning_after),
                last_heartbeat_at__gt=age(timing.health_unhealthy_after),
            )
        if state == UNHEALTHY:
            return queryset.filter(
                last_heartbeat_at__lte=age(timing.health_unhealthy_after),
                last_heartbeat_at__gte=age(timing.health_offline_after),
            )
        return queryset.filter(
            Q(last_heartbeat_at__isnull=True)
            | Q(last_heartbeat_at__lt=age(timing.health_offline_after))
        )


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "health",
        "label_chips",
        "usage",
        "draining",
        "last_heartbeat_at",
        "registered_via",
        "host",
    )
    list_filter = (HealthFilter, "draining", "registered_via")
    search_fields = ("id", "host", "label_rows__key", "label_rows__value")
    readonly_fields = (
        "id",
        "health",
        "host",
        "pid",
        "label_chips",
        "max_active_runs",
        "active_tasks",
        "registered_at",
        "last_heartbeat_at",
        "registered_via",
        "registry_file",
        "drained_by",
    )
    fields = (*readonly_fields[:5], "draining", *readonly_fields[5:])
    inlines = (WorkerLabelInline,)
    actions = ("drain_workers", "undrain_workers")
    ordering = ("id",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Workers register themselves; a hand-made row would be a worker that never polls.
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        running = (
            DagRun.objects.filter(worker_id=OuterRef("pk"), status=RunStatus.RUNNING)
            .order_by()
            .values("worker_id")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(busy=Coalesce(Subquery(running, output_field=IntegerField()), Value(0)))
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Worker], search_term: str
    ) -> tuple[QuerySet[Worker], bool]:
        # "gpu=true" finds workers carrying that exact label, as the Workers page search does.
        key, sep, value = search_term.partition("=")
        if sep and key.strip():
            matched = queryset.filter(
                label_rows__key=key.strip(), label_rows__value=value.strip()
            ).distinct()
            return matched, False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="health")
    def health(self, obj: Worker) -> SafeString:
        state = health_status(
            obj.last_heartbeat_at, now=timezone.now(), timing=settings.DAGU.timing
        )
        return format_html(
            '<span style="color:{}">&#9679;</span> {}', _HEALTH_COLOURS[state], state
        )

    @admin.display(description="labels")
    def label_chips(self, obj: Worker) -> SafeString:
        return format_html_join(" ", "<code>{}={}</code>", sorted(obj.labels.items())) or "-"

    @admin.display(description="busy/max", ordering="busy")
    def usage(self, obj: Worker) -> str:
        return f"{getattr(obj, 'busy', 0)}/{obj.max_active_runs}"

    @admin.action(description="Drain selected workers", permissions=["change"])
    def drain_workers(self, request: HttpRequest, queryset: QuerySet[Worker]) -> None:
        self._set_draining(request, queryset, draining=True)

    @admin.action(description="Undrain selected workers", permissions=["change"])
    def undrain_workers(self, request: HttpRequest, queryset: QuerySet[Worker]) -> None:
        self._set_draining(request, queryset, draining=False)

    def _set_draining(
        self, request: HttpRequest, queryset: QuerySet[Worker], *, draining: bool
    ) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        by = request.user.get_username()
        changed = [wid for wid in ids if set_draining(wid, draining=draining, by=by)]
        verb = "draining" if draining else "undrained"
        if changed:
            logger.info(
                "worker(s) %s %s via the admin by %s", ", ".join(changed), verb, request.user
            )
        self.message_user(request, f"{len(changed)} worker(s) {verb}.", messages.SUCCESS)


@admin.register(WorkerCredential)
class WorkerCredentialAdmin(admin.ModelAdmin):
    """Credentials are issued by `manage.py create_worker_token` (the token is shown once);
    here they are listed and revoked. A revoked credential's workers are refused at their
    next heartbeat and stop, and their runs fail over."""

    list_display = ("name", "allowed_labels", "worker_id_pattern", "created_at", "last_used_at",
                    "revoked_at")  # fmt: skip
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name",)
    readonly_fields = ("name", "token_hash", "allowed_labels", "worker_id_pattern", "created_at",
                       "last_used_at", "revoked_at")  # fmt: skip
    actions = ("revoke_credentials",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke the selected credentials")
    def revoke_credentials(
        self, request: HttpRequest, queryset: QuerySet[WorkerCredential]
    ) -> None:
        count = revoke(list(queryset.values_list("name", flat=True)), now=timezone.now())
        logger.warning("%s revoked %d worker credential(s)", request.user, count)
        self.message_user(request, f"Revoked {count} worker credential(s).", messages.SUCCESS)
