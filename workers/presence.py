"""The coordinator's live view of its workers, and its mirror into `Worker` rows.

Heartbeats arrive every second from every worker; writing each one would cap a coordinator
at what the database can commit. So heartbeats only touch memory (`Fleet`), and a flusher
writes the changed workers in one batch per interval (`flush_fleet`). The rows are what the
admin, the API and the Workers page read; dispatch reads memory.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection, transaction

from controlplane.core.config import TimingConfig
from controlplane.core.health import OFFLINE, UNHEALTHY, health_status
from controlplane.core.routing import WorkerView
from dags import wakeups
from workers.credentials import CredentialError
from workers.models import RegisteredVia, Worker, WorkerLabel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Running:
    dag_run_id: str
    attempt_token: str
    started_at: datetime | None


@dataclass
class WorkerState:
    id: str
    host: str = ""
    pid: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    max_active_runs: int = 10
    started_at: datetime | None = None
    last_heartbeat: datetime | None = None
    running: tuple[Running, ...] = ()
    draining: bool = False  # set by an operator; the database row is the authority
    stopping: bool = False  # the worker said it is shutting down
    via: str = RegisteredVia.HEARTBEAT
    registry_file: str = ""
    dirty: bool = True
    labels_changed: bool = True
    # A column besides those every heartbeat changes (last_heartbeat_at, active_tasks,
    # heartbeats) differs from the row written: the flush writes the whole row only then.
    row_changed: bool = True
    heartbeats: int = 0  # gRPC heartbeats received by this coordinator
    credential: str = ""  # the credential that last heartbeated or polled as this id
    # Last heartbeat or poll that reached THIS coordinator (not a registry file, not the row
    # another coordinator wrote): the worker polls here, so mail put here gets taken.
    contacted_at: datetime | None = None


@dataclass(frozen=True)
class Identity:
    """What a worker says about itself in every heartbeat and poll."""

    id: str
    host: str
    pid: int
    labels: Mapping[str, str]
    max_active_runs: int
    started_at: datetime | None = None
    credential: str = ""  # who vouched for it (the RPC edge fills this in)


class FleetFull(CredentialError):
    """A credential already holds its `limits.workers_per_credential` live worker ids."""


@dataclass(eq=False)
class _Waiter:
    """One long poll waiting on an event loop for its worker's mail."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]

    def settle(self) -> None:
        """On the loop: end the wait (mail, shutdown or timeout, whichever comes first)."""
        if not self.future.done():
            self.future.set_result(None)

    def wake(self) -> None:
        """From any thread."""
        try:
            self.loop.call_soon_threadsafe(self.settle)
        except RuntimeError:
            pass  # the loop is closed: the server is gone, and the poll with it


