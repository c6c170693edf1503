"""Heartbeat benchmark (issue 4): workers per coordinator, the workers API, registry scans.

1. Capacity: a real `manage.py coordinator` and simulated workers speaking the real gRPC
   protocol (`Heartbeat` with `HeartbeatRequest(worker=WorkerInfo(...), running=[])`), one
   heartbeat per worker per second, spread evenly across the second. The load comes from a
   separate process (this script with `--load`, grpc.aio on one event loop, a few channels)
   so it never shares a GIL with the measuring code. Steps of N workers (default 250, 500,
   1000, 1500, 2000), each held ~12 s; the first seconds of each step are not measured.
   Per step: achieved heartbeats/s, p50/p99 latency, how late the generator sent (to tell
   a slow coordinator from a slow generator), and CPU of the coordinator and generator.
2. `GET /api/v2/workers` with 1,000 live workers: `manage.py start_all` (its coordinator
   receives the heartbeats, so the Worker rows exist and are fresh), a user and token from
   `manage.py create_api_token` (or a DRF token made by `manage.py shell` if that command
   is missing), ~50 sequential requests on one keep-alive connection.
3. The service registry: 1,000 worker files written with `controlplane.core.registry.write_record`,
   then `registry.scan(root, "worker")` and `registry.cleanup(...)` timed (p50 of 20).

Usage: .venv/bin/python bench/heartbeats.py [--steps 250,500,1000,1500,2000] [--skip-api]
       [--profile SECONDS --profile-at WORKERS]
Prints the machine and the figures; exits 0 (1 only if a cluster cannot be started).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    Cluster,
    CpuMeter,
    bench_cluster,
    install_exit_signals,
    print_cpu_profile,
    print_machine,
    print_table,
    record_profile,
    summarize,
    wait_for,
)

P99_TARGET_MS = 100.0
WORKERS_TARGET = 1000
API_P50_TARGET_MS = 100.0
RPC_DEADLINE_S = 5.0
HEARTBEAT_THREADS = 4  # controlplane.rpc.server.HEARTBEAT_THREADS (not imported: no Django here)


# -- the load generator (runs in its own process) ------------------------------------------


def worker_request(index: int, *, started_ms: int) -> Any:
    from controlplane.core.rpc.v1 import coordinator_pb2 as pb

    return pb.HeartbeatRequest(
        worker=pb.WorkerInfo(
            worker_id=f"sim-{index:05d}",
            host="bench-sim",
            pid=100_000 + index,
            labels={"bench": "heartbeat", "zone": f"z{index % 4}", "gpu": str(index % 2 == 0)},
            max_active_runs=10,
            started_at_ms=started_ms,
        ),
        running=[],
    )


async def run_step(
    stubs: list[Any], *, workers: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Send one heartbeat per worker per second, worker k at offset k/N of each second.

    A worker whose previous heartbeat has not returned skips its turn, as the real agent
    (which waits for the reply) would. Latency is measured from just before the call.
    """
    started_ms = int(time.time() * 1000)
    requests = [worker_request(i, started_ms=started_ms) for i in range(workers)]
    in_flight = [False] * workers
    latencies: list[float] = []
    lateness: list[float] = []
    errors: dict[str, int] = {}
    details: dict[str, str] = {}  # the first message per error kind
    skipped = 0
    done_in_window = 0
    t0 = time.perf_counter()
    window_start, window_end = t0 + warmup, t0 + seconds
    cpu0 = time.process_time()
    pending: set[asyncio.Task[None]] = set()

    async def beat(k: int, due: float) -> None:
        nonlocal done_in_window
        in_flight[k] = True
        sent = time.perf_counter()
        try:
            await stubs[k % len(stubs)].Heartbeat(requests[k], timeout=RPC_DEADLINE_S)
        except Exception as exc:  # grpc.aio.AioRpcError, mostly DEADLINE_EXCEEDED
            code = exc.code() if hasattr(exc, "code") else None
            key = code.name if code is not None else type(exc).__name__
            if sent < window_start:
                key = f"{key} (warm-up)"
            errors[key] = errors.get(key, 0) + 1
            if hasattr(exc, "details"):
                details.setdefault(key, f"{exc.details()} after {time.perf_counter() - sent:.1f} s")
        else:
            end = time.perf_counter()
            if window_start <= sent < window_end:
                latencies.append(1000 * (end - sent))
                lateness.append(1000 * (sent - due))
                done_in_window += 1
        finally:
            in_flight[k] = False

    sent_total = 0
    while True:
        now = time.perf_counter()
        if now >= window_end:
            break
        # Every heartbeat whose slot has come: slot n is worker n % N at t0 + n / N.
        due_until = int((now - t0) * workers)
        while sent_total <= due_until:
            k = sent_total % workers
            due = t0 + sent_total / workers
            sent_total += 1
            if in_flight[k]:
                if due >= window_start:
                    skipped += 1
                continue
            task = asyncio.create_task(beat(k, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(0.002)
    if pending:
        await asyncio.wait(pending, timeout=RPC_DEADLINE_S + 1)
    window = window_end - window_start
    return {
        "workers": workers,
        "target_per_s": float(workers),
        "achieved_per_s": done_in_window / window,
        "latency_ms": summarize(latencies),
        "send_lateness_ms": summarize(lateness),
        "errors": errors,
        "error_details": details,
        "skipped_busy": skipped,
        "generator_cpu_percent": 100 * (time.process_time() - cpu0) / (time.perf_counter() - t0),
    }


async def generate(
    target: str, *, steps: list[int], seconds: float, warmup: float, channels: int
) -> None:
    import grpc

    from controlplane.core.rpc.v1 import coordinator_pb2_grpc

    parent = os.getppid()
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [coordinator_pb2_grpc.CoordinatorStub(ch) for ch in opened]
    try:
        for ch in opened:
            await asyncio.wait_for(ch.channel_ready(), timeout=15)
        for workers in steps:
            if os.getppid() != parent:
                return  # the benchmark died: stop loading its coordinator
            print(json.dumps({"event": "step-start", "workers": workers}), flush=True)
            result = await run_step(stubs, workers=workers, seconds=seconds, warmup=warmup)
            print(json.dumps({"event": "step-end", **result}), flush=True)
    finally:
        for ch in opened:
            await ch.close()


def load_main(args: argparse.Namespace) -> int:
    asyncio.run(
        generate(
            args.load,
            steps=args.steps,
            seconds=args.step_seconds,
            warmup=args.warmup,
            channels=args.channels,
        )
    )
    return 0


@contextlib.contextmanager
def load_generator(
    cluster: Cluster, *, steps: list[int], seconds: float, warmup: float, channels: int
) -> Iterator[subprocess.Popen[str]]:
    """The generator process, in its own process group, killed on the way out."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--load",
            f"127.0.0.1:{cluster.port}",
            "--steps",
            ",".join(map(str, steps)),
            "--step-seconds",
            str(seconds),
            "--warmup",
            str(warmup),
            "--channels",
            str(channels),
        ],
        stdout=subprocess.PIPE,
        stderr=open(cluster.home / "loadgen.log", "ab"),  # noqa: SIM115 - the child owns it
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


# -- 1. capacity -------------------------------------------------------------------------


def measure_capacity(
    *,
    steps: list[int],
    seconds: float,
    warmup: float,
    channels: int,
    profile_at: int = 0,
    profile_seconds: float = 0,
) -> list[dict[str, Any]]:
    """Returns one result per step; with `profile_seconds`, py-spy samples the coordinator
    (GIL holder) during the step of `profile_at` workers and its summary is printed."""
    results: list[dict[str, Any]] = []
    profiles: list[str | None] = []
    sampler: threading.Thread | None = None
    with bench_cluster() as cluster:
        coordinator = cluster.start_coordinator()
        with load_generator(
            cluster, steps=steps, seconds=seconds, warmup=warmup, channels=channels
        ) as gen:
            assert gen.stdout is not None
            meter = CpuMeter({"coordinator": coordinator.pid, "generator": gen.pid})
            deadline = time.monotonic() + len(steps) * (seconds + 30) + 60
            for line in gen.stdout:
                event = json.loads(line)
                if event["event"] == "step-start":
                    meter.start()
                    print(f"  step: {event['workers']} workers ...", flush=True)
                    if profile_seconds and event["workers"] == profile_at:
                        sampler = threading.Thread(
                            target=lambda: (
                                time.sleep(warmup),
                                profiles.append(
                                    record_profile(
                                        coordinator.pid,
                                        seconds=profile_seconds,
                                        out=cluster.home / "coordinator-cpu.pyspy.txt",
                                        flags=["--gil"],
                                    )
                                ),
                            ),
                            daemon=True,
                        )
                        sampler.start()
                elif event["event"] == "step-end":
                    cpu = meter.read()
                    event["coordinator_cpu_percent"] = cpu["coordinator"]
                    results.append(event)
                if time.monotonic() > deadline:
                    break
            if coordinator.poll() is not None:
                print(f"coordinator exited:\n{cluster.log('coordinator')[-2000:]}")
        if sampler is not None:
            sampler.join(timeout=profile_seconds + 90)
            print(f"\nprofile: coordinator during the {profile_at}-worker step")
            print_cpu_profile(profiles[0] if profiles else None, seconds=profile_seconds)
    return results


def print_capacity(results: list[dict[str, Any]], *, seconds: float, warmup: float) -> None:
    print(
        f"\n1. heartbeats per coordinator ({seconds:.0f} s per step, first {warmup:.0f} s "
        f"not measured; grpc.aio, heartbeat pool {HEARTBEAT_THREADS} threads), latency in ms:"
    )
    rows = []
    best = 0
    for r in results:
        lat, late = r["latency_ms"], r["send_lateness_ms"]
        failed = sum(n for k, n in r["errors"].items() if "warm-up" not in k)
        ok = lat["p99"] <= P99_TARGET_MS and not failed
        ok = ok and r["achieved_per_s"] >= 0.95 * r["target_per_s"]
        if ok:
            best = max(best, r["workers"])
        rows.append(
            [
                r["workers"],
                f"{r['achieved_per_s']:.0f}",
                f"{lat['p50']:.1f}",
                f"{lat['p90']:.1f}",
                f"{lat['p99']:.1f}",
                f"{lat['max']:.0f}",
                f"{late['p99']:.1f}",
                f"{failed}+{sum(r['errors'].values()) - failed}",
                r["skipped_busy"],
                f"{r['coordinator_cpu_percent']:.0f}%",
                f"{r['generator_cpu_percent']:.0f}%",
                "yes" if ok else "no",
            ]
        )
    print_table(
        [
            "workers",
            "hb/s",
            "p50",
            "p90",
            "p99",
            "max",
            "send late p99",
            "errors+warm-up",
            "skipped",
            "coord CPU",
            "gen CPU",
            "p99<=100",
        ],
        rows,
    )
    for r in results:
        if r["errors"]:
            print(f"  errors at {r['workers']} workers: {r['errors']}; e.g. {r['error_details']}")
    verdict = "PASS" if best >= WORKERS_TARGET else "MISS"
    print(
        f"  largest step sustained (p99 <= {P99_TARGET_MS:.0f} ms, no errors when measured, "
        f">= 95% of the rate): {best} workers; target >= {WORKERS_TARGET}: {verdict}"
    )
    sys.stdout.flush()


# -- 2. the workers API ------------------------------------------------------------------


def api_token(cluster: Cluster, *, username: str) -> str:
    """The user's token from `create_api_token`, else a DRF token made through `shell`."""
    result = cluster.manage("create_api_token", username, "--role", "viewer", timeout=120)
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.strip().splitlines()[-1].strip()
    code = (
        "from django.contrib.auth import get_user_model; "
        "from rest_framework.authtoken.models import Token; "
        f"u, _ = get_user_model().objects.get_or_create(username={username!r}); "
        "print(Token.objects.get_or_create(user=u)[0].key)"
    )
    result = cluster.manage("shell", "-c", code, timeout=120, check=True)
    return result.stdout.strip().splitlines()[-1].strip()


def start_web(cluster: Cluster) -> int:
    """start_all on free ports; returns the web port (cluster.port is its coordinator's)."""
    return cluster.start_main("start_all")


def time_requests(
    port: int, path: str, *, token: str, count: int
) -> tuple[list[float], int, int, Any]:
    """Sequential GETs on one keep-alive connection: (ms each, status, bytes, last body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    times: list[float] = []
    status, size, body = 0, 0, None
    try:
        for _ in range(count):
            t = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            data = response.read()
            times.append(1000 * (time.perf_counter() - t))
            status, size = response.status, len(data)
            if status != 200:
                body = data[:300].decode(errors="replace")
                break
        if status == 200:
            body = json.loads(data)
    finally:
        conn.close()
    return times, status, size, body


def measure_api(*, workers: int, requests: int, channels: int, hold: float) -> dict[str, Any]:
    with bench_cluster() as cluster:
        web_port = start_web(cluster)
        token = api_token(cluster, username="bench")
        with load_generator(
            cluster, steps=[workers], seconds=hold, warmup=1, channels=channels
        ) as gen:
            # Rows are flushed once a second by the coordinator's housekeeping loop.
            wait_for(
                lambda: (
                    cluster.query("SELECT COUNT(*) AS n FROM workers_worker")[0]["n"] >= workers
                    or gen.poll() is not None
                ),
                timeout=60,
                what=f"{workers} Worker rows",
            )
            time.sleep(2)  # a couple more flushes: every row fresh, the loop steady
            meter = CpuMeter({"start_all": cluster.procs["start_all"].pid})
            meter.start()
            results: dict[str, Any] = {"workers": workers}
            for label, path in (
                ("all (one page of 1,000)", "/api/v2/workers?limit=1000"),
                ("selector zone=z1", "/api/v2/workers?selector=zone%3Dz1&limit=1000"),
            ):
                times, status, size, body = time_requests(
                    web_port, path, token=token, count=requests
                )
                listed = len(body.get("workers", [])) if isinstance(body, dict) else None
                results[label] = {
                    "status": status,
                    "bytes": size,
                    "listed": listed,
                    "latency_ms": summarize(times),
                    "error": body if status != 200 else None,
                }
            results["start_all_cpu_percent"] = meter.read()["start_all"]
            results["heartbeats_running"] = gen.poll() is None
    return results


def print_api(result: dict[str, Any]) -> None:
    print(f"\n2. GET /api/v2/workers with {result['workers']} heartbeating workers (ms):")
    rows = []
    verdict = "NOT MEASURED"
    for label in ("all", "selector zone=z1"):
        r = result[label]
        lat = r["latency_ms"]
        if r["status"] != 200:
            rows.append([label, r["status"], "-", "-", "-", "-", str(r["error"])[:80]])
            continue
        rows.append(
            [
                label,
                r["status"],
                r["listed"],
                f"{r['bytes'] / 1024:.0f} KiB",
                f"{lat['p50']:.1f}",
                f"{lat['p99']:.1f}",
                f"n={lat['n']}",
            ]
        )
        if label == "all":
            verdict = "PASS" if lat["p50"] <= API_P50_TARGET_MS else "MISS"
    print_table(["request", "status", "workers", "size", "p50", "p99", ""], rows)
    print(
        f"  start_all CPU while requesting: {result['start_all_cpu_percent']:.0f}% of one core "
        f"(it also takes the {result['workers']} heartbeats/s)"
    )
    print(f"  target p50 <= {API_P50_TARGET_MS:.0f} ms: {verdict}")
    sys.stdout.flush()


# -- 3. the registry ---------------------------------------------------------------------


def measure_registry(*, files: int, repeats: int) -> dict[str, Any]:
    from controlplane.core import registry

    now = datetime.now(UTC)
    host = socket.gethostname()
    with tempfile.TemporaryDirectory(prefix="dagu-bench-registry-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        for i in range(files):
            registry.write_record(
                root,
                registry.WorkerRecord(
                    id=f"sim-{i:05d}",
                    host=host,
                    pid=os.getpid(),  # alive: cleanup keeps every file
                    labels={"bench": "registry", "zone": f"z{i % 4}"},
                    max_active_runs=10,
                    active_tasks=0,
                    status="active",
                    started_at=now,
                    last_heartbeat=now,
                ),
            )
        write_ms = 1000 * (time.perf_counter() - t)
        scans, cleanups = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            result = registry.scan(root, "worker")
            scans.append(1000 * (time.perf_counter() - t))
            assert len(result.entries) == files, (len(result.entries), result.skipped[:3])
        for _ in range(repeats):
            t = time.perf_counter()
            removed = registry.cleanup(root, now=datetime.now(UTC), stale_after=30, this_host=host)
            cleanups.append(1000 * (time.perf_counter() - t))
            assert not removed
        # And the worst case: every file stale, all removed in one pass.
        t = time.perf_counter()
        removed = registry.cleanup(
            root, now=datetime.now(UTC), stale_after=-1, this_host="elsewhere"
        )
        purge_ms = 1000 * (time.perf_counter() - t)
    return {
        "files": files,
        "write_all_ms": write_ms,
        "scan_ms": summarize(scans),
        "cleanup_keep_all_ms": summarize(cleanups),
        "cleanup_remove_all_ms": purge_ms,
        "removed": len(removed),
    }


def print_registry(result: dict[str, Any]) -> None:
    n = result["files"]
    scan, clean = result["scan_ms"], result["cleanup_keep_all_ms"]
    print(f"\n3. service registry with {n} worker files (ms):")
    print_table(
        ["operation", "p50", "p99", "max", "runs"],
        [
            [f"scan(root, 'worker'), {n} records", f"{scan['p50']:.1f}", f"{scan['p99']:.1f}",
             f"{scan['max']:.1f}", scan["n"]],
            [f"cleanup, all {n} fresh (kept)", f"{clean['p50']:.1f}", f"{clean['p99']:.1f}",
             f"{clean['max']:.1f}", clean["n"]],
            [f"cleanup, all {n} stale (removed {result['removed']})",
             f"{result['cleanup_remove_all_ms']:.1f}", "-", "-", 1],
            [f"write_record x {n} (atomic, fsync)", f"{result['write_all_ms']:.0f} total",
             "-", "-", 1],
        ],
    )  # fmt: skip
    sys.stdout.flush()


# -- main --------------------------------------------------------------------------------


def worker_steps(text: str) -> list[int]:
    """`--steps`: positive worker counts separated by commas."""
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        steps = []
    if not steps or min(steps) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected positive worker counts separated by commas, e.g. 250,500; got {text!r}"
        )
    return steps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=worker_steps, default="250,500,1000,1500,2000", help="workers per step"
    )
    parser.add_argument("--step-seconds", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured start of a step")
    parser.add_argument("--channels", type=int, default=8, help="gRPC channels of the generator")
    parser.add_argument("--api-workers", type=int, default=1000)
    parser.add_argument("--api-requests", type=int, default=50)
    parser.add_argument("--registry-files", type=int, default=1000)
    parser.add_argument("--registry-repeats", type=int, default=20)
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-registry", action="store_true")
    parser.add_argument(
        "--profile",
        type=float,
        default=0,
        metavar="SECONDS",
        help="sample the coordinator with py-spy (--gil) during the --profile-at step",
    )
    parser.add_argument("--profile-at", type=int, default=1000, metavar="WORKERS")
    parser.add_argument("--load", metavar="HOST:PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load:
        return load_main(args)
    install_exit_signals()
    print_machine()
    try:
        if not args.skip_capacity:
            steps = args.steps
            print(f"\n1. capacity: steps {steps}, generator with {args.channels} channels")
            results = measure_capacity(
                steps=steps,
                seconds=args.step_seconds,
                warmup=args.warmup,
                channels=args.channels,
                profile_at=args.profile_at,
                profile_seconds=args.profile,
            )
            print_capacity(results, seconds=args.step_seconds, warmup=args.warmup)
        if not args.skip_api:
            print_api(
                measure_api(
                    workers=args.api_workers,
                    requests=args.api_requests,
                    channels=args.channels,
                    hold=120.0,
                )
            )
        if not args.skip_registry:
            print_registry(
                measure_registry(files=args.registry_files, repeats=args.registry_repeats)
            )
    except (AssertionError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
