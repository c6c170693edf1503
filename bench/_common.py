"""Shared pieces of the benchmarks: the machine, percentiles, CPU accounting, profiling,
and a real cluster (coordinator, workers, start_all) that is always cleaned up.

The cluster is `tests.procs.Cluster`: a temp data dir with its own SQLite file, ports picked
at run time, every process in its own process group. `bench_cluster` adds what a benchmark
run from a terminal needs on top: SIGTERM/SIGHUP end the run through the same `finally`
that Ctrl-C does, so no coordinator or worker outlives the script.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # The scripts run as `python bench/x.py`; the project (and tests.procs) live one level up.
    sys.path.insert(0, str(ROOT))

from tests.procs import Cluster, free_port, migrated_template, wait_for  # noqa: E402

__all__ = [
    "ROOT",
    "Cluster",
    "CpuMeter",
    "bench_cluster",
    "free_port",
    "install_exit_signals",
    "machine_info",
    "percentile",
    "print_machine",
    "print_table",
    "profile_process",
    "setup_django",
    "summarize",
    "wait_for",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the machine -------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict[str, str]:
    """Cores, memory, CPU model, OS, Python, SQLite and the libraries that matter here."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    os_name = next(
        (
            line.split("=", 1)[1].strip().strip('"')
            for line in _read("/etc/os-release").splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.system(),
    )
    versions = {}
    for dist in ("Django", "grpcio", "waitress", "djangorestframework"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "cpu": cpu_model,
        "os": f"{os_name}, kernel {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "libraries": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "load average (1/5/15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def print_machine(info: Mapping[str, str] | None = None) -> None:
    print("machine:")
    for key, value in (info or machine_info()).items():
        print(f"  {key}: {value}")
    sys.stdout.flush()


# -- numbers -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values) if values else float("nan"),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": sum(values) / len(values) if values else float("nan"),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


# -- CPU accounting ----------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), from /proc."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return 0.0
    # The command name may contain spaces; fields resume after its closing parenthesis.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU used by a set of processes over an interval, as a share of one core."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}

    def read(self) -> dict[str, float]:
        """Percent of one core per process since start() (200% = both cores of this box)."""
        elapsed = max(1e-9, time.monotonic() - self._t0)
        return {
            name: 100 * (process_cpu_seconds(pid) - self._start.get(name, 0.0)) / elapsed
            for name, pid in self.pids.items()
        }


# -- clean exits -------------------------------------------------------------------------


def install_exit_signals() -> None:
    """SIGTERM and SIGHUP end the script like Ctrl-C: through `finally`, which stops the
    cluster. Without this a `kill` of the benchmark would orphan its coordinator."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, leave)


@contextlib.contextmanager
def bench_cluster(
    *, keep: bool = False, extra_env: Mapping[str, str] | None = None
) -> Iterator[Cluster]:
    """A fresh cluster in a temp dir; every process group is stopped and the dir removed."""
    base = Path(tempfile.mkdtemp(prefix="dagu-bench-"))
    cluster: Cluster | None = None
    try:
        template = migrated_template(base / "template")
        cluster = Cluster(base / "home", template, extra_env=dict(extra_env or {}))
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        if keep:
            print(f"kept data dir {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def setup_django(cluster: Cluster) -> None:
    """Configure Django in this process against the cluster's data dir and database.

    The environment must be set before django.setup(): settings resolve the data dir (and
    so the SQLite file) at import time.
    """
    for key in ("DAGU_HOME", "DAGU_COORDINATOR_PORT", "DAGU_COORDINATOR_ADVERTISE"):
        os.environ[key] = cluster.env[key]
    os.environ.pop("DATABASE_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


# -- profiling ---------------------------------------------------------------------------


def py_spy() -> str | None:
    """py-spy next to this interpreter, or on the PATH; None when not installed."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_process(
    pid: int, *, seconds: float, out: Path, top: int = 25, project_only: bool = True
) -> list[tuple[str, float, float]] | None:
    """Sample `pid` with py-spy for `seconds`; return (function, inclusive %, self %) rows.

    Idle threads (waiting on a lock, a socket or a sleep) are not sampled, so the shares are
    of the time the process was actually busy. None when py-spy is not installed or fails.
    """
    tool = py_spy()
    if tool is None:
        return None
    result = subprocess.run(
        [
            tool,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if result.returncode != 0 or not out.exists():
        print(f"  py-spy failed: {result.stderr.strip().splitlines()[-1:] or '?'}")
        return None
    return summarize_stacks(out.read_text(), top=top, project_only=project_only)


def summarize_stacks(
    collapsed: str, *, top: int, project_only: bool
) -> list[tuple[str, float, float]]:
    """Aggregate py-spy's collapsed stacks into inclusive and self shares per function."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        for name in set(frames):
            inclusive[name] += count
        if frames:
            own[frames[-1]] += count
    if not total:
        return []
    keep: Callable[[str], bool] = (
        (lambda name: name.split(" ", 1)[0].startswith(_PROJECT_PREFIXES))
        if project_only
        else (lambda name: True)
    )
    rows = [
        (name, 100 * n / total, 100 * own.get(name, 0) / total)
        for name, n in inclusive.most_common()
        if keep(name)
    ]
    return rows[:top]


_PROJECT_PREFIXES = ("controlplane/", "dags/", "workers/", "django/", "grpc/", "sqlite3")


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)" or "function (file.py)".
    frame = frame.strip()
    if not frame or frame.startswith("process ") or frame.startswith("thread "):
        return ""
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("/site-packages/", str(ROOT) + "/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path} {func}"


def print_profile(rows: list[tuple[str, float, float]] | None, *, title: str) -> None:
    if rows is None:
        print(f"{title}: py-spy not available (pip install py-spy into .venv to profile)")
        return
    print(f"{title} (share of busy samples; inclusive / self):")
    for name, inc, own in rows:
        print(f"  {inc:5.1f}% {own:5.1f}%  {name}")
    sys.stdout.flush()


def dump_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
