"""Run one command or script step as a process: spawn, stream its output, wait, kill.

The scheduling around it (dependencies, retries, reports, sub-DAG calls) is in
`controlplane.core.execution`; this module knows a step's process and nothing about runs.
Each process gets a process group of its own, so a cancel or timeout reaches whatever it
started in the background too.
"""

from __future__ import annotations

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

from controlplane.core import pool
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
        return _spawn_and_wait(
            argv, env=env, cwd=cwd, stop=stop, log=log, capture=capture, name=step.name
        )
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
    name: str,
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

    readers = [
        _PipeReader(out_r, stdout, name=f"{name}-out"),
        _PipeReader(err_r, lambda data: log("stderr", data), name=f"{name}-err"),
    ]
    for reader in readers:
        reader.start()
    code = _wait_or_kill(proc, stop)
    linger_until = time.monotonic() + READER_LINGER_SEC
    for reader in readers:
        reader.finish(until=linger_until)
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

    def __init__(self, abort: threading.Event, timeout_sec: float | None) -> None:
        self.abort = abort
        self.deadline = deadline_after(timeout_sec)
        self.event = threading.Event()
        self.timed_out = False

    def poll(self) -> bool:
        if self.event.is_set():
            return True
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


class _PipeReader:
    """Forwards a pipe to `sink` chunk by chunk while the step runs; owns and closes `fd`.

    Runs on a reused thread (`controlplane.core.pool`): a fast step's two readers would
    otherwise cost two thread starts, more CPU than the rest of the step's Python."""

    def __init__(self, fd: int, sink: Callable[[bytes], None], *, name: str) -> None:
        self.fd = fd
        self.sink = sink
        self.name = name
        self.halt = threading.Event()
        self.done = threading.Event()
        # poll, not select: a busy main instance can hold more than FD_SETSIZE descriptors.
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def start(self) -> None:
        pool.start(self.run, name=self.name)

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                if not self._read_once(timeout_ms=100):
                    return
            # Take what is already buffered, but bounded: a chatty background process
            # could otherwise keep this loop going forever.
            for _ in range(16):
                if not self._read_once(timeout_ms=0):
                    break
        finally:
            os.close(self.fd)
            self.done.set()

    def _read_once(self, *, timeout_ms: int) -> bool:
        """False at end of file, or when nothing arrives within a zero timeout."""
        if not self.poller.poll(timeout_ms):
            return timeout_ms > 0
        data = os.read(self.fd, READ_CHUNK)
        if not data:
            return False
        self.sink(data)
        return True

    def finish(self, *, until: float) -> None:
        """Wait for end of file until the monotonic time `until`, then stop reading."""
        if not self.done.wait(max(0.0, until - time.monotonic())):
            # A background process still holds the pipe: stop waiting for its end.
            self.halt.set()
            self.done.wait()


def _wait_or_kill(proc: subprocess.Popen[bytes], stop: TryStop) -> int:
    # Popen.wait(timeout) sleeps in growing steps (up to POLL_SEC) between checks, which
    # can double a short step's time; a pidfd wakes us the moment the process exits.
    exited = _exit_poller(proc.pid)
    try:
        while True:
            if exited is not None:
                exited[1].poll(int(POLL_SEC * 1000))
                code = proc.poll()
                if code is not None:
                    return code
            else:
                try:
                    return proc.wait(timeout=POLL_SEC)
                except subprocess.TimeoutExpired:
                    pass
            if stop.poll():
                _kill_group(proc)
                return proc.wait()
    finally:
        if exited is not None:
            os.close(exited[0])


def _exit_poller(pid: int) -> tuple[int, select.poll] | None:
    """A pidfd of the (not yet reaped) process and a poller on it; None where unsupported."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or seccomp forbids it
        return None
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return fd, poller


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the step's process group; SIGKILL whatever is left after the grace."""
    pgid = proc.pid  # start_new_session made the step its own group leader
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_SEC
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(POLL_SEC)
    logger.info(
        "process group %d still alive %.0f s after SIGTERM; sending SIGKILL", pgid, KILL_GRACE_SEC
    )
    _signal_group(pgid, signal.SIGKILL)


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
