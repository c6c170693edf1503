"""Dispatch decisions: why each run (and each attempt) went where it went."""

from __future__ import annotations

from django.db import models

from controlplane.core.states import ExecutionMode, WaitingReason, choices
from dags.models import DagRun


class DecisionWhy(models.TextChoices):
    FORCED_LOCAL = "forced_local", "worker_selector: local"
    SELECTOR = "selector", "non-empty worker_selector"
    DEFAULT_MODE = "default_mode", "default_execution_mode"


class DecisionEvent(models.TextChoices):
    CREATED = "created", "mode decided"
    WAITING = "waiting", "waiting for a worker"
    ASSIGNED = "assigned", "assigned to a worker"
    REDISPATCHED = "redispatched", "worker lost, new attempt queued"
    FAILED_WORKER_LOST = "failed_worker_lost", "worker lost, run failed"
    REQUEUED = "requeued", "assignment never started, requeued"
    RETRY = "retry", "manual retry"


class DispatchDecision(models.Model):
    run = models.ForeignKey(DagRun, on_delete=models.CASCADE, related_name="dispatch_decisions")
    attempt = models.PositiveIntegerField(default=0)
    event = models.CharField(max_length=24, choices=DecisionEvent.choices)
    mode = models.CharField(max_length=16, choices=choices(ExecutionMode))
    why = models.CharField(max_length=16, choices=DecisionWhy.choices)
    selector = models.JSONField(default=dict, blank=True)
    workers_considered = models.PositiveIntegerField(default=0)
    workers_matched = models.PositiveIntegerField(default=0)
    chosen_worker = models.CharField(max_length=255, blank=True)
    waiting_reason = models.CharField(
        max_length=32, choices=choices(WaitingReason), blank=True, default=""
    )
    detail = models.TextField(blank=True)
    decided_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["decided_at", "id"]

    def __str__(self) -> str:
        return f"{self.run_id} #{self.attempt} {self.event}"


class CoordinatorLease(models.Model):
    """Which coordinator does the fleet-wide housekeeping now (docs/design.md, "Several
    coordinators"). One row per duty; `fencing` grows by one at every change of holder, so a
    write made under an older number can be told from the current holder's."""

    name = models.CharField(primary_key=True, max_length=64)
    holder = models.CharField(max_length=255, blank=True)
    fencing = models.PositiveBigIntegerField(default=0)
    acquired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.holder or 'nobody'} (fencing {self.fencing})"


class CronTick(models.Model):
    """One fired cron tick: the unique key is what makes a tick fire once across coordinators
    (an old and a new lease holder racing on the same minute insert the same key)."""

    dag_name = models.CharField(max_length=255)
    expression = models.CharField(max_length=255)
    due_at = models.DateTimeField(db_index=True)
    run_id = models.CharField(max_length=64, blank=True)
    fencing = models.PositiveBigIntegerField(default=0)
    fired_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["dag_name", "expression", "due_at"], name="cron_tick_fires_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.dag_name} {self.expression} @ {self.due_at.isoformat()}"
