"""The one set of run, attempt and step states, and how a run is executed.

The worker, the coordinator and the models all use these; the models' field choices are built
from them by `choices`, so the values stored in the database are these values and nothing else.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_RUN_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class AttemptStatus(StrEnum):
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


# An attempt that may still report: the run's current attempt while a worker holds it.
ACTIVE_ATTEMPT_STATUSES = (AttemptStatus.ASSIGNED, AttemptStatus.RUNNING)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class ExecutionMode(StrEnum):
    LOCAL = "local"
    DISTRIBUTED = "distributed"


class WaitingReason(StrEnum):
    """Why a queued distributed run has no worker yet (SPEC section 5); "" while none applies."""

    NONE = ""
    NO_WORKERS = "no_workers"
    NO_MATCHING_WORKER = "no_matching_worker"
    MATCHING_WORKERS_BUSY = "matching_workers_busy"
    MATCHING_WORKERS_DRAINING = "matching_workers_draining"
    MATCHING_WORKERS_UNHEALTHY = "matching_workers_unhealthy"


# Labels that differ from the member name, title-cased (the rule Django's TextChoices uses, kept
# so the migrations' recorded choices stay exactly as they were).
_LABELS: dict[StrEnum, str] = {WaitingReason.NONE: "-"}


def choices(states: type[StrEnum]) -> list[tuple[str, str]]:
    """(value, label) pairs for a model field's `choices`."""
    return [
        (state.value, _LABELS.get(state, state.name.replace("_", " ").title())) for state in states
    ]


def values(states: type[StrEnum]) -> list[str]:
    """The plain string values, for messages, filters and the OpenAPI schema."""
    return [state.value for state in states]
