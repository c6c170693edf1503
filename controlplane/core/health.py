"""Worker health from the age of its freshest heartbeat. Pure: no Django import."""

from __future__ import annotations

from datetime import datetime

from controlplane.core.config import TimingConfig

HEALTHY = "HEALTHY"
WARNING = "WARNING"
UNHEALTHY = "UNHEALTHY"
OFFLINE = "OFFLINE"
HEALTH_STATES = (HEALTHY, WARNING, UNHEALTHY, OFFLINE)
# States that may receive new runs.
DISPATCHABLE = frozenset({HEALTHY, WARNING})


def health_status(last_heartbeat: datetime | None, *, now: datetime, timing: TimingConfig) -> str:
    """Ages: HEALTHY < warning_after <= WARNING < unhealthy_after <= UNHEALTHY, then OFFLINE."""
    if last_heartbeat is None:
        return OFFLINE
    age = (now - last_heartbeat).total_seconds()
    if age < timing.health_warning_after:
        return HEALTHY
    if age < timing.health_unhealthy_after:
        return WARNING
    if age <= timing.health_offline_after:
        return UNHEALTHY
    return OFFLINE
