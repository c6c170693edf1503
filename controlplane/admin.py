"""Admin for dispatch decisions (read-only history) and the admin site's titles."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from controlplane.models import DispatchDecision
from controlplane.roles import RoleLoginForm, admin_site_permission

admin.site.site_header = "Dagu control plane"
admin.site.site_title = "Dagu control plane"
admin.site.index_title = "Administration"
admin.site.site_url = "/workers/"
admin.site.login_form = RoleLoginForm
admin.site.has_permission = admin_site_permission  # type: ignore[method-assign]


# What a decision says, in the order operators read it; the run inline shows the same.
DECISION_COLUMNS = (
    "decided_at",
    "attempt",
    "event",
    "mode",
    "why",
    "selector",
    "workers_considered",
    "workers_matched",
    "chosen_worker",
    "waiting_reason",
    "detail",
)


@admin.register(DispatchDecision)
class DispatchDecisionAdmin(admin.ModelAdmin):
    list_display = (DECISION_COLUMNS[0], "run", *DECISION_COLUMNS[1:])
    list_filter = ("event", "mode", "why", "waiting_reason")
    search_fields = ("run__id", "run__dag_name", "chosen_worker")
    list_select_related = ("run",)
    date_hierarchy = "decided_at"

    # Decisions are the audit trail of dispatch: nobody writes them by hand.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
