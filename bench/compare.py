"""Ours against Celery 5 + Redis, one after the other in one process tree (issue 11).

Runs `bench/dispatch.py --json` (latency one run at a time, then the backlog and live
throughput passes; ours' throughput is the live pass's steady rate) and
`bench/peers/celery_dispatch.py --json` with the same worker count, slots and run counts,
each as a child of this process, and puts their last JSON lines side by side. The peer runs
under bench/.venv-peers/bin/python when that venv exists (see bench/requirements-peers.txt),
else under this interpreter.

Usage: .venv/bin/python bench/compare.py [--rounds 1] [--runs 1000] [--latency-runs 200]
       [--database-url postgres://postgres@127.0.0.1:5432/NAME] [--json]
Prints a table (and with --json one JSON line last):
  {"ours": {...}, "celery": {...}, "throughput_ratio": ours/celery,
   "latency_ratio": ours p50 / celery p50}
Exits 2 when the peer cannot run (Celery not installed, Redis absent), 1 if a side failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from _common import PEERS_VENV, ROOT, install_exit_signals, print_table

FIGURES = ("throughput_runs_per_s", "latency_p50_ms", "latency_p99_ms")


def peer_python() -> str:
    local = PEERS_VENV / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def run_side(name: str, cmd: list[str]) -> tuple[int, dict[str, Any] | None]:
    """Run one side, echoing its output; returns its exit code and its last JSON line."""
    print(f"\n== {name}: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        sys.stdout.write("   " + line)
        if line.strip():
            last = line.strip()
    code = proc.wait()
    try:
        return code, json.loads(last) if code == 0 else None
    except json.JSONDecodeError:
        return 1, None


def side_args(args: argparse.Namespace) -> list[str]:
    return [
        "--workers", str(args.workers), "--max-active-runs", str(args.max_active_runs),
        "--runs", str(args.runs), "--latency-runs", str(args.latency_runs), "--json",
    ]  # fmt: skip


def one_round(args: argparse.Namespace) -> dict[str, Any] | int:
    common = side_args(args)
    ours_cmd = [sys.executable, str(ROOT / "bench" / "dispatch.py"), "--skip-backlog", *common]
    if args.database_url:
        ours_cmd += ["--database-url", args.database_url]
    peer_cmd = [peer_python(), str(ROOT / "bench" / "peers" / "celery_dispatch.py"), *common]
    # The peer first: it is the one that may be missing, and it is over in seconds.
    code, celery = run_side("celery", peer_cmd)
    if celery is None:
        return code if code == 2 else 1
    code, ours = run_side("ours", ours_cmd)
    if ours is None:
        return 1
    return {
        "ours": ours,
        "celery": celery,
        "throughput_ratio": ours["throughput_runs_per_s"] / celery["throughput_runs_per_s"],
        "latency_ratio": ours["latency_p50_ms"] / celery["latency_p50_ms"],
    }


def print_round(result: dict[str, Any]) -> None:
    ours, celery = result["ours"], result["celery"]
    print(f"\nours ({ours['database']}) vs Celery + Redis, {ours['workers']} workers x "
          f"{ours['slots']} slots, load average (1 min) {celery['loadavg_1m']} at the peer's "
          f"start, {ours['loadavg_1m_start']}-{ours['loadavg_1m_end']} during ours:")  # fmt: skip
    rows = [
        [name, f"{ours[name]:.1f}", f"{celery[name]:.1f}", f"{ours[name] / celery[name]:.2f}"]
        for name in FIGURES
    ]
    print_table(["figure", "ours", "celery", "ours/celery"], rows)
    print(
        f"  ours per run: coordinator CPU {ours['coordinator_cpu_ms_per_run']:.1f} ms, "
        f"SQL statements {ours['sql_statements_per_run']:.1f}; runs created by the "
        f"benchmark process {ours['create_runs_per_s_live']:.0f}/s while they run "
        f"({ours['create_runs_per_s_drained']:.0f}/s with the workers drained)",
    )
    budget = ours["cpu_budget_ms_per_run"]
    print(
        "  CPU of the whole machine per run (ms, both cores): ours busy "
        f"{budget['machine busy']:.2f} + idle {budget['machine idle']:.2f}, creator "
        f"{budget.get('creator (this process)', float('nan')):.2f}; Celery busy "
        f"{celery['machine_busy_ms_per_run']:.2f} + idle {celery['machine_idle_ms_per_run']:.2f}, "
        f"submitter {celery['creator_cpu_ms_per_run']:.2f}",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-active-runs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1, help="repeat both sides this often")
    parser.add_argument("--database-url", default="", help="ours on PostgreSQL (server URL)")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_exit_signals()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results = []
    for _ in range(args.rounds):
        result = one_round(args)
        if isinstance(result, int):
            print(f"compare: a side failed (exit {result}); see its output above", file=sys.stderr)
            return result
        print_round(result)
        results.append(result)
    if args.json:
        # One line: the last round (each round's line is in its table above).
        last = results[-1]
        slim = {
            side: {k: last[side][k] for k in (*FIGURES, "loadavg_1m_start", "loadavg_1m")
                   if k in last[side]}
            for side in ("ours", "celery")
        }  # fmt: skip
        slim["ours"].update(database=last["ours"]["database"])
        print(
            json.dumps(
                {
                    **slim,
                    "throughput_ratio": last["throughput_ratio"],
                    "latency_ratio": last["latency_ratio"],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
