"""Workers as the control plane sees them: a mirror of the registry and of heartbeats.

Labels are stored twice on purpose: `Worker.labels` (JSON) is what the admin and the API
show, and `WorkerLabel` rows (indexed on key, value) let a selector be answered with index
lookups on SQLite and PostgreSQL alike, without JSON operators that differ between them.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.db import models


class RegisteredVia(models.TextChoices):
    REGISTRY = "registry", "service registry file"
    HEARTBEAT = "heartbeat", "gRPC heartbeat"


class WorkerQuerySet(models.QuerySet["Worker"]):
    def matching(self, selector: Mapping[str, str]) -> WorkerQuerySet:
        """Workers carrying every key=value of the selector (one indexed join per pair)."""
        qs = self
        for key, value in selector.items():
            qs = qs.filter(label_rows__key=key, label_rows__value=value)
        return qs


class Worker(models.Model):
    id = models.CharField(primary_key=True, max_length=255)
    host = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    max_active_runs = models.PositiveIntegerField(default=10)
    # Runs the worker reported in its last heartbeat.
    active_tasks = models.PositiveIntegerField(default=0)
    draining = models.BooleanField(default=False)
    # Who last drained or undrained it (a username; empty for the CLI or never).
    drained_by = models.CharField(max_length=150, blank=True)
    registered_at = models.DateTimeField()
    last_heartbeat_at = models.DateTimeField(null=True, blank=True, db_index=True)
    registered_via = models.CharField(
        max_length=16, choices=RegisteredVia.choices, default=RegisteredVia.HEARTBEAT
    )
    registry_file = models.CharField(max_length=1024, blank=True)
    # gRPC heartbeats received from this worker, carried across coordinator restarts
    # (the fleet loads it from here); read by dagu_heartbeats_total on /metrics.
    heartbeats = models.BigIntegerField(default=0)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.id


class WorkerLabel(models.Model):
    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="label_rows")
    key = models.CharField(max_length=255)
    value = models.CharField(max_length=255)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["worker", "key"], name="worker_label_key_unique")
        ]
        indexes = [models.Index(fields=["key", "value"], name="worker_label_kv")]

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


class WorkerCredential(models.Model):
    """A credential workers authenticate with on every coordinator RPC.

    Only a SHA-256 of the token is stored: tokens are 256 random bits, so a slow hash would
    add nothing but latency to every call. `allowed_labels` maps a key to a value or `*`;
    empty means any labels. `worker_id_pattern` is an fnmatch pattern ("" means any id).
    """

    name = models.CharField(max_length=100, unique=True)
    token_hash = models.CharField(max_length=64, unique=True)
    allowed_labels = models.JSONField(default=dict, blank=True)
    worker_id_pattern = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None
