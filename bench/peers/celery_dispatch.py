"""The dispatch benchmark's workload on Celery 5 + Redis, the peer of issue 11.

Same workload as bench/dispatch.py: single-step tasks whose step spawns a process, routed to
one queue, served by N prefork worker nodes (default 4) of S processes each (default 10: the
same worker count and slots as ours). Redis on 127.0.0.1:6379 is the broker; finished tasks
push [submitted, started, finished] (wall-clock seconds) onto a Redis list of this run.

1. Latency, one task at a time: submitted (just before `apply_async`) -> the step's own
   process ran. As in ours the step is `sh -c 'date +%s.%N'` and its output is the start
   stamp, so both sides are measured the same way.
2. Throughput: N tasks spawning `true` are submitted as fast as this process can while the
   workers execute them (ours' "live" pass); rate from the first submit to the last finish,
   and the steady rate over the 10th-90th percentile of finish times.

Needs celery[redis] (bench/requirements-peers.txt, not a project dependency):
    python3 -m venv bench/.venv-peers
    bench/.venv-peers/bin/pip install -r bench/requirements-peers.txt
    bench/.venv-peers/bin/python bench/peers/celery_dispatch.py [--json]
Exits 2 with one line when celery or Redis is missing; prints one JSON line last with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/, for _common's numbers

from _common import (  # noqa: E402
    install_exit_signals,
    machine_cpu_seconds,
    percentile,
    print_table,
    process_cpu_seconds,
    summarize,
)

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
INSTALL = (
    "python3 -m venv bench/.venv-peers && "
    "bench/.venv-peers/bin/pip install -r bench/requirements-peers.txt"
)

try:
    import celery
    import redis
    from celery import Celery
except ImportError as exc:
    if __name__ == "__main__":
        print(
            f"celery_dispatch: {exc.name} is not installed here ({sys.executable}); "
            f"install the peer with: {INSTALL}",
            file=sys.stderr,
        )
        sys.exit(2)
    raise

app = Celery("bench_peer", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)
_results: redis.Redis | None = None


@app.task(name="bench.spawn")
def spawn(key: str, submitted: float, stamp: bool) -> None:
    """The step: spawn a process, then record when it ran and when the task finished."""
    global _results
    if stamp:
        out = subprocess.run(["sh", "-c", "date +%s.%N"], capture_output=True, text=True)
        started = float(out.stdout)
    else:
        started = time.time()
        subprocess.run(["true"], check=False)
    if _results is None:
        _results = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    _results.rpush(key, json.dumps([submitted, started, time.time()]))


# -- the cluster -------------------------------------------------------------------------


def redis_reachable() -> str:
    """Empty when Redis answers PING, else why not."""
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return str(exc)
    return ""


def start_workers(queue: str, *, count: int, slots: int, logs: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONUNBUFFERED": "1"}
    procs = []
    for i in range(count):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_dispatch", "worker",
                 "-Q", queue, "-P", "prefork", "-c", str(slots), "-n", f"{queue}-{i + 1}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat",
                 "-l", "WARNING"],
                cwd=HERE,
                env=env,
                stdout=open(logs / f"celery-{i + 1}.log", "ab"),  # noqa: SIM115 - the child owns it
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )  # fmt: skip
    return procs


def wait_ready(queue: str, procs: list[subprocess.Popen], *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a celery worker exited during start-up")
        replies = app.control.ping(timeout=0.5) or []
        mine = [name for reply in replies for name in reply if name.startswith(queue)]
        if len(mine) >= len(procs):
            return
    raise RuntimeError(f"celery workers not ready after {timeout:.0f}s")


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


# -- measurements ------------------------------------------------------------------------


def measure_latency(
    queue: str, db: redis.Redis, *, runs: int, warmup: int, gap: float
) -> dict[str, Any]:
    key = f"{queue}:latency"
    latencies = []
    for i in range(warmup + runs):
        submitted = time.time()
        spawn.apply_async(args=(key, submitted, True), queue=queue)
        popped = db.blpop([key], timeout=30)
        if popped is None:
            raise RuntimeError("a latency task did not finish within 30 s")
        sub, started, _ = json.loads(popped[1])
        if i >= warmup:
            latencies.append(1000 * (started - sub))
        time.sleep(gap)
    return summarize(latencies)


def measure_throughput(queue: str, db: redis.Redis, *, runs: int) -> dict[str, Any]:
    key = f"{queue}:throughput"
    busy0, idle0 = machine_cpu_seconds()
    own0 = process_cpu_seconds(os.getpid())
    t0 = time.time()
    for _ in range(runs):
        spawn.apply_async(args=(key, time.time(), False), queue=queue)
    create_seconds = time.time() - t0
    producer = process_cpu_seconds(os.getpid()) - own0
    deadline = time.monotonic() + max(120.0, runs / 5)
    while db.llen(key) < runs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {db.llen(key)} of {runs} tasks finished in time")
        time.sleep(0.05)
    busy, idle = machine_cpu_seconds()
    rows = [json.loads(x) for x in db.lrange(key, 0, -1)]
    db.delete(key)
    finishes = sorted(f for _, _, f in rows)
    t10, t90 = percentile(finishes, 10), percentile(finishes, 90)
    return {
        "runs": runs,
        "create_seconds": create_seconds,
        "overall_runs_per_s": runs / (finishes[-1] - t0),
        "steady_runs_per_s": 0.8 * runs / (t90 - t10) if t90 > t10 else float("nan"),
        "start_latency_ms": summarize([1000 * (s - sub) for sub, s, _ in rows]),
        # The same CPU budget ours prints: the whole machine over the pass (busy, idle),
        # and the submitting process, per task; the machine busy figure is what the
        # workers, Redis and the steps cost together.
        "machine_busy_ms_per_run": 1000 * (busy - busy0) / runs,
        "machine_idle_ms_per_run": 1000 * (idle - idle0) / runs,
        "creator_cpu_ms_per_run": 1000 * producer / runs,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    queue = f"bench-dispatch-{uuid.uuid4().hex[:8]}"
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / queue
    logs.mkdir(parents=True)
    db = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    procs = start_workers(queue, count=args.workers, slots=args.max_active_runs, logs=logs)
    try:
        wait_ready(queue, procs)
        load = os.getloadavg()[0]
        latency = measure_latency(
            queue, db, runs=args.latency_runs, warmup=args.latency_warmup, gap=args.latency_gap
        )
        throughput = measure_throughput(queue, db, runs=args.runs)
        shutil.rmtree(logs, ignore_errors=True)  # kept only when something went wrong
    finally:
        stop_workers(procs)
        db.delete(queue, f"{queue}:latency", f"{queue}:throughput")
    return {
        "throughput_runs_per_s": throughput["steady_runs_per_s"],
        "throughput_overall_runs_per_s": throughput["overall_runs_per_s"],
        "latency_p50_ms": latency["p50"],
        "latency_p99_ms": latency["p99"],
        "latency_runs": latency["n"],
        "runs": throughput["runs"],
        "under_load_start_p50_ms": throughput["start_latency_ms"]["p50"],
        "machine_busy_ms_per_run": throughput["machine_busy_ms_per_run"],
        "machine_idle_ms_per_run": throughput["machine_idle_ms_per_run"],
        "creator_cpu_ms_per_run": throughput["creator_cpu_ms_per_run"],
        "workers": args.workers,
        "slots": args.max_active_runs,
        "loadavg_1m": round(load, 2),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="prefork worker nodes")
    parser.add_argument("--max-active-runs", type=int, default=10, help="processes per node")
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--latency-warmup", type=int, default=10)
    parser.add_argument("--latency-gap", type=float, default=0.02)
    parser.add_argument("--runs", type=int, default=1000, help="tasks in the throughput pass")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = redis_reachable()
    if why:
        print(
            f"celery_dispatch: Redis is not reachable at {REDIS_HOST}:{REDIS_PORT} ({why})",
            file=sys.stderr,
        )
        return 2
    install_exit_signals()
    try:
        result = run(args)
    except RuntimeError as exc:
        print(f"celery_dispatch: {exc}", file=sys.stderr)
        return 1
    print(
        f"celery {celery.__version__} + Redis: {args.workers} prefork "
        f"nodes x {args.max_active_runs} processes, load average {result['loadavg_1m']}"
    )
    print_table(
        ["figure", "value"],
        [
            ["latency p50 (ms)", f"{result['latency_p50_ms']:.1f}"],
            ["latency p99 (ms)", f"{result['latency_p99_ms']:.1f}"],
            ["throughput steady (tasks/s)", f"{result['throughput_runs_per_s']:.1f}"],
            ["throughput overall (tasks/s)", f"{result['throughput_overall_runs_per_s']:.1f}"],
            ["machine busy per task (ms)", f"{result['machine_busy_ms_per_run']:.2f}"],
            ["submitter CPU per task (ms)", f"{result['creator_cpu_ms_per_run']:.2f}"],
        ],
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
