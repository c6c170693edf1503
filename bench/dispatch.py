"""Dispatch benchmark (issue 3): start-to-step latency, and sustained throughput.

Real processes on loopback: `manage.py coordinator` and N `manage.py worker` (default 4,
10 slots each, all labelled `bench=dispatch` so the runs' selector matches every one), each
in its own process group, in a temp data dir, on ports picked at run time.

Runs are created in this process the way `manage.py start` creates them (`create_run`, then
`wake_coordinator`), so Django's start-up cost of the CLI is not in the figures.

1. Latency, one run at a time: from the moment the run row is created (its `queued_at`,
   taken just before `create_run` commits it) until the step's own process runs
   (`date +%s.%N`, written to a file named by $DAG_RUN_ID). Also broken down by the
   timestamps the system records: claim (Attempt.created_at), worker received the attempt
   (Attempt.started_at), step about to spawn (StepRun.started_at).
2. Throughput of single-step `true` runs with a standing backlog:
   - backlog: the workers are drained, N runs are queued, the workers are undrained; rate
     from the release to the last finish, and the steady rate (10th to 90th percentile of
     finish times);
   - live: N runs are created as fast as this process can while they execute; rate from the
     first queued to the last finished, and the steady rate.

3. Head-of-line blocking: N runs (default 10,000) whose selector no worker matches are
   queued first; timed are how long until every one of them shows its waiting reason, the
   created -> step-ran latency of matching runs queued behind them (one at a time, as in 1),
   and one dispatch pass over the backlog in this process when nothing changes.

Per-run cost (issue 11), over the live pass: the coordinator's CPU (utime + stime from
/proc) and its SQL statements (counted inside the coordinator by bench/hooks/sitecustomize.py,
which Python loads from PYTHONPATH: no product code), divided by the runs; also net of the
idle rate (heartbeats, housekeeping) measured for 3 s just before. On PostgreSQL the
database's own transaction count (pg_stat_database.xact_commit) is given too.

Several coordinators (issue 12, PostgreSQL only): with `--coordinators N` the workers are
split between N coordinators on one database (worker i dials coordinator i mod N), and the
whole benchmark runs twice back to back, each in a child process on a fresh cluster: first
with one coordinator, then with N; both are printed, and --json gives both and their ratio.

Usage: .venv/bin/python bench/dispatch.py [--latency-runs 200] [--runs 1000] [--backlog 10000]
       [--profile SECONDS] [--database-url postgres://postgres@127.0.0.1:5432/NAME] [--json]
       [--coordinators N]
Prints the machine and the figures, with --json one JSON line last; exits 0 (1 only if the
cluster cannot be started).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    Cluster,
    CpuBudget,
    CpuMeter,
    bench_cluster,
    guarded,
    install_exit_signals,
    percentile,
    print_cpu_profile,
    print_machine,
    print_table,
    print_wall_profile,
    process_cpu_seconds,
    record_profile,
    setup_django,
    sql_count_env,
    sql_counts,
    summarize,
    wait_for,
)

SELECTOR = "bench=dispatch"
LATENCY_TARGET_P50_MS = 50.0
LATENCY_TARGET_P99_MS = 250.0
THROUGHPUT_TARGET = 100.0

LATENCY_DAG = """\
name: bench-latency
worker_selector:
  bench: dispatch
env:
  MARKERS: {markers}
steps:
  - name: stamp
    command: >-
      date +%s.%N > "$MARKERS/.$DAG_RUN_ID" &&
      mv "$MARKERS/.$DAG_RUN_ID" "$MARKERS/$DAG_RUN_ID"
"""

THROUGHPUT_DAG = """\
name: bench-true
worker_selector:
  bench: dispatch
steps:
  - name: "true"
    command: "true"
