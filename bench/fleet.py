"""Fleet benchmark (issue 11, target 1): N simulated workers on one real coordinator.

A real `manage.py coordinator` (default timings: heartbeat every 1 s, WARNING after 5 s
without one) in a temp data dir, and simulator processes (this script with --simulate, up
to 500 workers each) that behave like the agent on the wire, with the generated stubs on
grpc.aio: every simulated worker holds a long `Poll` open (wait 10 s, 10 free slots, a
label no run selects, so each poll waits its full time as an idle worker's does) and sends
a heartbeat one interval after the previous reply, with its running attempts (none: an
idle fleet), on one open `HeartbeatStream` as the agent does (`--heartbeat unary`: one
`Heartbeat` call each, as agents did before the stream). Each simulator authenticates as
an agent does, with a worker token of its own (`authorization: Bearer`), one credential
per simulator since a credential holds at most `limits.workers_per_credential` (1,000) live
worker ids. Their starts are spread over a ramp; then for the window (60 s):

- heartbeat latency (send -> reply, timeouts at 10 s counted as 10 s) of every simulated
  heartbeat in the window: p50, p99, max, errors;
- left_healthy: simulated workers whose stored health (controlplane.core.health.health_status of the
  row's last_heartbeat_at, sampled every second from the database) was not HEALTHY at least
  once in the window;
- a real `manage.py worker` alongside: whether it stayed HEALTHY, and a single-step run
  selected to it and created mid-window must succeed before the window ends + 30 s;
- the coordinator's CPU and threads.

Usage: .venv/bin/python bench/fleet.py --workers N [--window 60] [--json]
       [--database-url postgres://postgres@127.0.0.1:5432/NAME]
Prints the machine and the figures, with --json one JSON line last
(`heartbeat_p99_ms`, `left_healthy`, `holds`, ...); exits 0 (1 if the cluster cannot start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    bench_cluster,
    guarded,
    install_exit_signals,
    percentile,
    print_machine,
    process_cpu_seconds,
    setup_django,
    wait_for,
)

PER_SIMULATOR = 500
TOKEN_ENV = "FLEET_WORKER_TOKEN"  # the simulator's worker token (not on its command line)
POLL_WAIT_MS = 10_000  # controlplane.core.agent.POLL_WAIT_SECONDS
RPC_TIMEOUT_S = 10.0  # controlplane.core.agent.RPC_TIMEOUT_SECONDS
HEARTBEAT_TARGET_P99_MS = 100.0
REAL_WORKER = "fleet-real"
REAL_DAG = """\
name: fleet-probe
worker_selector:
  fleet: real
steps:
  - name: "true"
    command: "true"