class Fleet:
    """Thread-safe worker table plus per-worker mailboxes that long polls wait on."""

    def __init__(
        self, *, timing: TimingConfig, started_at: datetime, workers_per_credential: int = 1000
    ) -> None:
        self.timing = timing
        self.workers_per_credential = workers_per_credential
        # Before a worker had the chance to reach a freshly (re)started coordinator, its
        # silence says nothing: health counts from no earlier than this moment.
        self.started_at = started_at
        self._lock = threading.Lock()
        self._workers: dict[str, WorkerState] = {}
        self._by_credential: dict[str, set[str]] = {}
        self._mail: dict[str, list[object]] = {}
        # Long polls wait on the coordinator's event loop, not in threads: each waiting poll
        # is a future here, resolved from whichever thread delivers (see wait_for_mail).
        self._waiting: dict[str, list[_Waiter]] = {}
        self._closed = False

    # -- updates -------------------------------------------------------------------------

    def record_heartbeat(
        self, who: Identity, *, running: Iterable[Running], stopping: bool, now: datetime
    ) -> WorkerState:
        with self._lock:
            state = self._touch(who, now=now)
            state.heartbeats += 1
            state.running = tuple(running)
            state.stopping = stopping
            return state

    def record_poll(self, who: Identity, *, now: datetime) -> WorkerState:
        """A poll proves liveness as much as a heartbeat does."""
        with self._lock:
            return self._touch(who, now=now)

    def _touch(self, who: Identity, *, now: datetime) -> WorkerState:
        state = self._workers.get(who.id)
        if who.credential and (state is None or state.credential != who.credential):
            self._check_room(who.credential, now=now)
        if state is None:
            state = self._workers[who.id] = WorkerState(id=who.id)
            logger.info("worker %s connected (labels %s)", who.id, dict(who.labels))
        if who.credential and state.credential != who.credential:
            self._by_credential.get(state.credential, set()).discard(state.id)
            self._by_credential.setdefault(who.credential, set()).add(state.id)
            state.credential = who.credential
        # Compared in place (no copy, no tuples): this runs for every heartbeat and poll.
        if who.labels != state.labels:
            state.labels = dict(who.labels)
            state.labels_changed = state.row_changed = True
        if (
            state.host != who.host
            or state.pid != who.pid
            or state.max_active_runs != who.max_active_runs
        ):
            state.host, state.pid, state.max_active_runs = who.host, who.pid, who.max_active_runs
            state.row_changed = True
        state.started_at = who.started_at or state.started_at
        state.last_heartbeat = state.contacted_at = now
        state.dirty = True
        return state

    def _check_room(self, credential: str, *, now: datetime) -> None:
        """Refuse a new id of `credential` when it holds its cap of live (not offline) ids.

        Offline ids stop counting, so a pool that replaced its hosts is not locked out;
        they are dropped from the index here, keeping it no larger than the cap.
        """
        ids = self._by_credential.get(credential, set())
        if len(ids) < self.workers_per_credential:
            return
        for wid in list(ids):
            state = self._workers.get(wid)
            if state is None or self.health(state, now=now) == OFFLINE:
                ids.discard(wid)
        if len(ids) >= self.workers_per_credential:
            raise FleetFull(
                f'credential "{credential[:100]}" already has {len(ids)} live workers '
                f"(limits.workers_per_credential); stop some or use another credential"
            )

    def merge_registry(
        self, records: Iterable[tuple[str, Identity, datetime]], *, now: datetime
    ) -> None:
        """Workers seen in the service registry: (file, identity, last_heartbeat) each."""
        with self._lock:
            for path, who, seen in records:
                state = self._workers.get(who.id)
                if state is None:
                    state = self._workers[who.id] = WorkerState(
                        id=who.id, via=RegisteredVia.REGISTRY, last_heartbeat=None
                    )
                    state.labels, state.host, state.pid = dict(who.labels), who.host, who.pid
                    state.max_active_runs = who.max_active_runs
                    state.started_at = who.started_at
                    logger.info("worker %s found in the service registry", who.id)
                if state.registry_file != path:
                    state.registry_file, state.dirty, state.row_changed = path, True, True
                if state.last_heartbeat is None or seen > state.last_heartbeat:
                    state.last_heartbeat = min(seen, now)
                    state.dirty = True

    def load(self, rows: Iterable[Worker]) -> None:
        """Seed from the database after a coordinator (re)start."""
        with self._lock:
            for row in rows:
                self._workers.setdefault(
                    row.id,
                    WorkerState(
                        id=row.id,
                        host=row.host,
                        pid=row.pid,
                        labels=dict(row.labels),
                        max_active_runs=row.max_active_runs,
                        last_heartbeat=row.last_heartbeat_at,
                        draining=row.draining,
                        via=row.registered_via,
                        registry_file=row.registry_file,
                        heartbeats=row.heartbeats,
                        dirty=False,
                        labels_changed=False,
                        row_changed=False,
                    ),
                )

    def set_draining(self, draining_ids: set[str]) -> None:
        with self._lock:
            for state in self._workers.values():
                state.draining = state.id in draining_ids

    def forget(self, worker_ids: Iterable[str]) -> None:
        with self._lock:
            for wid in worker_ids:
                state = self._workers.pop(wid, None)
                self._mail.pop(wid, None)
                if state is not None:
                    self._by_credential.get(state.credential, set()).discard(wid)

    # -- reads ---------------------------------------------------------------------------

    def effective_last_seen(self, state: WorkerState) -> datetime | None:
        if state.last_heartbeat is None:
            return None
        return max(state.last_heartbeat, self.started_at)

    def health(self, state: WorkerState, *, now: datetime) -> str:
        return health_status(self.effective_last_seen(state), now=now, timing=self.timing)

    def dispatch_health(self, state: WorkerState, *, now: datetime) -> str:
        """Health for handing out runs: the start-up grace is for failover only.

        A worker that has not polled or heartbeated this coordinator since it started may
        have been dead for a day, or may poll another coordinator (a fresh registry file or
        row says only that it lives somewhere): mail put here would never be taken. It gets
        no runs until it shows up, and until then counts as no better than UNHEALTHY.
        """
        if state.contacted_at is not None and state.contacted_at >= self.started_at:
            return self.health(state, now=now)
        silent = health_status(state.last_heartbeat, now=now, timing=self.timing)
        return silent if silent in (UNHEALTHY, OFFLINE) else UNHEALTHY

    def get(self, worker_id: str) -> WorkerState | None:
        with self._lock:
            return self._workers.get(worker_id)

    def states(self) -> list[WorkerState]:
        with self._lock:
            return list(self._workers.values())

    def views(self, *, now: datetime, held: Mapping[str, int]) -> list[WorkerView]:
        """Dispatch's view: `held` counts the active attempts each worker holds."""
        with self._lock:
            return [self._view(s, now=now, held=held) for s in self._workers.values()]

    def view_of(
        self, worker_id: str, *, now: datetime, held: Mapping[str, int]
    ) -> WorkerView | None:
        """One worker's dispatch view (claim on report: not the whole fleet per report)."""
        with self._lock:
            state = self._workers.get(worker_id)
            return None if state is None else self._view(state, now=now, held=held)

    def _view(self, s: WorkerState, *, now: datetime, held: Mapping[str, int]) -> WorkerView:
        return WorkerView(
            id=s.id,
            labels=dict(s.labels),
            health=self.dispatch_health(s, now=now),
            draining=s.draining or s.stopping,
            free_slots=max(0, s.max_active_runs - held.get(s.id, 0)),
        )

    # -- mailboxes for long polls ----------------------------------------------------------

    def deliver(self, worker_id: str, item: object) -> None:
        with self._lock:
            self._mail.setdefault(worker_id, []).append(item)
            waiting = self._waiting.pop(worker_id, [])
        for waiter in waiting:
            waiter.wake()

    async def wait_for_mail(
        self, worker_id: str, *, max_items: int, timeout: float
    ) -> list[object]:
        """Wait up to `timeout` seconds for mail for this worker; return at most max_items.

        Called on an asyncio loop: the wait is a future and a timer, no thread. `deliver`
        and `close` may be called from any thread. A cancelled wait (the caller went away)
        leaves the mail in the box for the worker's next poll.
        """
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop, loop.create_future())
        with self._lock:
            ready = self._closed or bool(self._mail.get(worker_id))
            if not ready:
                self._waiting.setdefault(worker_id, []).append(waiter)
        if not ready:
            timer = loop.call_later(timeout, waiter.settle)
            try:
                await waiter.future
            finally:
                timer.cancel()
                with self._lock:
                    if waiter in (others := self._waiting.get(worker_id, [])):
                        others.remove(waiter)
                        if not others:
                            del self._waiting[worker_id]
        with self._lock:
            if self._closed:
                return []
            box = self._mail.get(worker_id, [])
            taken, self._mail[worker_id] = box[:max_items], box[max_items:]
            return taken

    def pending_mail(self) -> list[object]:
        with self._lock:
            return [item for box in self._mail.values() for item in box]

    def close(self) -> None:
        """Release every waiting poll at once (shutdown); mail stays for the next start."""
        with self._lock:
            self._closed = True
            waiting = [w for box in self._waiting.values() for w in box]
            self._waiting.clear()
        for waiter in waiting:
            waiter.wake()

    # -- mirror --------------------------------------------------------------------------

    def take_dirty(self) -> list[WorkerState]:
        with self._lock:
            dirty = [s for s in self._workers.values() if s.dirty]
            out = [_copy(s) for s in dirty]
            for s in dirty:
                s.dirty = s.labels_changed = s.row_changed = False
            return out

    def mark_dirty_again(self, states: Iterable[WorkerState]) -> None:
        with self._lock:
            for copy in states:
                if live := self._workers.get(copy.id):
                    live.dirty = True
                    live.labels_changed = live.labels_changed or copy.labels_changed
                    live.row_changed = live.row_changed or copy.row_changed


