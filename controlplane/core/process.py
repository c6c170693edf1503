"""Run one command or script step as a process: spawn, stream its output, wait, kill.

The scheduling around it (dependencies, retries, reports, sub-DAG calls) is in
`controlplane.core.execution`; this module knows a step's process and nothing about runs.
Each process gets a process group of its own, so a cancel or timeout reaches whatever it
started in the background too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.core.spec import Step, expand_vars

logger = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
OUTPUT_LIMIT = 1 << 20  # bytes of stdout kept for an `output:` variable
KILL_GRACE_SEC = 2.0  # SIGTERM -> SIGKILL
POLL_SEC = 0.05  # how often waits look at cancel and deadlines
# After a step's process exits, how long its readers may keep draining the pipes. A
# background grandchild can hold them open forever; its output after this is dropped.
READER_LINGER_SEC = 1.0


@dataclass(frozen=True)
class ProcessEnd:
    """How a step's process ended: `code` 0 is success; `error` says why not otherwise."""

    code: int | None = None  # None: it never started, or it was stopped
    output: str | None = None  # stdout, for an `output:` variable (None when not asked for)
    error: str = ""
    stopped: bool = False  # killed because the run aborted or the try timed out


def run_step_process(
    step: Step, env: dict[str, str], stop: TryStop, log: Callable[[str, bytes], None]
) -> ProcessEnd:
    """Run `step`'s command or script until it exits or `stop` fires; `log(stream, data)`
    receives its output as it comes."""
    cwd = None
    if step.dir:
        cwd = os.path.expanduser(expand_vars(step.dir, env))
        if not os.path.isdir(cwd):
            return ProcessEnd(error=f'working directory "{cwd}" does not exist')
    script_path = None
    try:
        if step.script is not None:
            script_path = _write_script(step.script)
            argv = _script_argv(step.script, script_path, interpreter=step.command)
        else:
            argv = ["/bin/sh", "-c", step.command or ""]
        capture = _Capture(OUTPUT_LIMIT) if step.output else None
        return _spawn_and_wait(argv, env=env, cwd=cwd, stop=stop, log=log, capture=capture)
    finally:
        if script_path:
            _remove_quietly(script_path)


def _spawn_and_wait(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    stop: TryStop,
    log: Callable[[str, bytes], None],
    capture: _Capture | None,
) -> ProcessEnd:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            env=env,
            cwd=cwd,
            start_new_session=True,  # own process group: kill reaches grandchildren
        )
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
        for fd in (out_r, err_r):
            os.close(fd)
        reason = getattr(exc, "strerror", None) or exc
        return ProcessEnd(error=f"cannot start {argv[0]}: {reason}")
    finally:
        os.close(out_w)
        os.close(err_w)

    def stdout(data: bytes) -> None:
        if capture is not None:
            capture.add(data)
        log("stdout", data)

    code = _follow(proc, {out_r: stdout, err_r: lambda data: log("stderr", data)}, stop)
    if stop.event.is_set():
        return ProcessEnd(stopped=True)
    output = capture.text() if capture else None
    if code == 0:
        return ProcessEnd(0, output)
    if code < 0:
        return ProcessEnd(code, output, f"killed by signal {_signal_name(-code)}")
    return ProcessEnd(code, output, f"exit status {code}")