"""


# -- the simulator (a child process) ---------------------------------------------------------


async def simulate(args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    from controlplane.core.rpc.v1 import coordinator_pb2 as pb
    from controlplane.core.rpc.v1 import coordinator_pb2_grpc as rpc

    address = f"127.0.0.1:{args.port}"
    auth = (("authorization", f"Bearer {os.environ[TOKEN_ENV]}"),)
    channels = [grpc.aio.insecure_channel(address) for _ in range(math.ceil(args.count / 50))]
    stubs = [rpc.CoordinatorStub(c) for c in channels]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    details: dict[str, str] = {}  # the first message of each kind of error
    in_window: dict[str, int] = {}  # heartbeat errors of calls sent in the window
    t_start, t_end = args.window_start, args.window_start + args.window
    started_ms = int(time.time() * 1000)

    def info(worker_id: str) -> Any:
        return pb.WorkerInfo(
            worker_id=worker_id, host="fleet-sim", pid=os.getpid(),
            labels={"fleet": "sim"}, max_active_runs=10, started_at_ms=started_ms,
        )  # fmt: skip

    def failed(code: str, detail: str, t0: float) -> None:
        errors[code] = errors.get(code, 0) + 1
        details.setdefault(code, detail[:200])
        if t_start <= t0 < t_end:
            in_window[code] = in_window.get(code, 0) + 1

    async def unary_heartbeats(stub: Any, me: Any) -> None:
        while time.time() < t_end:
            t0 = time.time()
            try:
                await stub.Heartbeat(
                    pb.HeartbeatRequest(worker=me), timeout=RPC_TIMEOUT_S, metadata=auth
                )
                ok = True
            except grpc.aio.AioRpcError as exc:
                failed(exc.code().name, str(exc.details()), t0)
                ok = False
            if t_start <= t0 < t_end:
                latencies.append(1000 * (time.time() - t0))
            await asyncio.sleep(1.0 if ok else 0.5)

    async def stream_heartbeats(stub: Any, me: Any) -> None:
        # As the agent does (CoordinatorClient.heartbeat): one stream kept open, a reply
        # missing after the RPC timeout is a failed heartbeat and the stream is opened anew.
        call = None
        while time.time() < t_end:
            t0 = time.time()
            try:
                if call is None:
                    call = stub.HeartbeatStream(metadata=auth)
                await call.write(pb.HeartbeatRequest(worker=me))
                reply = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
                if reply is grpc.aio.EOF:
                    raise EOFError("the coordinator ended the stream")
                ok = True
            except grpc.aio.AioRpcError as exc:
                failed(exc.code().name, str(exc.details()), t0)
                ok = False
            except (TimeoutError, EOFError, grpc.aio.UsageError) as exc:
                failed(type(exc).__name__, str(exc), t0)
                ok = False
            if not ok and call is not None:
                call.cancel()
                call = None
            if t_start <= t0 < t_end:
                latencies.append(1000 * (time.time() - t0))
            await asyncio.sleep(1.0 if ok else 0.5)
        if call is not None:
            await call.done_writing()

    heartbeats = unary_heartbeats if args.heartbeat == "unary" else stream_heartbeats

    async def polls(stub: Any, me: Any) -> None:
        while time.time() < t_end:
            try:
                await stub.Poll(
                    pb.PollRequest(worker=me, free_slots=10, wait_ms=POLL_WAIT_MS),
                    timeout=POLL_WAIT_MS / 1000 + RPC_TIMEOUT_S,
                    metadata=auth,
                )
            except grpc.aio.AioRpcError as exc:
                errors[f"poll {exc.code().name}"] = errors.get(f"poll {exc.code().name}", 0) + 1
                details.setdefault(f"poll {exc.code().name}", str(exc.details())[:200])
                await asyncio.sleep(0.5)

    async def worker(index: int) -> None:
        # Spread over the ramp, so the fleet connects as a restarted fleet would.
        await asyncio.sleep(random.uniform(0, max(0.0, args.window_start - 5 - time.time())))
        stub = stubs[index % len(stubs)]
        me = info(f"fleet-sim-{args.first + index:05d}")
        await asyncio.gather(heartbeats(stub, me), polls(stub, me))

    await asyncio.gather(*(worker(i) for i in range(args.count)))
    for channel in channels:
        await channel.close(grace=None)
    return {
        "latencies_ms": latencies,
        "errors": errors,
        "error_details": details,
        "errors_in_window": in_window,
    }


def simulator_main(args: argparse.Namespace) -> int:
    result = asyncio.run(simulate(args))
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- the benchmark ---------------------------------------------------------------------------


def start_simulators(
    cluster: Any, *, workers: int, window_start: float, window: float, heartbeat: str
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    from django.utils import timezone

    from workers.credentials import issue_credential

    sims = []
    for n, first in enumerate(range(0, workers, PER_SIMULATOR)):
        token = issue_credential(
            f"fleet-sim-{n}", labels={}, worker_id_pattern="fleet-sim-*", now=timezone.now()
        )
        out = cluster.home / f"sim-{n}.json"
        log = open(cluster.home / f"sim-{n}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, __file__, "--simulate", "--port", str(cluster.port),
             "--first", str(first), "--count", str(min(PER_SIMULATOR, workers - first)),
             "--window-start", str(window_start), "--window", str(window), "--out", str(out),
             "--heartbeat", heartbeat],
            env={**cluster.env, "DJANGO_SETTINGS_MODULE": "controlplane.settings",
                 TOKEN_ENV: token},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        cluster.procs[f"sim-{n}"] = proc  # stopped with the cluster whatever happens
        sims.append((proc, out))
    return sims


def stored_health() -> dict[str, str]:
    from django.utils import timezone

    from controlplane.core.config import resolve
    from controlplane.core.health import health_status
    from workers.models import Worker

    timing, now = resolve().timing, timezone.now()
    return {
        wid: health_status(beat, now=now, timing=timing)
        for wid, beat in Worker.objects.values_list("id", "last_heartbeat_at")
    }


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with bench_cluster(database_url=args.database_url, keep=args.keep) as cluster:
        coordinator = cluster.start_coordinator().pid
        cluster.start_worker(REAL_WORKER, "fleet=real", max_runs=10)
        setup_django(cluster)
        from django.utils import timezone

        from controlplane.core.config import resolve
        from controlplane.core.rpc.client import wake_coordinator
        from controlplane.core.spec import parse_dag_file
        from dags.models import TERMINAL_RUN_STATUSES, DagRun
        from dags.runs import create_run

        ramp = max(10.0, args.workers / 100)
        window_start = time.time() + 5 + ramp + args.settle
        sims = start_simulators(
            cluster,
            workers=args.workers,
            window_start=window_start,
            window=args.window,
            heartbeat=args.heartbeat,
        )
        time.sleep(max(0.0, window_start - time.time()))
        load_start = os.getloadavg()[0]
        cpu0, t0 = process_cpu_seconds(coordinator), time.monotonic()
        ever_left: set[str] = set()
        real_states: set[str] = set()
        seen = 0
        threads = 0
        run_id, run_created = "", 0.0
        while time.time() < window_start + args.window:
            health = stored_health()
            sims_seen = {w: h for w, h in health.items() if w.startswith("fleet-sim-")}
            seen = max(seen, len(sims_seen))
            ever_left |= {w for w, h in sims_seen.items() if h != "HEALTHY"}
            real_states.add(health.get(REAL_WORKER, "OFFLINE"))
            threads = max(threads, thread_count(coordinator))
            if not run_id and time.time() >= window_start + args.window / 2:
                dag = parse_dag_file(REAL_DAG, source="fleet-probe.yaml", default_name="fleet")
                run_id = create_run(dag, now=timezone.now(), default_mode="local").id
                run_created = time.time()
                wake_coordinator(resolve())
            time.sleep(1.0)
        cpu_seconds = process_cpu_seconds(coordinator) - cpu0
        cpu = 100 * cpu_seconds / (time.monotonic() - t0)
        load_end = os.getloadavg()[0]

        def finished() -> str | None:
            row = DagRun.objects.filter(pk=run_id).values_list("status", "finished_at").first()
            return row if row and row[0] in TERMINAL_RUN_STATUSES else None

        try:
            status, finished_at = wait_for(finished, timeout=30, what="the probe run")
            run_seconds = finished_at.timestamp() - run_created
        except AssertionError:
            status, run_seconds = "not finished", float("nan")
        latencies: list[float] = []
        errors: dict[str, int] = {}
        error_details: dict[str, str] = {}
        errors_in_window: dict[str, int] = {}
        for proc, out in sims:
            proc.wait(timeout=60)
            if out.exists():
                part = json.loads(out.read_text())
                latencies += part["latencies_ms"]
                for k, v in part["errors"].items():
                    errors[k] = errors.get(k, 0) + v
                for k, v in part.get("error_details", {}).items():
                    error_details.setdefault(k, v)
                for k, v in part.get("errors_in_window", {}).items():
                    errors_in_window[k] = errors_in_window.get(k, 0) + v
        p99 = percentile(latencies, 99)
        real_healthy = real_states == {"HEALTHY"}
        return {
            "workers": args.workers,
            "heartbeat": args.heartbeat,
            "registered": seen,
            "database": "postgresql" if args.database_url else "sqlite",
            "window_s": args.window,
            "heartbeats": len(latencies),
            "heartbeat_p50_ms": percentile(latencies, 50),
            "heartbeat_p99_ms": p99,
            "heartbeat_max_ms": max(latencies, default=float("nan")),
            "errors": errors,
            "error_details": error_details,
            "heartbeat_errors_in_window": errors_in_window,
            "left_healthy": len(ever_left),
            "real_worker_states": sorted(real_states),
            "real_run": status,
            "real_run_seconds": run_seconds,
            "coordinator_cpu_percent": cpu,
            # Each simulated worker also polls every 10 s: ~1.1 calls per heartbeat.
            "coordinator_cpu_ms_per_heartbeat": 1000 * cpu_seconds / max(1, len(latencies)),
            "coordinator_threads_max": threads,
            "loadavg_1m_start": round(load_start, 2),
            "loadavg_1m_end": round(load_end, 2),
            "holds": p99 <= HEARTBEAT_TARGET_P99_MS
            and not ever_left
            and real_healthy
            and status == "succeeded"
            and seen == args.workers,
        }


def print_result(r: dict[str, Any]) -> None:
    print(f"\nfleet of {r['workers']} simulated workers ({r['registered']} registered, "
          f"{r['heartbeat']} heartbeats), "
          f"{r['window_s']:.0f} s window, {r['database']}, load average {r['loadavg_1m_start']}"
          f" -> {r['loadavg_1m_end']}")  # fmt: skip
    print(
        f"  heartbeats: {r['heartbeats']}, p50 {r['heartbeat_p50_ms']:.1f} ms, "
        f"p99 {r['heartbeat_p99_ms']:.1f} ms, max {r['heartbeat_max_ms']:.0f} ms; "
        f"errors {r['errors'] or 'none'}"
    )
    print(f"  simulated workers that left HEALTHY: {r['left_healthy']}")
    print(
        f"  real worker states seen: {', '.join(r['real_worker_states'])}; its run: "
        f"{r['real_run']} ({r['real_run_seconds']:.1f} s)"
    )
    print(
        f"  coordinator: {r['coordinator_cpu_percent']:.0f}% of a core "
        f"({r['coordinator_cpu_ms_per_heartbeat']:.2f} ms per heartbeat), "
        f"up to {r['coordinator_threads_max']} threads"
    )
    print(
        f"  target p99 <= {HEARTBEAT_TARGET_P99_MS:.0f} ms, none leaves HEALTHY, real worker "
        f"healthy and its run done: {'HOLDS' if r['holds'] else 'BREAKS'}",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=250, help="simulated workers")
    parser.add_argument("--window", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the ramp")
    parser.add_argument("--database-url", default="", help="PostgreSQL server URL")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    parser.add_argument(
        "--heartbeat",
        choices=("stream", "unary"),
        default="stream",
        help="how simulated workers heartbeat: on an open HeartbeatStream as the agent does "
        "(default), or one unary Heartbeat call each, as agents before it did",
    )
    # The simulator child's own arguments.
    parser.add_argument("--simulate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--window-start", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.simulate:
        return simulator_main(args)
    if args.workers < 1:
        print("fleet: --workers must be at least 1", file=sys.stderr)
        return 2
    install_exit_signals()
    print_machine()
    sys.stdout.flush()
    return guarded(lambda: report(measure(args), as_json=args.json))


def report(result: dict[str, Any], *, as_json: bool) -> int:
    print_result(result)
    if as_json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
