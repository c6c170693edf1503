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

# The figures are for SQLite; the test harness would switch to PostgreSQL if this were set.
os.environ.pop("E2E_DATABASE_URL", None)

from tests.procs import Cluster, migrated_template, wait_for  # noqa: E402

__all__ = [
    "PEERS_VENV",
    "ROOT",
    "Cluster",
    "CpuBudget",
    "CpuMeter",
    "bench_cluster",
    "guarded",
    "install_exit_signals",
    "machine_info",
    "percentile",
    "print_machine",
    "print_table",
    "process_cpu_seconds",
    "record_profile",
    "setup_django",
    "sql_count_env",
    "sql_counts",
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
        "code": code_version(),
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "cpu": cpu_model,
        "os": f"{os_name}, kernel {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "libraries": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "load average (1/5/15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "speed check": f"{cpu_check_ms():.0f} ms for a fixed pure-Python loop (lower is faster)",
    }


def cpu_check_ms() -> float:
    """A fixed single-core workload, so runs on a shared, noisy machine can be compared."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i % 7
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def code_version() -> str:
    """The commit measured, and whether the work tree differed from it (figures depend on it)."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10
        )
        return result.stdout.rstrip("\n") if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    changed = [
        line[3:]
        for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
        if not line[3:].startswith(("bench/", "docs/", "tests/"))
    ]
    if changed:
        return f"{commit} + uncommitted changes in {', '.join(changed)}"
    return commit


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
        print(
            "  "
            + "  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths, strict=True))
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


# -- CPU accounting ----------------------------------------------------------------------


def _stat_cpu_seconds(pid: int, first: int) -> float:
    """Two adjacent tick fields of /proc/PID/stat (after the command name) as seconds."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return 0.0
    # The command name may contain spaces; fields resume after its closing parenthesis.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[first]) + int(fields[first + 1])) / CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), from /proc."""
    return _stat_cpu_seconds(pid, 11)


def process_children_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process's waited-for children (its step processes)."""
    return _stat_cpu_seconds(pid, 13)


def machine_cpu_ticks() -> dict[str, float]:
    """The whole machine's CPU seconds so far by kind (/proc/stat's first line)."""
    first = (_read("/proc/stat") or "cpu 0 0 0 0").splitlines()[0].split()[1:]
    kinds = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {k: int(v) / CLK_TCK for k, v in zip(kinds, first, strict=False)}


def all_processes_cpu() -> dict[int, tuple[str, float]]:
    """Every process's (command name, own CPU seconds), from /proc."""
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        text = _read(f"/proc/{entry}/stat")
        if not text or ")" not in text:
            continue
        head, tail = text.rsplit(")", 1)
        fields = tail.split()
        out[int(entry)] = (
            head.split("(", 1)[-1],
            (int(fields[11]) + int(fields[12])) / CLK_TCK,
        )
    return out


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, over all cores (/proc/stat)."""
    first = (_read("/proc/stat") or "cpu 0 0 0 0").splitlines()[0].split()[1:]
    ticks = [int(v) for v in first]
    # user nice system idle iowait irq softirq steal (guest time is inside user already).
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    busy = sum(ticks[:8]) - idle
    return busy / CLK_TCK, idle / CLK_TCK


class CpuBudget:
    """Where the machine's CPU went over an interval: each named process (itself, and the
    children it waited for, e.g. a worker's step processes), and the whole machine (busy and
    idle over every core), so per-run figures can be put next to each other."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, tuple[float, float]] = {}
        self._machine = (0.0, 0.0)
        self._t0 = 0.0

    def _sample(self) -> dict[str, tuple[float, float]]:
        return {
            name: (process_cpu_seconds(pid), process_children_cpu_seconds(pid))
            for name, pid in self.pids.items()
        }

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self._sample()
        self._machine = machine_cpu_seconds()
        self._kinds = machine_cpu_ticks()
        self._everyone = all_processes_cpu()

    def others(self, top: int = 6) -> dict[str, float]:
        """Since start(): the machine's CPU by kind (steal, softirq...) and the processes
        outside the named ones that used the most (by command name, summed), in seconds."""
        kinds = machine_cpu_ticks()
        out = {f"kind {k}": kinds[k] - self._kinds.get(k, 0.0) for k in kinds}
        named = set(self.pids.values())
        by_name: dict[str, float] = {}
        for pid, (comm, seconds) in all_processes_cpu().items():
            if pid in named:
                continue
            before = self._everyone.get(pid)
            # By pid only: a kernel worker renames itself after the work it does.
            used = seconds - (before[1] if before else 0.0)
            by_name[comm] = by_name.get(comm, 0.0) + used
        for comm, seconds in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]:
            out[f"process {comm}"] = seconds
        return out

    def read(self) -> dict[str, float]:
        """CPU seconds since start(): `NAME` and `NAME children` per process, `machine busy`,
        `machine idle`, `other` (busy not in any named process or its children), `wall`."""
        wall = time.monotonic() - self._t0
        now, machine = self._sample(), machine_cpu_seconds()
        out: dict[str, float] = {}
        for name, (own, kids) in now.items():
            own0, kids0 = self._start.get(name, (0.0, 0.0))
            out[name] = own - own0
            out[f"{name} children"] = kids - kids0
        named = sum(out.values())
        out["machine busy"] = machine[0] - self._machine[0]
        out["machine idle"] = machine[1] - self._machine[1]
        out["other"] = out["machine busy"] - named
        out["wall"] = wall
        return out


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
    # A shell starts background jobs with SIGINT ignored; a benchmark should still stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def guarded(body: Callable[[], int]) -> int:
    """A benchmark's exit code: a failed start or wait is one line and 1, Ctrl-C or SIGTERM
    130 (the clusters inside `body` are stopped by their own `finally`)."""
    try:
        return body()
    except (AssertionError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        return 130


# The log level of every process of ours, as the Celery peer's workers run (`-l WARNING`):
# both sides measured with the same logging. Until 2026-11-30 ours logged INFO (a few lines
# per run on the coordinator and each worker) while Celery logged warnings only.
# `BENCH_LOG_LEVEL=INFO` measures ours at the product's default level.
BENCH_LOG_LEVEL = os.environ.get("BENCH_LOG_LEVEL", "WARNING")


@contextlib.contextmanager
def bench_cluster(
    *,
    keep: bool = False,
    extra_env: Mapping[str, str] | None = None,
    database_url: str = "",
) -> Iterator[Cluster]:
    """A fresh cluster in a temp dir; every process group is stopped and the dir removed.

    With `database_url` (a PostgreSQL server URL) the cluster gets a fresh database on that
    server, created and dropped by tests.procs as in the PostgreSQL test lane.
    """
    base = Path(tempfile.mkdtemp(prefix="dagu-bench-"))
    cluster: Cluster | None = None
    try:
        if database_url:
            import tests.procs

            os.environ["E2E_DATABASE_URL"] = database_url
            tests.procs.PG_LANE = True  # read at Cluster() time; the import-time value was off
        template = migrated_template(base / "template")
        env = {"LOG_LEVEL": BENCH_LOG_LEVEL, **(extra_env or {})}
        cluster = Cluster(base / "home", template, extra_env=env)
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
    if cluster.pg_url:
        os.environ["DATABASE_URL"] = cluster.pg_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


# -- profiling ---------------------------------------------------------------------------


def py_spy() -> str | None:
    """py-spy next to this interpreter, in bench/.venv-peers, or on the PATH; None if absent."""
    for local in (Path(sys.executable).parent / "py-spy", PEERS_VENV / "bin" / "py-spy"):
        if local.exists():
            return str(local)
    return shutil.which("py-spy")


PEERS_VENV = ROOT / "bench" / ".venv-peers"


# -- SQL statements, counted in a child process (bench/hooks/sitecustomize.py) --------------


def sql_count_env(out_dir: Path, *, shapes: bool = False) -> dict[str, str]:
    """Environment that makes a child count its Django SQL statements into `out_dir`
    (and by shape, "UPDATE dags_dagrun", with `shapes`)."""
    hooks = str(ROOT / "bench" / "hooks")
    path = os.environ.get("PYTHONPATH", "")
    return {
        "PYTHONPATH": f"{hooks}{os.pathsep}{path}" if path else hooks,
        "DAGU_BENCH_SQL_COUNT_DIR": str(out_dir),
        "DAGU_BENCH_SQL_SHAPES": "1" if shapes else "",
    }


def sql_counts(out_dir: Path, pid: int) -> tuple[int, Counter[str]]:
    """Statements the process has run so far (published every 100 ms), in total and by
    shape; (0, empty) before its first."""
    try:
        data = json.loads(_read(str(out_dir / f"{pid}.sql")) or "{}")
    except json.JSONDecodeError:  # never half-written (renamed into place), but be safe
        data = {}
    return int(data.get("total", 0)), Counter(data.get("shapes", {}))


def record_profile(pid: int, *, seconds: float, out: Path, flags: Sequence[str]) -> str | None:
    """Sample `pid` with py-spy for `seconds` (collapsed stacks); None if py-spy is missing.

    `--gil` samples only the thread holding the GIL (where the Python CPU goes);
    `--idle --threads` samples every thread, waiting ones too (where the wall time goes).
    """
    tool = py_spy()
    if tool is None:
        return None
    duration = str(max(1, round(seconds)))
    result = subprocess.run(
        [tool, "record", "--pid", str(pid), "--duration", duration, "--rate", "250",
         "--format", "raw", "--nonblocking", "--output", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )  # fmt: skip
    if result.returncode != 0 or not out.exists():
        print(f"  py-spy failed: {result.stderr.strip().splitlines()[-1:] or '?'}")
        return None
    return out.read_text()


# What a coordinator thread is doing, told by a frame on its stack (first match wins).
COORDINATOR_ROLES = (
    ("Report (controlplane/rpc/servicer.py", "Report RPC"),
    ("Poll (controlplane/rpc/servicer.py", "Poll RPC"),
    ("Heartbeat (controlplane/rpc/servicer.py", "Heartbeat RPC"),
    ("Wake (controlplane/rpc/servicer.py", "Wake RPC"),
    ("dispatch_step (controlplane/coordinator.py", "dispatch loop"),
    ("housekeeping_step (controlplane/coordinator.py", "housekeeping loop"),
    ("registry_step (controlplane/coordinator.py", "registry loop"),
    ("_serve (grpc/_server.py", "gRPC server loop"),
    ("_unary_response_in_pool (grpc/_server.py", "gRPC call plumbing"),
    ("(waitress/", "web server"),
)
_PROJECT_DIRS = ("(controlplane/", "(dags/", "(workers/")


_LOOP_THREADS = {"dispatch": "dispatch loop", "housekeeping": "housekeeping loop"}


def _stacks(collapsed: str) -> Iterator[tuple[str, list[str], int]]:
    """(thread name or "", frames, count) per collapsed line."""
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            thread = ""
            if frames and frames[0].startswith("thread ("):
                # --threads puts "thread (tid): name" first.
                thread = frames[0].partition(": ")[2].strip('"')
                frames = frames[1:]
            if frames:  # a thread caught with no Python frame (starting or exiting)
                yield thread, frames, int(count)


def _role(thread: str, frames: list[str]) -> str:
    # A loop thread waiting for its next round has no step function on its stack: its
    # name still says whose idle time it is.
    if thread in _LOOP_THREADS:
        return _LOOP_THREADS[thread]
    stack = ";".join(frames)
    return next((name for key, name in COORDINATOR_ROLES if key in stack), "other")


def _project_path(frames: list[str]) -> str:
    """The two innermost project frames: which of our functions the sample is under."""
    ours = [f.split(" (", 1)[0] for f in frames if any(d in f for d in _PROJECT_DIRS)]
    return " > ".join(ours[-2:]) or frames[-1].split(" (", 1)[0]


def _wait_kind(frames: list[str]) -> str:
    """What a sampled thread was doing at the leaf, in the terms the docs use."""
    leaf = frames[-1]
    func = leaf.split(" (", 1)[0]
    if any("_start_transaction_under_autocommit" in f for f in frames[-3:]):
        # SQLite's busy handler inside BEGIN IMMEDIATE, or a process-wide writer queue
        # taken just before it: either way, waiting to write.
        return "waiting for the write lock (BEGIN IMMEDIATE)"
    if func in ("_commit", "commit"):
        return "COMMIT"
    if "sqlite3/base.py" in leaf and func == "execute":
        return "in SQLite (statement, incl. lock waits of autocommit writes)"
    if leaf.startswith(("wait (threading.py", "wait_for (threading.py")):
        return "idle (waiting for work)"
    return "Python (ORM, gRPC, our code)"


def role_breakdown(
    collapsed: str, *, detail: Callable[[list[str]], str], top: int = 6
) -> list[tuple[str, int, list[tuple[str, int]]]]:
    """Samples per coordinator role, each with its `top` details: (role, n, [(detail, n)])."""
    roles: Counter[str] = Counter()
    details: dict[str, Counter[str]] = {}
    for thread, frames, count in _stacks(collapsed):
        role = _role(thread, frames)
        roles[role] += count
        details.setdefault(role, Counter())[detail(frames)] += count
    return [(role, n, details[role].most_common(top)) for role, n in roles.most_common()]


def print_cpu_profile(collapsed: str | None, *, seconds: float) -> None:
    """Where the coordinator's Python CPU goes (py-spy --gil)."""
    if collapsed is None:
        print("  py-spy not available (pip install py-spy into .venv to profile)")
        return
    rows = role_breakdown(collapsed, detail=_project_path)
    total = sum(n for _, n, _ in rows) or 1
    held = 100 * total / (250 * seconds)
    print(f"  CPU: the GIL was held {held:.0f}% of the time; shares of those samples:")
    for role, n, top in rows:
        if 100 * n / total < 0.5:
            continue
        print(f"    {100 * n / total:5.1f}%  {role}")
        for name, m in top[:4]:
            print(f"           {100 * m / total:5.1f}%  {name}")
    layers: Counter[str] = Counter()
    for _, frames, count in _stacks(collapsed):
        layers[_layer(frames[-1])] += count
    print("  CPU by layer (the innermost Python frame of each sample: its self time):")
    for layer, n in layers.most_common(12):
        print(f"    {100 * n / total:5.1f}%  {layer}")
    sys.stdout.flush()


# Where a leaf frame's file lives -> the layer its time is charged to (first match wins).
_LAYERS = (
    (("django/db/backends/sqlite3/", "(sqlite3/", "controlplane/sqlite/"),
     "SQLite: statements, commits, lock waits"),
    (("django/db/backends/postgresql/", "(psycopg"), "PostgreSQL driver: statements, commits"),
    (("django/db/models/sql/",), "ORM: building SQL (compiler, query)"),
    (("django/db/models/",), "ORM: querysets, model instances, fields"),
    (("django/db/", "django/utils/", "django/dispatch/"),
     "Django: cursor wrappers, transactions, signals"),
    (("google/protobuf/", "(grpc/", "grpc_"), "gRPC and protobuf"),
    (("(controlplane/", "(dags/", "(workers/"), "our code (self time)"),
    (("(threading.py", "(queue.py", "(concurrent/"), "thread synchronisation"),
    (("(logging/",), "logging"),
    (("(json/", "(datetime", "(_strptime", "(uuid"), "json, datetime, uuid"),
)  # fmt: skip


def _layer(leaf: str) -> str:
    return next(
        (name for keys, name in _LAYERS if any(k in leaf for k in keys)),
        "other: " + leaf.split("(", 1)[-1].split(":", 1)[0],
    )


def print_wall_profile(collapsed: str | None, *, roles: Sequence[str], seconds: float) -> None:
    """Where the wall time of some coordinator threads goes (py-spy --idle --threads)."""
    if collapsed is None:
        print("  py-spy not available (pip install py-spy into .venv to profile)")
        return
    per_thread = 250 * seconds
    for role, n, top in role_breakdown(collapsed, detail=_wait_kind):
        if role not in roles:
            continue
        print(f"  wall time of {role} ({n / per_thread:.1f} threads on average):")
        for kind, m in top:
            print(f"    {100 * m / n:5.1f}%  {kind}")
    sys.stdout.flush()
