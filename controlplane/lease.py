"""The housekeeping lease: exactly one coordinator at a time does the fleet-wide chores.

Failover of lost workers, registry cleanup, the offline purge, retention and the cron
scheduler must run once per fleet, not once per coordinator. They run on the holder of the
`CoordinatorLease` row named "housekeeping"; every coordinator keeps serving, flushing and
dispatching for its own workers. A row rather than a PostgreSQL advisory lock because an
advisory lock lives as long as one database session: Django closes and reopens connections
(every loop round calls close_old_connections, a pooler may swap them), and the lock would
vanish silently with the session. The row also works on SQLite (same code path), carries the
fencing number, and an operator can read who holds it.

Times are the coordinators' clocks (passed in as `now`): hosts must be NTP-synchronised to
well under LEASE_SECONDS - RENEW_SECONDS, as for any lease.

On SQLite there is one coordinator by construction (`claim_sole_coordinator`), so it takes
the lease at once instead of waiting out a previous holder's term after a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q

from controlplane.core.config import ConfigError
from controlplane.models import CoordinatorLease

logger = logging.getLogger(__name__)

HOUSEKEEPING = "housekeeping"
RENEW_SECONDS = 2.0
# A holder that missed three renewals is presumed dead: another takes over 6-8 s after its
# last renewal, within the 10 s the fleet may go without housekeeping.
LEASE_SECONDS = 6.0
# Each coordinator's local executor (dags/local.py) keeps a liveness row in the same table,
# renewed with the lease. The lease holder recovers the local runs of an executor whose row
# went this long without renewal: like a worker's UNHEALTHY threshold, long enough that a
# slow database round or a GC pause does not supersede a live coordinator's runs.
EXECUTOR_STALE_SECONDS = 15.0
EXECUTOR_ROW_PREFIX = "executor:"


@dataclass(frozen=True)
class Lease:
    holder: str
    fencing: int
    acquired_at: datetime
    expires_at: datetime


def new_holder_id() -> str:
    """Unique per process: a restarted coordinator must never renew its predecessor's term."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def hold_lease(
    holder: str,
    *,
    now: datetime,
    seconds: float = LEASE_SECONDS,
    name: str = HOUSEKEEPING,
    force: bool = False,
) -> Lease | None:
    """Renew `holder`'s lease or take an expired (or, with `force`, any) one.

    Returns the lease held after the call, or None while another live holder has it. Both
    writes are one conditional UPDATE, so two coordinators racing for an expired lease
    cannot both win: the second finds the row no longer expired (or no longer theirs).
    """
    _ensure_row(name)
    rows = CoordinatorLease.objects.filter(name=name)
    until = now + timedelta(seconds=seconds)
    renewed = rows.filter(holder=holder).update(expires_at=until)
    if not renewed:
        free = Q(expires_at__isnull=True) | Q(expires_at__lt=now) | Q(holder="")
        takers = rows if force else rows.filter(free)
        if not takers.update(holder=holder, fencing=F("fencing") + 1, acquired_at=now,
                             expires_at=until):  # fmt: skip
            return None
    row = rows.get()
    if row.holder != holder:  # lost a race between the two statements
        return None
    if not renewed:
        logger.info("this coordinator now holds the %s lease (fencing %d)", name, row.fencing)
    assert row.acquired_at is not None and row.expires_at is not None
    return Lease(row.holder, row.fencing, row.acquired_at, row.expires_at)


def release_lease(holder: str, *, now: datetime, name: str = HOUSEKEEPING) -> bool:
    """Hand the lease back at a clean stop so another coordinator takes over at once."""
    return bool(
        CoordinatorLease.objects.filter(name=name, holder=holder).update(holder="", expires_at=now)
    )


def executor_row_name(executor_id: str) -> str:
    # Row names hold 64 characters and `local:HOST:PID` may not fit: hash it, the id itself
    # goes in `holder`, where operators read it.
    return EXECUTOR_ROW_PREFIX + hashlib.sha256(executor_id.encode()).hexdigest()[:40]


