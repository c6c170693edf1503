"""Start and stop a coordinator with its loops; `coordinator` and `start_all` share this."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from django.db import connection

from controlplane.address import advertised_host
from controlplane.coordinator import Coordinator, coordinator_record
from controlplane.core import registry
from controlplane.core.clock import utcnow
from controlplane.core.config import Config, ConfigError
from controlplane.lease import (
    RENEW_SECONDS,
    SoleCoordinator,
    claim_sole_coordinator,
    renew_executor,
)
from controlplane.loops import run_loop
from controlplane.rpc.server import CoordinatorServer, HealthStatus, build_server
from controlplane.sqlite.base import checkpoint
from dags import wakeups
from dags.local import (
    LOCAL_WORKER_ID,
    LocalExecutor,
    recover_dead_coordinators_local_attempts,
    retire_executor,
)
from dags.retention import RetentionDuty
from dags.scheduler import CronScheduler
from workers.credentials import ensure_bootstrap_credential

logger = logging.getLogger(__name__)

DISPATCH_IDLE_SECONDS = 0.5
HOUSEKEEPING_SECONDS = 1.0
# SQLite: how often the write-ahead log is copied into the database (controlplane.sqlite).
CHECKPOINT_SECONDS = 0.25
SCHEDULER_SECONDS = 1.0
# Retention runs on the lease holder once it holds the lease, then daily; a new holder runs
# it again (harmless: pruning is idempotent). Checked this often:
RETENTION_CHECK_SECONDS = 5.0
# The garbage collector's third threshold (default 10): see start_coordinator (gc.freeze).
FULL_GC_AFTER_MIDDLE_PASSES = 1_000


@dataclass
class RunningCoordinator:
    core: Coordinator
    server: CoordinatorServer  # grpc.aio on its own event loop thread
    port: int
    health: HealthStatus
    stop: threading.Event
    registrant: registry.Registrant
    local: LocalExecutor
    threads: list[threading.Thread] = field(default_factory=list)
    advertised: str = ""  # host:port as the service registry shows it
    sole: SoleCoordinator | None = None  # SQLite: the lock that keeps a second one out


def start_coordinator(config: Config, *, stop: threading.Event) -> RunningCoordinator:
    """Bind, register in the service registry, and start the loops. Raises ConfigError."""
    sole = claim_sole_coordinator()  # SQLite: a second coordinator stops here (exit 2)
    core = Coordinator(config)
    core.load_fleet()
    # Before the port opens, so a worker on this host never meets a coordinator whose
    # bootstrap token it cannot read yet.
    ensure_bootstrap_credential(Path(config.paths.data_dir), now=utcnow())
    server, port, health_servicer = build_server(
        core, host=config.coordinator.host, port=config.coordinator.port, peer=config.peer
    )
    bound_config = _as_bound(config, port)
    registrant = registry.Registrant(
        Path(config.paths.service_registry_dir),
        lambda: coordinator_record(bound_config, started_at=core.started_at, status="active"),
        interval=config.timing.registry_refresh_interval,
    )
    try:
        registrant.start()
    except registry.RegistryError as exc:
        server.stop(0)
        key = "paths.service_registry_dir"
        raise ConfigError(key, config.sources.get(key, "default"), str(exc)) from None
    # Everything loaded so far (Django, the app registry, the fleet) lives as long as the
    # process: keep it out of the garbage collector's full passes, which otherwise scan it
    # all while the event loop that answers every heartbeat waits.
    gc.freeze()
    # What a fleet keeps alive (a parked poll and an open heartbeat stream per worker, each
    # a few dozen tracked objects that outlive the young generations) makes a full pass
    # cost ~250-350 ms of the loop's time here at 2,000 workers, and with the default
    # threshold one ran every ~6 s: the largest part of the heartbeats' p99. Full passes
    # after this many second-generation ones instead (~10 min at that fleet's rate); they
    # only find reference cycles, which wait that much longer to be freed.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_AFTER_MIDDLE_PASSES)
    server.start()
    local = LocalExecutor(config, stop=stop, wake=core.wake)
    running = RunningCoordinator(core, server, port, health_servicer, stop, registrant, local)
    running.advertised = f"{bound_config.coordinator.advertise}:{port}"
    running.sole = sole
    running.threads = [
        *_own_loops(core, local, stop=stop, config=config),
        *_lease_loops(core, local, stop=stop, config=config),
    ]
    logger.info(
        "coordinator %s listening on %s:%d, advertised as %s:%d",
        bound_config.coordinator.id,
        config.coordinator.host,
        port,
        bound_config.coordinator.advertise,
        port,
    )
    return running


def _own_loops(
    core: Coordinator, local: LocalExecutor, *, stop: threading.Event, config: Config
) -> list[threading.Thread]:
    """What every coordinator does for the workers connected to it (and its local runs)."""
    threads = [
        run_loop(
            "dispatch",
            core.dispatch_step,
            stop=stop,
            interval=DISPATCH_IDLE_SECONDS,
            wake=core.wake_event,
        ),
        run_loop("housekeeping", core.housekeeping_step, stop=stop, interval=HOUSEKEEPING_SECONDS),
        run_loop(
            "registry",
            core.registry_step,
            stop=stop,
            interval=config.timing.registry_refresh_interval,
        ),
        local.start(),
    ]
    if connection.vendor == "sqlite":
        threads.append(run_loop("checkpoint", checkpoint, stop=stop, interval=CHECKPOINT_SECONDS))
    # PostgreSQL: a run queued anywhere wakes this dispatcher too (docs/design.md).
    if (listener := wakeups.listen(stop=stop, on_wake=core.wake)) is not None:
        threads.append(listener)
    return threads


def _lease_loops(
    core: Coordinator, local: LocalExecutor, *, stop: threading.Event, config: Config
) -> list[threading.Thread]:
    """The lease, and the fleet-wide duties only its holder does (failover of silent workers
    and the registry cleanup are parts of the housekeeping and registry steps)."""
    scheduler = CronScheduler(config, now=utcnow(), on_queued=core.wake)
    retention = RetentionDuty(days=config.retention.days, log_dir=Path(config.paths.log_dir))

    def schedule() -> None:
        if lease := core.lease.held():
            scheduler.tick(now=utcnow(), fencing=lease.fencing)
        else:
            scheduler.stand_by(now=utcnow())

    def prune() -> None:
        if core.lease.held():
            retention.step(now=utcnow())
        else:
            retention.forget()  # a new term starts with a pass

    def keep_lease() -> None:
        core.lease.step(now=utcnow())
        # PostgreSQL: this coordinator's liveness, so the lease holder can tell its local
        # runs from those of a coordinator that died on any host (docs/design.md).
        if local.executor_id != LOCAL_WORKER_ID:
            renew_executor(local.executor_id, now=utcnow())
        if core.lease.held():
            recover_dead_coordinators_local_attempts(now=utcnow())

    lease_thread = run_loop("lease", keep_lease, stop=stop, interval=RENEW_SECONDS)
    return [
        lease_thread,
        run_loop("scheduler", schedule, stop=stop, interval=SCHEDULER_SECONDS),
        run_loop("retention", prune, stop=stop, interval=RETENTION_CHECK_SECONDS),
    ]


def stop_coordinator(running: RunningCoordinator, *, grace: float = 5.0) -> None:
    """Stop taking calls, let in-flight ones finish, stop the loops, unregister."""
    running.stop.set()
    running.health.enter_graceful_shutdown()
    running.core.fleet.close()  # long polls return now instead of at their timeout
    running.core.wake()
    running.server.stop(grace).wait()
    running.local.stop_all(grace=grace)
    for thread in running.threads:
        thread.join(timeout=grace + 5)
    running.core.housekeeping_step()  # last flush of heartbeats
    if running.local.executor_id != LOCAL_WORKER_ID:
        try:  # after stop_all: its local runs ended (or the lease holder recovers them)
            retire_executor(running.local.executor_id, now=utcnow())
        except Exception as exc:  # the database is gone: the row goes stale on its own
            logger.warning("could not retire the local executor's liveness: %s", exc)
    try:
        running.core.lease.release(now=utcnow())  # another coordinator takes over at once
    except Exception as exc:  # the database is gone: the lease expires on its own
        logger.warning("could not hand the housekeeping lease back: %s", exc)
    running.registrant.stop()
    if running.sole is not None:
        running.sole.release()
    logger.info("coordinator stopped at %s", utcnow().isoformat())


def _as_bound(config: Config, port: int) -> Config:
    """The config as the registry shows it: the bound port, the address to dial, the id."""
    advertise = advertised_host(config)
    coordinator = replace(
        config.coordinator,
        port=port,
        advertise=advertise,
        id=config.coordinator.id or f"{advertise}@{port}",
    )
    return replace(config, coordinator=coordinator)


def install_stop_signals(on_stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT only request a stop; the main thread does the shutdown."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: on_stop())


def coordinator_on_web_host(config: Config, web_host: str) -> Config:
    """Bind the coordinator where the web server listens unless coordinator.host was set.

    The seeds' Compose and Kubernetes examples pass only `--host=0.0.0.0` and publish 50055;
    a coordinator left on 127.0.0.1 would be unreachable from every other container.
    """
    if config.sources.get("coordinator.host", "default") != "default":
        return config
    coordinator = replace(config.coordinator, host=web_host)
    return replace(config, coordinator=coordinator)