class TryStop:
    """Set when the run aborts or this try passes its deadline."""

    def __init__(
        self,
        abort: threading.Event,
        timeout_sec: float | None,
        *,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.abort = abort
        self.deadline = deadline_after(timeout_sec)
        self.event = threading.Event()
        self.timed_out = False
        self.check = check  # called on each poll first: it may set `abort`

    def poll(self) -> bool:
        if self.event.is_set():
            return True
        if self.check is not None:
            self.check()
        if self.abort.is_set():
            self.event.set()
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out = True
            self.event.set()
        return self.event.is_set()

    def watch(self, done: threading.Event) -> None:
        while not done.wait(POLL_SEC):
            if self.poll():
                return


class _Capture:
    """The first `limit` bytes of a stream, for `output:`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            self.chunks.append(data[:room])
            self.size += min(room, len(data))

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace").rstrip("\r\n")


def _follow(
    proc: subprocess.Popen[bytes], sinks: dict[int, Callable[[bytes], None]], stop: TryStop
) -> int:
    """Forward the process's output to `sinks` (by pipe) as it comes, until it exits and
    its pipes end; on `stop`, end its group (`_Ending`). Returns its exit code and closes
    the pipes.

    All on the calling thread, in one poll over the pipes and a pidfd of the process (which
    wakes us the moment it exits; without one, the poll's timeout looks): two reader
    threads and a waiting one cost a `true` step 0.43 ms of the worker's CPU, three times
    a bare spawn's; this costs 0.19 ms (docs/benchmarks.md). A background process can hold
    the pipes open for ever: they are read for `READER_LINGER_SEC` after the exit, then
    dropped.
    """
    poller = select.poll()
    for fd in sinks:
        poller.register(fd, select.POLLIN)
    pidfd = _pidfd(proc.pid)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    code: int | None = None
    ending: _Ending | None = None
    drain_until: float | None = None
    try:
        while True:
            now = time.monotonic()
            if ending is None and stop.poll():
                ending = _Ending(proc.pid, now)
            ended = ending is None or ending.over(now, exited=code is not None)
            if code is None or not ended:
                wait = POLL_SEC
            else:
                if drain_until is None:
                    drain_until = now + READER_LINGER_SEC
                if not sinks or now >= drain_until:
                    return code
                wait = drain_until - now
            if code is None and pidfd is None and not sinks:
                # Nothing to poll on: wait for the exit itself (with the same timeout).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = proc.wait(timeout=wait)
                continue
            for fd, _ in poller.poll(max(0, int(wait * 1000))):
                if fd == pidfd:
                    poller.unregister(fd)
                elif not _forward(fd, sinks):
                    poller.unregister(fd)
                    os.close(fd)
                    del sinks[fd]
            if code is None:
                code = proc.poll()
    finally:
        for fd in sinks:
            os.close(fd)
        if pidfd is not None:
            os.close(pidfd)


def _forward(fd: int, sinks: dict[int, Callable[[bytes], None]]) -> bool:
    """Read one chunk of `fd` into its sink; False at end of file."""
    data = os.read(fd, READ_CHUNK)
    if data:
        sinks[fd](data)
    return bool(data)


def _pidfd(pid: int) -> int | None:
    """A pidfd of the (not yet reaped) process; None where unsupported."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or seccomp forbids it
        return None


class _Ending:
    """A stopped step's process group being ended: SIGTERM at once, SIGKILL for whatever is
    left of it after `KILL_GRACE_SEC`."""

    def __init__(self, pgid: int, now: float) -> None:
        self.pgid = pgid  # start_new_session made the step its own group leader
        self.kill_at = now + KILL_GRACE_SEC
        self._over = False
        _signal_group(pgid, signal.SIGTERM)

    def over(self, now: float, *, exited: bool) -> bool:
        """Whether the group is gone (`exited`: its leader has), or was sent SIGKILL."""
        if not self._over and exited and not _group_alive(self.pgid):
            self._over = True
        elif not self._over and now >= self.kill_at:
            logger.info(
                "process group %d still alive %.0f s after SIGTERM; sending SIGKILL",
                self.pgid,
                KILL_GRACE_SEC,
            )
            _signal_group(self.pgid, signal.SIGKILL)
            self._over = True
        return self._over


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is still in the group.

    Uses /proc where there is one: an orphaned zombie that nobody reaps (PID 1 in some
    containers does not) would otherwise keep the group "alive" for the whole grace.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            return True
    return False


def _write_script(script: str) -> str:
    fd, path = tempfile.mkstemp(prefix="dagu-step-", suffix=".script")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(script)
    return path


def _script_argv(script: str, path: str, *, interpreter: str | None) -> list[str]:
    if interpreter:
        return [*shlex.split(interpreter), path]
    if script.startswith("#!"):
        # Linux semantics: the interpreter plus at most one argument, the rest of the line.
        parts = script[2:].splitlines()[0].strip().split(None, 1)
        if parts:
            return [*parts, path]
    return ["/bin/sh", path]


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        logger.warning("could not remove step script %s", path)


def deadline_after(timeout_sec: float | None) -> float | None:
    return None if timeout_sec is None else time.monotonic() + timeout_sec


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