def renew_executor(executor_id: str, *, now: datetime) -> None:
    """Show that this coordinator (and so its local executor) is alive until
    now + EXECUTOR_STALE_SECONDS."""
    name, until = executor_row_name(executor_id), now + timedelta(seconds=EXECUTOR_STALE_SECONDS)
    if CoordinatorLease.objects.filter(name=name).update(holder=executor_id, expires_at=until):
        return
    try:
        with transaction.atomic():
            CoordinatorLease.objects.create(
                name=name, holder=executor_id, acquired_at=now, expires_at=until
            )
    except IntegrityError:
        pass  # created since the UPDATE: only this process renews it, so it is fresh


def expire_executor(executor_id: str, *, now: datetime) -> None:
    """At a clean stop, once its local runs ended: the lease holder recovers any left over
    at once and then drops the row."""
    CoordinatorLease.objects.filter(name=executor_row_name(executor_id)).update(expires_at=now)


def stale_executors(*, now: datetime) -> set[str]:
    """Executor ids whose liveness row ran out: their coordinator died or stopped."""
    rows = CoordinatorLease.objects.filter(name__startswith=EXECUTOR_ROW_PREFIX, expires_at__lt=now)
    return set(rows.values_list("holder", flat=True))


def forget_executors(executor_ids: set[str], *, now: datetime) -> int:
    """Drop liveness rows still stale (a coordinator that was only stalled renews its row
    back and keeps it)."""
    deleted, _ = CoordinatorLease.objects.filter(
        name__in=[executor_row_name(e) for e in executor_ids], expires_at__lt=now
    ).delete()
    return deleted


def delete_executor(executor_id: str) -> None:
    """At a clean stop with no local run left: nothing for anyone to recover."""
    CoordinatorLease.objects.filter(name=executor_row_name(executor_id)).delete()


def _ensure_row(name: str) -> None:
    if CoordinatorLease.objects.filter(name=name).exists():
        return
    try:
        with transaction.atomic():
            CoordinatorLease.objects.create(name=name)
    except IntegrityError:
        pass  # another coordinator created it first


class LeaseKeeper:
    """This process's side of the lease: renewed by a loop, asked by the duties it guards.

    `held()` also checks a local monotonic deadline, shorter than the term in the row, so a
    holder whose renewals stall (database unreachable, process frozen) stops its duties
    before anyone else may take over.
    """

    def __init__(self, *, holder: str | None = None, sole: bool = False) -> None:
        self.holder = holder or new_holder_id()
        self.sole = sole  # SQLite: no other coordinator can exist, take the lease at once
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        self._valid_until = 0.0  # time.monotonic()

    def step(self, *, now: datetime) -> Lease | None:
        started = time.monotonic()
        try:
            lease = hold_lease(self.holder, now=now, force=self.sole)
        except Exception:
            with self._lock:
                self._lease = None  # unknown: assume lost rather than act twice
            raise
        with self._lock:
            if lease is None and self._lease is not None:
                logger.warning("lost the %s lease to another coordinator", HOUSEKEEPING)
            self._lease = lease
            # The term counts from before the UPDATE went out; leave a renewal's margin.
            self._valid_until = started + LEASE_SECONDS - RENEW_SECONDS / 2
        return lease

    def held(self) -> Lease | None:
        """The lease if this process holds it now, else None."""
        with self._lock:
            if self._lease is None or time.monotonic() >= self._valid_until:
                return None
            return self._lease

    def release(self, *, now: datetime) -> None:
        with self._lock:
            had, self._lease = self._lease, None
        if had is not None:
            release_lease(self.holder, now=now)


# -- SQLite: one coordinator only -----------------------------------------------------------


class SoleCoordinator:
    """An exclusive lock on a file beside the SQLite database, held while this coordinator
    runs. The kernel drops it when the process dies, so a kill -9 never blocks a restart."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def release(self) -> None:
        self._handle.close()


def claim_sole_coordinator() -> SoleCoordinator | None:
    """On SQLite, make sure no other coordinator uses this database; None on PostgreSQL.

    Raises ConfigError (one line, exit 2) when another live coordinator holds the lock.
    """
    if connection.vendor != "sqlite":
        return None
    database = Path(str(connection.settings_dict["NAME"]))
    path = database.with_name(database.name + ".coordinator.lock")
    handle = open(path, "a+")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        other = handle.read().strip() or "unknown pid"
        handle.close()
        raise ConfigError(
            "database",
            "SQLite",
            f"another coordinator ({other}) is running on {database}; "
            "several coordinators need PostgreSQL (set DATABASE_URL)",
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return SoleCoordinator(handle)