"""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Bench:
    """What the phases share: the cluster, the resolved config, the parsed DAG files."""

    cluster: Cluster
    config: Any  # controlplane.core.config.Config (imported after django.setup())
    markers: Path
    latency_dag: Any
    throughput_dag: Any
    worker_ids: list[str]
    coordinators: list[str]  # the coordinators' process names in the cluster
    sql_dir: Path | None = None


# -- set-up ------------------------------------------------------------------------------


def start_workers(cluster: Cluster, *, count: int, max_runs: int, ports: list[int]) -> list[str]:
    """Spawn all workers at once (each pays ~1 s of Django start-up), then wait for all.

    Worker i dials the coordinator on ports[i mod len(ports)]: split evenly between them."""
    ids = [f"bench-w{i + 1}" for i in range(count)]
    for i, worker_id in enumerate(ids):
        cluster.spawn(
            worker_id,
            "worker",
            "--worker.id",
            worker_id,
            "--worker.labels",
            f"{SELECTOR},slot={worker_id}",
            "--worker.max-active-runs",
            str(max_runs),
            "--worker.coordinators",
            f"127.0.0.1:{ports[i % len(ports)]}",
            "--shutdown-grace",
            "5",
        )
    for worker_id in ids:
        proc = cluster.procs[worker_id]
        wait_for(
            lambda w=worker_id, p=proc: cluster.worker_row(w) or p.poll() is not None,
            timeout=60,
            what=f"worker {worker_id} to register",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"worker {worker_id} exited:\n{cluster.log(worker_id)}")
    return ids


def prepare(cluster: Cluster, *, workers: int, max_runs: int, coordinators: int = 1) -> Bench:
    cluster.start_coordinator()
    names = ["coordinator"] + [f"coordinator-{n}" for n in range(2, coordinators + 1)]
    ports = [cluster.ports["coordinator"]]
    ports += [cluster.start_peer_coordinator(name) for name in names[1:]]
    worker_ids = start_workers(cluster, count=workers, max_runs=max_runs, ports=ports)
    setup_django(cluster)
    from controlplane.core.config import resolve
    from controlplane.core.spec import parse_dag_file

    markers = cluster.home / "markers"
    markers.mkdir()
    return Bench(
        cluster=cluster,
        # As `manage.py start` resolves it: no flags, the environment set for the cluster.
        config=resolve(),
        markers=markers,
        latency_dag=parse_dag_file(
            LATENCY_DAG.format(markers=markers),
            source="bench-latency.yaml",
            default_name="bench-latency",
        ),
        throughput_dag=parse_dag_file(
            THROUGHPUT_DAG, source="bench-true.yaml", default_name="bench-true"
        ),
        worker_ids=worker_ids,
        coordinators=names,
    )


def create_and_wake(bench: Bench, dag_file: Any, *, wake: bool = True) -> tuple[str, datetime]:
    """What `manage.py start` does for a distributed run, minus the interpreter start-up."""
    from controlplane.core.rpc.client import wake_coordinator
    from dags.runs import create_run

    now = utcnow()
    run = create_run(dag_file, now=now, default_mode="local")
    if wake:
        wake_coordinator(bench.config)
    return run.id, now


def wait_terminal(run_id: str, *, timeout: float) -> str:
    from dags.models import TERMINAL_RUN_STATUSES, DagRun

    def done() -> str | None:
        status = DagRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
        return status if status in TERMINAL_RUN_STATUSES else None

    return wait_for(done, timeout=timeout, what=f"run {run_id} to finish", every=0.005)


# -- 1. latency --------------------------------------------------------------------------


def measure_latency(bench: Bench, *, runs: int, warmup: int, gap: float) -> dict[str, Any]:
    """One run at a time; returns the per-run intervals in milliseconds."""
    from dags.models import Attempt, StepRun

    created: list[tuple[str, datetime]] = []
    failed = 0
    for i in range(warmup + runs):
        run_id, queued_at = create_and_wake(bench, bench.latency_dag)
        marker = bench.markers / run_id
        # The marker file is cheap to poll (no database read) and appears as the step runs.
        wait_for(marker.exists, timeout=30, what=f"step of {run_id} to start", every=0.001)
        if wait_terminal(run_id, timeout=30) != "succeeded":
            failed += 1
        if i >= warmup:
            created.append((run_id, queued_at))
        time.sleep(gap)

    ids = [run_id for run_id, _ in created]
    attempts = {
        a.run_id: a
        for a in Attempt.objects.filter(run_id__in=ids, number=1).only(
            "run_id", "created_at", "started_at"
        )
    }
    steps = {
        s.run_id: s for s in StepRun.objects.filter(run_id__in=ids).only("run_id", "started_at")
    }
    to_process, to_claim, to_received, to_step_row = [], [], [], []
    for run_id, queued_at in created:
        t0 = queued_at.timestamp()
        stamp = float((bench.markers / run_id).read_text().strip())
        to_process.append(1000 * (stamp - t0))
        attempt = attempts[run_id]
        to_claim.append(1000 * (attempt.created_at.timestamp() - t0))
        if attempt.started_at:
            to_received.append(1000 * (attempt.started_at.timestamp() - t0))
        if steps[run_id].started_at:
            to_step_row.append(1000 * (steps[run_id].started_at.timestamp() - t0))
    return {
        "runs": len(created),
        "failed": failed,
        "created -> step process ran (date +%s.%N)": summarize(to_process),
        "created -> claimed by dispatcher (Attempt.created_at)": summarize(to_claim),
        "created -> worker got the attempt (Attempt.started_at)": summarize(to_received),
        "created -> step about to spawn (StepRun.started_at)": summarize(to_step_row),
    }


def print_latency(result: dict[str, Any]) -> None:
    print(f"\n1. latency, {result['runs']} runs one at a time ({result['failed']} failed), ms:")
    rows = []
    for name, s in result.items():
        if isinstance(s, dict):
            rows.append(
                [name, f"{s['p50']:.1f}", f"{s['p90']:.1f}", f"{s['p99']:.1f}", f"{s['max']:.1f}"]
            )
    print_table(["interval", "p50", "p90", "p99", "max"], rows)
    main = result["created -> step process ran (date +%s.%N)"]
    verdict = (
        "PASS"
        if main["p50"] <= LATENCY_TARGET_P50_MS and main["p99"] <= LATENCY_TARGET_P99_MS
        else "MISS"
    )
    print(
        f"  target p50 <= {LATENCY_TARGET_P50_MS:.0f} ms, p99 <= {LATENCY_TARGET_P99_MS:.0f} ms:"
        f" p50 {main['p50']:.1f} ms, p99 {main['p99']:.1f} ms -> {verdict}"
    )
    sys.stdout.flush()


# -- 2. throughput -----------------------------------------------------------------------


def set_drained(bench: Bench, *, draining: bool) -> None:
    from workers.presence import set_draining

    for worker_id in bench.worker_ids:
        set_draining(worker_id, draining=draining)


def create_runs(bench: Bench, *, count: int, wake_every: int) -> tuple[list[str], float]:
    """Create `count` runs as fast as possible; returns their ids and the creation time.

    Wakes the coordinator every `wake_every` runs as the API does after each run, without
    waiting for its reply (`wake_coordinator_soon`); the last wake-up waits."""
    from controlplane.core.rpc.client import wake_coordinator, wake_coordinator_soon

    ids = []
    t0 = time.monotonic()
    for i in range(count):
        run_id, _ = create_and_wake(bench, bench.throughput_dag, wake=False)
        ids.append(run_id)
        if (i + 1) % wake_every == 0:
            wake_coordinator_soon(bench.config)
    wake_coordinator(bench.config)
    return ids, time.monotonic() - t0


def wait_all_finished(ids: list[str], *, timeout: float) -> None:
    from dags.models import TERMINAL_RUN_STATUSES, DagRun

    def finished() -> bool:
        return DagRun.objects.filter(pk__in=ids, status__in=TERMINAL_RUN_STATUSES).count() == len(
            ids
        )

    wait_for(finished, timeout=timeout, what=f"{len(ids)} runs to finish", every=0.25)


def completion_figures(ids: list[str], *, start: datetime) -> dict[str, Any]:
    """Rates from the database's own timestamps (finish times are the workers')."""
    from django.db.models import Count

    from dags.models import Attempt, DagRun

    rows = list(DagRun.objects.filter(pk__in=ids).values_list("finished_at", "status"))
    finishes = sorted(f.timestamp() for f, _ in rows if f)
    statuses = dict(
        DagRun.objects.filter(pk__in=ids)
        .values("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    n = len(finishes)
    first_finish, last_finish = finishes[0], finishes[-1]
    t10, t90 = percentile(finishes, 10), percentile(finishes, 90)
    steady = 0.8 * n / (t90 - t10) if t90 > t10 else float("nan")
    overall = n / (last_finish - start.timestamp())
    # Busiest and quietest whole seconds inside the steady window show how even it was.
    per_second: dict[int, int] = {}
    for f in finishes:
        if t10 <= f <= t90:
            per_second[int(f)] = per_second.get(int(f), 0) + 1
    inner = sorted(per_second.items())[1:-1]
    # Where a run's time goes once it is claimed; by Little's law the runs in flight are
    # rate x (claim -> finished), which tells whether the 40 slots or the pipeline limit.
    spans = list(
        Attempt.objects.filter(run_id__in=ids, number=1).values_list(
            "created_at", "started_at", "finished_at"
        )
    )
    to_worker = [1000 * (s - c).total_seconds() for c, s, _ in spans if s]
    on_worker = [1000 * (f - s).total_seconds() for _, s, f in spans if s and f]
    claim_to_end = [1000 * (f - c).total_seconds() for c, _, f in spans if f]
    return {
        "runs": len(ids),
        "statuses": statuses,
        "overall_runs_per_s": overall,
        "overall_seconds": last_finish - start.timestamp(),
        "steady_runs_per_s": steady,
        "steady_window_s": t90 - t10,
        "first_finish_after_s": first_finish - start.timestamp(),
        "per_second_min": min((c for _, c in inner), default=0),
        "per_second_max": max((c for _, c in inner), default=0),
        "claim_to_worker_ms": summarize(to_worker),
        "on_worker_ms": summarize(on_worker),
        "claim_to_finish_ms": summarize(claim_to_end),
    }


def cpu_pids(bench: Bench) -> dict[str, int]:
    pids = {name: bench.cluster.procs[name].pid for name in bench.coordinators}
    for worker_id in bench.worker_ids:
        pids[worker_id] = bench.cluster.procs[worker_id].pid
    pids["bench (this process)"] = os.getpid()
    return pids


def measure_backlog(bench: Bench, *, runs: int, timeout: float) -> dict[str, Any]:
    """Queue `runs` while the workers are drained, release them at once, time the drain."""
    from workers.models import Worker

    set_drained(bench, draining=True)
    # Workers learn of the drain from their next heartbeat reply; until then they may
    # still take a run, which only means a few runs start before the release.
    wait_for(
        lambda: (
            Worker.objects.filter(id__in=bench.worker_ids, draining=True).count()
            == len(bench.worker_ids)
        ),
        timeout=10,
        what="the drain to be stored",
    )
    time.sleep(1.5)
    ids, create_seconds = create_runs(bench, count=runs, wake_every=100)
    time.sleep(1.0)  # let the dispatcher record the waiting reasons before the clock starts
    meter = CpuMeter(cpu_pids(bench))
    released = utcnow()
    meter.start()
    set_drained(bench, draining=False)
    from controlplane.core.rpc.client import wake_coordinator

    wake_coordinator(bench.config)
    wait_all_finished(ids, timeout=timeout)
    cpu = meter.read()
    figures = completion_figures(ids, start=released)
    figures.update(create_seconds=create_seconds, cpu_percent=cpu)
    return figures


class CoordinatorCost:
    """The coordinators' CPU seconds, SQL statements and (PostgreSQL) commits so far (summed
    over the coordinators when there are several)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.pids = [bench.cluster.procs[name].pid for name in bench.coordinators]
        self.shapes: Counter[str] = Counter()  # by shape at the last read(), with --sql-shapes

    def read(self) -> tuple[float, float, int, int]:
        time.sleep(0.3)  # the statement count is published every 100 ms
        commits = -1
        if self.bench.cluster.pg_url:
            rows = self.bench.cluster.query(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
            commits = int(rows[0]["xact_commit"])
        sql = -1
        if self.bench.sql_dir:
            sql, self.shapes = 0, Counter()
            for pid in self.pids:
                count, shapes = sql_counts(self.bench.sql_dir, pid)
                sql, self.shapes = sql + count, self.shapes + shapes
        cpu = sum(process_cpu_seconds(pid) for pid in self.pids)
        return time.monotonic(), cpu, sql, commits


def per_run_cost(
    idle: tuple[tuple[float, float, int, int], ...],
    busy: tuple[tuple[float, float, int, int], ...],
    runs: int,
) -> dict[str, float]:
    """Per-run CPU ms and statements over the busy window, gross and net of the idle rate."""
    (i0, i1), (b0, b1) = idle, busy
    idle_s, busy_s = i1[0] - i0[0], b1[0] - b0[0]
    cost: dict[str, float] = {"window_s": busy_s}
    for n, name in ((1, "cpu_ms"), (2, "sql"), (3, "commits")):
        scale = 1000 if n == 1 else 1
        if b0[n] < 0:
            continue
        gross = scale * (b1[n] - b0[n])
        idle_rate = scale * (i1[n] - i0[n]) / idle_s
        cost[f"{name}_per_run"] = gross / runs
        cost[f"{name}_per_run_net"] = (gross - idle_rate * busy_s) / runs
        cost[f"{name}_idle_per_s"] = idle_rate
    return cost


def measure_live(bench: Bench, *, runs: int, timeout: float) -> dict[str, Any]:
    """Create runs as fast as this process can while the workers execute them."""
    from dags.models import DagRun

    cost = CoordinatorCost(bench)
    idle0 = cost.read()
    time.sleep(3.0)
    idle1 = cost.read()
    meter = CpuMeter(cpu_pids(bench))
    budget = CpuBudget(cpu_pids(bench))
    busy0 = cost.read()
    shapes0 = cost.shapes
    meter.start()
    budget.start()
    with LockWaits() as lock_waits:
        ids, create_seconds = create_runs(bench, count=runs, wake_every=25)
    wait_all_finished(ids, timeout=timeout)
    cpu = meter.read()
    spent = budget.read()
    elsewhere = budget.others()
    busy1 = cost.read()
    shapes = cost.shapes - shapes0
    first_queued = DagRun.objects.filter(pk__in=ids).order_by("queued_at").first()
    assert first_queued is not None
    figures = completion_figures(ids, start=first_queued.queued_at)
    figures.update(
        create_seconds=create_seconds,
        cpu_percent=cpu,
        cost=per_run_cost((idle0, idle1), (busy0, busy1), runs),
        budget_ms_per_run=cpu_budget_per_run(spent, runs),
        creator_lock_wait_ms_per_run=1000 * lock_waits.slept / runs,
        creator_lock_retries_per_run=lock_waits.pauses / runs,
        elsewhere_ms_per_run={k: 1000 * v / runs for k, v in elsewhere.items()},
        sql_shapes={k: n / runs for k, n in shapes.most_common()},
    )
    return figures


class LockWaits:
    """How long this process's `BEGIN IMMEDIATE` slept waiting for SQLite's write lock held
    by another process (the coordinator), counted by wrapping the backend's pauses; for the
    benchmark's own run creation (SQLite only; nothing is counted on PostgreSQL)."""

    def __init__(self) -> None:
        self.slept, self.pauses = 0.0, 0

    def __enter__(self) -> LockWaits:
        from controlplane.sqlite import base

        self._module = base
        self._time = base.time
        waits = self

        class Counting:
            def __getattr__(self, name: str) -> Any:
                return getattr(waits._time, name)

            def sleep(self, seconds: float) -> None:
                waits.slept += seconds
                waits.pauses += 1
                waits._time.sleep(seconds)

        base.time = Counting()  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self._module.time = self._time


def cpu_budget_per_run(spent: dict[str, float], runs: int) -> dict[str, float]:
    """CPU ms per run by where it went (the window also holds the wait for the last runs
    and the 0.25 s completion polls, so idle is a little overstated)."""
    groups: dict[str, float] = {}
    for name, seconds in spent.items():
        if name == "wall":
            continue
        if name.startswith("bench-w"):
            key = "workers (steps)" if name.endswith("children") else "workers"
        elif name.startswith("coordinator"):
            key = "coordinator(s)" + (" children" if name.endswith("children") else "")
        elif name.startswith("bench (this process)"):
            key = "creator (this process)" + (" children" if name.endswith("children") else "")
        else:
            key = name
        groups[key] = groups.get(key, 0.0) + 1000 * seconds / runs
    groups["wall"] = 1000 * spent["wall"] / runs
    return groups


def print_budget(budget: dict[str, float]) -> None:
    order = sorted(
        (k for k in budget if k not in ("machine busy", "machine idle", "wall")),
        key=lambda k: -budget[k],
    )
    parts = ", ".join(f"{k} {budget[k]:.2f}" for k in order if abs(budget[k]) >= 0.005)
    print(
        f"  CPU budget per run (ms, all cores): {parts}; machine busy {budget['machine busy']:.2f}"
        f" + idle {budget['machine idle']:.2f} over {budget['wall']:.2f} ms wall per run"
    )


def coordinators_cpu(cpu: dict[str, float]) -> float:
    return sum(v for k, v in cpu.items() if k.startswith("coordinator"))


def print_cost(cost: dict[str, float]) -> None:
    line = (
        f"  per run (coordinator, over {cost['window_s']:.1f} s): "
        f"CPU {cost['cpu_ms_per_run']:.1f} ms ({cost['cpu_ms_per_run_net']:.1f} net of idle "
        f"{cost['cpu_ms_idle_per_s']:.0f} ms/s)"
    )
    if "sql_per_run" in cost:
        line += (
            f", SQL statements {cost['sql_per_run']:.1f} ({cost['sql_per_run_net']:.1f} net of "
            f"idle {cost['sql_idle_per_s']:.1f}/s)"
        )
    if "commits_per_run" in cost:
        line += f", PostgreSQL commits (all clients) {cost['commits_per_run']:.1f}"
    print(line)
    sys.stdout.flush()


def print_throughput(name: str, result: dict[str, Any], *, clock_from: str) -> None:
    print(f"\n2. throughput, {name}: {result['runs']} single-step `true` runs {result['statuses']}")
    print(
        f"  created in {result['create_seconds']:.1f} s "
        f"({result['runs'] / result['create_seconds']:.0f} runs/s by this process)"
    )
    print(
        f"  {clock_from} to last finished: {result['overall_seconds']:.1f} s = "
        f"{result['overall_runs_per_s']:.1f} runs/s; first finish after "
        f"{result['first_finish_after_s']:.2f} s"
    )
    print(
        f"  steady (10th-90th percentile of finishes, {result['steady_window_s']:.1f} s): "
        f"{result['steady_runs_per_s']:.1f} runs/s; whole seconds in it: "
        f"{result['per_second_min']}-{result['per_second_max']} runs"
    )
    hop, run, span = (
        result["claim_to_worker_ms"],
        result["on_worker_ms"],
        result["claim_to_finish_ms"],
    )
    in_flight = result["steady_runs_per_s"] * span["mean"] / 1000
    print(
        f"  per run, p50 (mean): claimed -> worker has it {hop['p50']:.0f} ({hop['mean']:.0f}) ms, "
        f"worker start -> finished {run['p50']:.0f} ({run['mean']:.0f}) ms; "
        f"runs in flight ~{in_flight:.0f}"
    )
    cpu = result["cpu_percent"]
    workers_total = sum(v for k, v in cpu.items() if k.startswith("bench-w"))
    print(
        "  CPU (% of one core; the machine has "
        f"{os.cpu_count() * 100}%): coordinator(s) {coordinators_cpu(cpu):.0f}%, "
        f"workers {workers_total:.0f}% in total, this process "
        f"{cpu['bench (this process)']:.0f}%"
    )
    if "cost" in result:
        print_cost(result["cost"])
    if "creator_lock_wait_ms_per_run" in result:
        print(
            f"  this process slept {result['creator_lock_wait_ms_per_run']:.2f} ms per run "
            f"({result['creator_lock_retries_per_run']:.1f} pauses) waiting for SQLite's write "
            "lock to create runs"
        )
    if "budget_ms_per_run" in result:
        print_budget(result["budget_ms_per_run"])
        print(
            "  of which machine-wide by kind / other processes (ms per run): "
            + ", ".join(f"{k} {v:.2f}" for k, v in result["elsewhere_ms_per_run"].items() if v)
        )
    if result.get("sql_shapes"):
        print("  SQL statements per run by shape (coordinator, incl. idle heartbeats):")
        for key, n in list(result["sql_shapes"].items())[:15]:
            print(f"    {n:5.2f}  {key}")
    verdict = "PASS" if result["steady_runs_per_s"] >= THROUGHPUT_TARGET else "MISS"
    print(f"  target >= {THROUGHPUT_TARGET:.0f} runs/s (steady): {verdict}")
    sys.stdout.flush()


# -- 3. head-of-line blocking -------------------------------------------------------------

UNMATCHED_DAG = """\
name: bench-unmatched
worker_selector:
  bench: nowhere
steps:
  - name: never
    command: "true"
"""


def measure_unmatched_backlog(bench: Bench, *, runs: int, probes: int) -> dict[str, Any]:
    """Queue `runs` that no worker matches, then matching runs behind them."""
    from django.db import transaction

    from controlplane.core.routing import WorkerView
    from controlplane.core.rpc.client import wake_coordinator
    from controlplane.core.spec import parse_dag_file
    from controlplane.dispatch import dispatch_once
    from dags.models import DagRun, RunStatus
    from dags.runs import create_run

    unmatched = parse_dag_file(
        UNMATCHED_DAG, source="bench-unmatched.yaml", default_name="bench-unmatched"
    )
    t0 = time.monotonic()
    ids: list[str] = []
    for start in range(0, runs, 500):
        # Chunks, so the coordinator's own writes get the lock in between.
        with transaction.atomic():
            for _ in range(min(500, runs - start)):
                ids.append(create_run(unmatched, now=utcnow(), default_mode="local").id)
        wake_coordinator(bench.config)
    create_seconds = time.monotonic() - t0
    queued = DagRun.objects.filter(pk__in=ids, status=RunStatus.QUEUED)
    wait_for(
        lambda: not queued.filter(waiting_reason="").exists(),
        timeout=120,
        what=f"all {runs} unmatched runs to show a waiting reason",
        every=0.05,
    )
    reasons_seconds = time.monotonic() - t0 - create_seconds
    reasons = sorted(set(queued.values_list("waiting_reason", flat=True)))

    to_process = []
    for _ in range(probes):
        run_id, queued_at = create_and_wake(bench, bench.latency_dag)
        marker = bench.markers / run_id
        wait_for(marker.exists, timeout=30, what=f"step of {run_id} to start", every=0.001)
        to_process.append(1000 * (float(marker.read_text().strip()) - queued_at.timestamp()))
        wait_terminal(run_id, timeout=30)

    # One pass as the coordinator makes it when nothing changed: healthy workers with free
    # slots that match none of the backlog, every reason already recorded.
    others = [WorkerView(w, {"bench": "dispatch"}, "HEALTHY", False, 10) for w in bench.worker_ids]
    passes = []
    for _ in range(20):
        p0 = time.perf_counter()
        dispatch_once(now=utcnow(), workers=others, deliver=lambda attempt: None)
        passes.append(1000 * (time.perf_counter() - p0))
    DagRun.objects.filter(pk__in=ids, status=RunStatus.QUEUED).update(
        status=RunStatus.CANCELLED, cancel_requested=True, finished_at=utcnow()
    )
    return {
        "runs": runs,
        "create_seconds": create_seconds,
        "reasons_seconds": reasons_seconds,
        "reasons": reasons,
        "latency": summarize(to_process),
        "probes": probes,
        "pass_ms": summarize(passes),
    }


def print_unmatched_backlog(result: dict[str, Any]) -> None:
    print(f"\n3. head-of-line: {result['runs']} queued runs that no worker matches")
    print(
        f"  created in {result['create_seconds']:.1f} s; every one showed its waiting reason "
        f"{result['reasons_seconds']:.2f} s after the last was created ({result['reasons']})"
    )
    lat = result["latency"]
    print(
        f"  {result['probes']} matching runs queued behind them, created -> step process ran: "
        f"p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, max {lat['max']:.1f} ms"
    )
    one = result["pass_ms"]
    print(
        f"  one dispatch pass over the backlog, nothing to change (in this process, 20 passes): "
        f"p50 {one['p50']:.1f} ms, max {one['max']:.1f} ms"
    )
    sys.stdout.flush()


# -- profile -----------------------------------------------------------------------------


def profile_throughput(bench: Bench, *, runs: int, seconds: float) -> None:
    """Two extra live passes with py-spy on the coordinator (their rates are not reported):
    one samples the GIL holder (CPU), one every thread including waits (wall time)."""
    import threading

    pid = bench.cluster.procs["coordinator"].pid
    for flags, name in ((["--gil"], "cpu"), (["--idle", "--threads"], "wall")):
        out = bench.cluster.home / f"coordinator-{name}.pyspy.txt"
        found: list[str | None] = []
        sampler = threading.Thread(
            target=lambda o=out, f=flags, into=found: into.append(
                record_profile(pid, seconds=seconds, out=o, flags=f)
            ),
            daemon=True,
        )
        # Sampling starts with the creation: where creating runs is slower than running them
        # (PostgreSQL), a sampler started after it would only see an idle coordinator.
        sampler.start()
        ids, _ = create_runs(bench, count=runs, wake_every=50)
        wait_all_finished(ids, timeout=600)
        sampler.join(timeout=seconds + 90)
        collapsed = found[0] if found else None
        print(f"\nprofile ({name}): coordinator sampled {seconds:.0f} s during {runs} runs")
        if name == "cpu":
            print_cpu_profile(collapsed, seconds=seconds)
        else:
            print_wall_profile(
                collapsed, roles=("dispatch loop", "Report RPC", "Poll RPC"), seconds=seconds
            )


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-active-runs", type=int, default=10)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--latency-warmup", type=int, default=10)
    parser.add_argument(
        "--latency-gap", type=float, default=0.02, help="pause between latency runs (s)"
    )
    parser.add_argument("--runs", type=int, default=1000, help="runs per throughput pass")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--backlog", type=int, default=10000, help="unmatched queued runs for the head-of-line pass"
    )
    parser.add_argument("--backlog-probes", type=int, default=20)
    parser.add_argument("--skip-backlog", action="store_true")
    parser.add_argument(
        "--profile",
        type=float,
        default=0,
        metavar="SECONDS",
        help="afterwards, sample the coordinator with py-spy during an extra backlog pass",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir")
    parser.add_argument(
        "--database-url",
        default="",
        help="a PostgreSQL server URL: the cluster gets a fresh database there (default SQLite)",
    )
    parser.add_argument(
        "--sql-shapes",
        action="store_true",
        help="also count the coordinator's statements by shape (costs it a little CPU)",
    )
    parser.add_argument(
        "--coordinators",
        type=int,
        default=1,
        help="split the workers over N coordinators (PostgreSQL) and compare with one",
    )
    # Set on the children of a --coordinators comparison: run this count only.
    parser.add_argument("--no-comparison", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args(argv)
    if args.coordinators < 1:
        parser.error("--coordinators must be 1 or more")
    if args.coordinators > 1 and not args.database_url:
        parser.error(
            "--coordinators above 1 needs --database-url: several coordinators need PostgreSQL"
        )
    return args


def compare_coordinators(args: argparse.Namespace, argv: list[str]) -> int:
    """One child bench with a single coordinator, then one with N, back to back; both print
    their figures, and this prints the throughput side by side (and both with --json)."""
    results: dict[str, dict[str, Any]] = {}
    base = [a for a in argv if a != "--json"]
    for count in (1, args.coordinators):
        cmd = [sys.executable, __file__, *base, "--coordinators", str(count), "--no-comparison"]
        print(f"\n=== {count} coordinator(s) ===")
        sys.stdout.flush()
        proc = subprocess.Popen([*cmd, "--json"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        last = ""
        for line in proc.stdout:
            if line.startswith("{"):
                last = line
            else:
                sys.stdout.write(line)
        if proc.wait() != 0 or not last:
            print(f"error: the {count}-coordinator pass failed")
            return 1
        results[str(count)] = json.loads(last)
    one, many = results["1"], results[str(args.coordinators)]
    print(f"\nthroughput, 1 coordinator against {args.coordinators} (same workers and slots):")
    rows = []
    keys = ("throughput_runs_per_s", "throughput_overall_runs_per_s", "backlog_runs_per_s")
    for key in keys:
        if key in one and key in many:
            ratio = many[key] / one[key] if one[key] else float("nan")
            rows.append([key, f"{one[key]:.1f}", f"{many[key]:.1f}", f"{ratio:.2f}"])
    print_table(["runs/s", "1", str(args.coordinators), "ratio"], rows)
    load = [r.get(k) for r in (one, many) for k in ("loadavg_1m_start", "loadavg_1m_end")]
    print(f"  load average (1 min) at start/end of each pass: {load}")
    if args.json:
        summary: dict[str, Any] = {"coordinators": args.coordinators, "by_coordinators": results}
        for key in keys:
            if key in one and key in many and one[key]:
                summary[f"{key}_ratio"] = many[key] / one[key]
        print(json.dumps(summary))
    return 0


def run_all(args: argparse.Namespace, summary: dict[str, Any], sql_dir: Path) -> int:
    """Every part the flags ask for, on one cluster; the JSON figures go into `summary`."""
    with bench_cluster(
        keep=args.keep,
        extra_env=sql_count_env(sql_dir, shapes=args.sql_shapes),
        database_url=args.database_url,
    ) as cluster:
        bench = prepare(
            cluster,
            workers=args.workers,
            max_runs=args.max_active_runs,
            coordinators=args.coordinators,
        )
        bench.sql_dir = sql_dir
        if not args.skip_latency:
            latency = measure_latency(
                bench, runs=args.latency_runs, warmup=args.latency_warmup, gap=args.latency_gap
            )
            print_latency(latency)
            main_latency = latency["created -> step process ran (date +%s.%N)"]
            summary.update(latency_p50_ms=main_latency["p50"], latency_p99_ms=main_latency["p99"])
        if not args.skip_throughput:
            timeout = max(120.0, args.runs / 5)
            backlog = measure_backlog(bench, runs=args.runs, timeout=timeout)
            print_throughput(
                "backlog (queued while drained, then released)", backlog, clock_from="release"
            )
            live = measure_live(bench, runs=args.runs, timeout=timeout)
            print_throughput("live (created while executing)", live, clock_from="first queued")
            cost = live["cost"]
            summary.update(
                throughput_runs_per_s=live["steady_runs_per_s"],
                throughput_overall_runs_per_s=live["overall_runs_per_s"],
                backlog_runs_per_s=backlog["steady_runs_per_s"],
                # Runs created per second by this one process (`create_run` as `manage.py
                # start` calls it): with the workers drained, and while the runs execute.
                create_runs_per_s_drained=args.runs / backlog["create_seconds"],
                create_runs_per_s_live=args.runs / live["create_seconds"],
                runs=args.runs,
                coordinator_cpu_percent=coordinators_cpu(live["cpu_percent"]),
                coordinator_cpu_ms_per_run=cost["cpu_ms_per_run"],
                coordinator_cpu_ms_per_run_net=cost["cpu_ms_per_run_net"],
                sql_statements_per_run=cost.get("sql_per_run"),
                sql_statements_per_run_net=cost.get("sql_per_run_net"),
                pg_commits_per_run=cost.get("commits_per_run"),
                cpu_budget_ms_per_run=live["budget_ms_per_run"],
                creator_lock_wait_ms_per_run=live.get("creator_lock_wait_ms_per_run"),
            )
        if not args.skip_backlog:
            print_unmatched_backlog(
                measure_unmatched_backlog(bench, runs=args.backlog, probes=args.backlog_probes)
            )
        if args.profile:
            profile_throughput(
                bench, runs=max(args.runs, int(args.profile * 120)), seconds=args.profile
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    install_exit_signals()
    if args.coordinators > 1 and not args.no_comparison:
        return compare_coordinators(args, argv)
    print_machine()
    database = "PostgreSQL" if args.database_url else "SQLite WAL"
    print(
        f"setup: {args.coordinators} coordinator(s), {args.workers} workers x "
        f"{args.max_active_runs} slots, "
        f"selector {SELECTOR} (matches every worker), {database}"
    )
    sys.stdout.flush()
    sql_dir = Path(tempfile.mkdtemp(prefix="dagu-bench-sql-"))
    summary: dict[str, Any] = {
        "database": database.split()[0].lower(),
        "coordinators": args.coordinators,
        "workers": args.workers,
        "slots": args.max_active_runs,
        "loadavg_1m_start": round(os.getloadavg()[0], 2),
    }
    try:
        code = guarded(lambda: run_all(args, summary, sql_dir))
    finally:
        shutil.rmtree(sql_dir, ignore_errors=True)
    if code:
        return code
    summary["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
