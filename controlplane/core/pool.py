"""Daemon threads reused from one short job to the next.

A worker starts several threads per run (the run's scheduler, each step). Starting and
ending a thread costs ~140 us of CPU on the benchmark machine (docs/benchmarks.md), several
times what a single-step `true` run's own Python costs elsewhere; handing a job to a thread
that just finished one costs a few microseconds.

Unlike `concurrent.futures.ThreadPoolExecutor` there is no bound and no queue: a job that
finds no idle thread gets a new one at once, so a job never waits for another to finish
(steps may wait on each other), and the threads are daemons, so a stuck step never holds
up the interpreter's exit. A thread idle for `IDLE_SECONDS` ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

IDLE_SECONDS = 30.0

_lock = threading.Lock()
_idle: list[_Runner] = []  # last in, first out: the warmest thread is reused first


class _Runner:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], object], str]] = queue.SimpleQueue()

    def loop(self) -> None:
        while True:
            try:
                item = self.jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with _lock:
                    if self in _idle:
                        _idle.remove(self)
                        return
                continue  # taken off the idle list just now: its job is on the way
            _run(*item)
            del item  # an idle thread keeps nothing of its last job alive
            with _lock:
                _idle.append(self)


def _run(job: Callable[[], object], name: str) -> None:
    thread = threading.current_thread()
    thread.name = name
    try:
        job()
    except Exception:  # a job's own error must not end a thread others count on
        logger.exception("unhandled error in thread %s", name)
    thread.name = "idle"


def start(job: Callable[[], object], *, name: str) -> None:
    """Run `job` on a daemon thread now: an idle one if there is one, else a new one."""
    with _lock:
        runner = _idle.pop() if _idle else None
    if runner is None:
        runner = _Runner()
        runner.jobs.put((job, name))
        threading.Thread(target=runner.loop, name=name, daemon=True).start()
    else:
        runner.jobs.put((job, name))


def idle_threads() -> int:
    """How many threads wait for a job (for tests)."""
    with _lock:
        return len(_idle)