def _copy(state: WorkerState) -> WorkerState:
    """A shallow copy, as dataclasses.replace makes but several times faster: the flush
    copies every dirty worker (the whole fleet each second) holding the fleet's lock, which
    every heartbeat on the RPC event loop waits for."""
    copy = object.__new__(WorkerState)
    copy.__dict__.update(state.__dict__)
    return copy


@contextmanager
def _collections_deferred() -> Iterator[None]:
    """No automatic garbage collection in the process meanwhile (unless it was off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def flush_fleet(fleet: Fleet, *, now: datetime) -> int:
    """Write changed workers to the database in one transaction. Returns rows written.

    If the batch fails, each worker is written on its own so that one row the database
    refuses cannot freeze every other worker's row; the refused ones are logged and retried
    at the next flush.
    """
    # A flush holds a few objects per dirty worker (its copy, the id read back, the
    # statement's parameters), with a fleet thousands at once. Collected meanwhile, they
    # set off a dozen young passes and one of the middle generation (in this thread, the
    # GIL held: 20-65 ms that the RPC loop waited) and were walked by each; freed by
    # reference counting when the flush returns, they cost the collector nothing. The
    # loop's own garbage waits those few milliseconds.
    with _collections_deferred():
        return _flush(fleet, now=now)


def _flush(fleet: Fleet, *, now: datetime) -> int:
    states = fleet.take_dirty()
    if not states:
        return 0
    try:
        _write_states(states, now=now)
        return len(states)
    except Exception:
        if len(states) == 1:
            fleet.mark_dirty_again(states)
            raise
    written, failed = 0, []
    for state in states:
        try:
            _write_states([state], now=now)
            written += 1
        except Exception as exc:
            logger.error("cannot store worker %s: %s", state.id[:40], _first_line(exc))
            failed.append(state)
    fleet.mark_dirty_again(failed)
    return written


def _row(state: WorkerState, *, now: datetime) -> Worker:
    """The row for a worker state; bulk_update writes only the mirrored fields of it."""
    return Worker(
        id=state.id,
        host=state.host,
        pid=state.pid,
        labels=state.labels,
        max_active_runs=state.max_active_runs,
        active_tasks=len(state.running),
        registered_at=now,
        last_heartbeat_at=state.last_heartbeat,
        registered_via=state.via,
        registry_file=state.registry_file,
        heartbeats=state.heartbeats,
    )


def _update_rows(rows: list[Worker], names: tuple[str, ...]) -> None:
    """One prepared UPDATE executed for every row.

    Django's bulk_update builds a CASE expression per field in Python, which at a thousand
    workers a second cost most of a core; a prepared statement costs the database a few
    milliseconds. Values are prepared by each field, so SQLite and PostgreSQL both work.
    """
    if not rows:
        return
    meta = Worker._meta
    fields = [meta.get_field(name) for name in names]
    pk = meta.pk
    assert pk is not None
    quote = connection.ops.quote_name
    sql = "UPDATE {} SET {} WHERE {} = %s".format(
        quote(meta.db_table),
        ", ".join(f"{quote(f.column)} = %s" for f in fields),
        quote(pk.column),
    )
    params = [
        [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields] + [row.pk]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _update_heartbeats(states: list[WorkerState]) -> None:
    """What a heartbeat changes, for workers whose other columns are as written.

    Most of a flush (every worker of a fleet, every second): three columns, the values
    taken from the state without building a model, so the flush thread holds the GIL, which
    the RPC event loop needs, for a fraction of the time the whole rows took.
    """
    if not states:
        return
    meta = Worker._meta
    beat = meta.get_field("last_heartbeat_at")
    quote = connection.ops.quote_name
    sql = "UPDATE {} SET {} = %s, {} = %s, {} = %s WHERE {} = %s".format(
        quote(meta.db_table),
        quote(beat.column),
        quote(meta.get_field("active_tasks").column),
        quote(meta.get_field("heartbeats").column),
        quote(meta.pk.column),  # type: ignore[union-attr]
    )
    params = [
        (beat.get_db_prep_save(s.last_heartbeat, connection), len(s.running), s.heartbeats, s.id)
        for s in states
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


@transaction.atomic
def _write_states(states: list[WorkerState], *, now: datetime) -> None:
    existing = set(
        Worker.objects.filter(id__in=[s.id for s in states]).values_list("id", flat=True)
    )
    new = [s for s in states if s.id not in existing]
    old = [s for s in states if s.id in existing]
    Worker.objects.bulk_create([_row(s, now=now) for s in new], ignore_conflicts=True)
    _update_heartbeats([s for s in old if not s.row_changed])
    _update_rows(
        [_row(s, now=now) for s in old if s.row_changed],
        (
            "host",
            "pid",
            "labels",
            "max_active_runs",
            "active_tasks",
            "last_heartbeat_at",
            "registry_file",
            "heartbeats",
        ),
    )
    relabel = [s for s in states if s.labels_changed or s.id not in existing]
    if relabel:
        WorkerLabel.objects.filter(worker_id__in=[s.id for s in relabel]).delete()
        WorkerLabel.objects.bulk_create(
            WorkerLabel(worker_id=s.id, key=k, value=v)
            for s in relabel
            for k, v in s.labels.items()
        )


def set_draining(worker_id: str, *, draining: bool, by: str = "") -> bool:
    """Drain (or undrain) a worker: it takes no new runs and finishes what it has.

    Returns False if the worker is unknown. The coordinator picks the flag up from the row;
    `drained_by` keeps who last drained or undrained it.
    """
    rows = Worker.objects.filter(pk=worker_id)
    changed = bool(rows.update(draining=draining, drained_by=by))
    if changed and not draining:
        # The undrained worker may take queued runs now, whichever coordinator serves it.
        wakeups.runs_queued()
    return changed


def purge_offline(*, now: datetime, timing: TimingConfig) -> list[str]:
    """Delete workers offline for longer than the purge window (24 h by default)."""
    cutoff = now - timedelta(seconds=timing.offline_purge_after + timing.health_offline_after)
    ids = list(Worker.objects.filter(last_heartbeat_at__lt=cutoff).values_list("id", flat=True))
    if ids:
        Worker.objects.filter(id__in=ids).delete()
        logger.info("purged %d long-offline worker(s): %s", len(ids), ", ".join(ids))
    return ids


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
