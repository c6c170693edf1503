"""DAG runs, their attempts and steps.

A run is dispatched as numbered attempts. Each attempt has a random token; reports carry it,
and only the run's current attempt may change the run. That is what makes failover safe:
a superseded attempt's late reports are rejected instead of completing the run twice.
"""

from __future__ import annotations

from django.db import models

from controlplane.core.states import (
    TERMINAL_RUN_STATUSES,
    AttemptStatus,
    ExecutionMode,
    RunStatus,
    StepStatus,
    WaitingReason,
    choices,
)

# The states live in the core (the worker uses them too); these names are re-exported so the
# apps keep importing them with their models.
__all__ = [
    "TERMINAL_RUN_STATUSES",
    "Attempt",
    "AttemptStatus",
    "DagRun",
    "ExecutionMode",
    "OnWorkerLost",
    "RunStatus",
    "StepRun",
    "StepStatus",
    "WaitingReason",
]


class OnWorkerLost(models.TextChoices):
    REDISPATCH = "redispatch"
    FAIL = "fail"


class DagRun(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    # Looked up through run_dag_recent (dag_name first): a second index would only be one
    # more page written per created run.
    dag_name = models.CharField(max_length=255)
    # The whole YAML file as submitted: children defined in it are resolved from here.
    spec = models.TextField()
    source = models.CharField(max_length=1024, blank=True)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=choices(RunStatus), default=RunStatus.QUEUED)
    waiting_reason = models.CharField(
        max_length=32, choices=choices(WaitingReason), blank=True, default=""
    )
    execution_mode = models.CharField(max_length=16, choices=choices(ExecutionMode))
    # Why that mode: "forced_local", "selector" or "default_mode" (see controlplane.dispatch).
    mode_reason = models.CharField(max_length=16, default="default_mode")
    worker_selector = models.JSONField(default=dict, blank=True)
    # Indexed only where set (run_root, run_parent below): most runs are top-level, and
    # their creation then writes no page of either index.
    root = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="descendants",
        db_index=False,
    )
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="children",
        db_index=False,
    )
    parent_step = models.CharField(max_length=255, blank=True)
    parent_item = models.IntegerField(null=True, blank=True)
    # How often an operator retried this run; a child records the count its parent had when
    # the child was created, so a retried parent starts new children where old ones failed.
    retry_count = models.PositiveIntegerField(default=0)
    parent_retry = models.PositiveIntegerField(default=0)
    attempt = models.PositiveIntegerField(default=0)
    worker_id = models.CharField(max_length=255, blank=True, db_index=True)
    on_worker_lost = models.CharField(
        max_length=16, choices=OnWorkerLost.choices, default=OnWorkerLost.REDISPATCH
    )
    max_redispatch = models.PositiveIntegerField(default=3)
    redispatch_count = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    # Usernames (kept as text: the record outlives the account); empty when the scheduler, a
    # parent run or a management command did it.
    started_by = models.CharField(max_length=150, blank=True)
    cancelled_by = models.CharField(max_length=150, blank=True)
    retried_by = models.CharField(max_length=150, blank=True)
    error = models.TextField(blank=True)
    outputs = models.JSONField(default=dict, blank=True)
    queued_at = models.DateTimeField(db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-queued_at"]
        indexes = [
            models.Index(fields=["status", "execution_mode", "queued_at"], name="run_queue"),
            # The Runs page filtered by status and a DAG's run history, newest first: index
            # range scans in order at 10,000 runs, no sort of the whole table.
            models.Index(fields=["status", "-queued_at"], name="run_status_recent"),
            models.Index(fields=["dag_name", "-queued_at"], name="run_dag_recent"),
            # `root_id = %s` and `parent_id = %s` imply IS NOT NULL, so both databases use
            # these for a run's descendants and children.
            models.Index(fields=["root"], name="run_root", condition=models.Q(root__isnull=False)),
            models.Index(
                fields=["parent"], name="run_parent", condition=models.Q(parent__isnull=False)
            ),
        ]
        # Two partial constraints because NULLs are distinct in a unique index (SQLite and
        # PostgreSQL alike): a plain `call` step has no item and must still get one child.
        constraints = [
            models.UniqueConstraint(
                fields=["parent", "parent_step", "parent_item", "parent_retry"],
                name="one_child_per_parent_step_item",
                condition=models.Q(parent__isnull=False, parent_item__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["parent", "parent_step", "parent_retry"],
                name="one_child_per_parent_step",
                condition=models.Q(parent__isnull=False, parent_item__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.dag_name} {self.id}"

    @property
    def root_run_id(self) -> str:
        return self.root_id or self.id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES


class Attempt(models.Model):
    # Looked up through attempt_number_unique (run first).
    run = models.ForeignKey(
        DagRun, on_delete=models.CASCADE, related_name="attempts", db_index=False
    )
    number = models.PositiveIntegerField()
    token = models.CharField(max_length=64, unique=True)
    mode = models.CharField(max_length=16, choices=choices(ExecutionMode))
    worker_id = models.CharField(max_length=255, blank=True, db_index=True)
    status = models.CharField(
        max_length=16, choices=choices(AttemptStatus), default=AttemptStatus.ASSIGNED
    )
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Highest report sequence applied; replayed reports at or below it are ignored.
    last_event_seq = models.BigIntegerField(default=0)
    end_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="attempt_number_unique")
        ]
        # Failover, slot counting and local recovery ask every second for the active
        # attempts by mode; this index keeps that a range scan over the few active rows
        # however many finished attempts the table holds.
        indexes = [models.Index(fields=["status", "mode", "worker_id"], name="attempt_active")]

    def __str__(self) -> str:
        return f"{self.run_id} #{self.number}"


class StepRun(models.Model):
    # Looked up through step_name_unique (run first).
    run = models.ForeignKey(DagRun, on_delete=models.CASCADE, related_name="steps", db_index=False)
    name = models.CharField(max_length=255)
    position = models.PositiveIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=choices(StepStatus), default=StepStatus.PENDING
    )
    exit_code = models.IntegerField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    output_value = models.TextField(blank=True)
    error = models.TextField(blank=True)
    # Relative to the log dir; one file per attempt and step.
    log_path = models.CharField(max_length=1024, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="step_name_unique")]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.name}"
