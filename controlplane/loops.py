"""The one shape of every background loop: call a one-step function, sleep on an Event.

A round after a failed step, and at least one round a second, closes stale database
connections first, so a loop survives a restarted database. Not every round: with
CONN_HEALTH_CHECKS (PostgreSQL) each check costs a `SELECT 1` round trip before the step's
first query, which the dispatch loop would pay on every wake-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.db import close_old_connections, connection

from controlplane.core.spec import DagSpecError

logger = logging.getLogger(__name__)

CONNECTION_CHECK_SECONDS = 1.0


def run_loop(
    name: str,
    step: Callable[[], object],
    *,
    stop: threading.Event,
    interval: float,
    wake: threading.Event | None = None,
) -> threading.Thread:
    """Start a thread that calls `step` until `stop` is set, pausing `interval` between calls.

    With a `wake` event the pause ends early when it is set. A failing step is logged and
    retried on the next round: one bad row must not stop the coordinator.
    """

    def loop() -> None:
        checked_at, failed = float("-inf"), False
        while not stop.is_set():
            # Cleared before the step, never after the pause: a wake-up that arrives while
            # the step runs (work it may have missed) ends the next pause at once.
            if wake is not None:
                wake.clear()
            if failed or time.monotonic() - checked_at >= CONNECTION_CHECK_SECONDS:
                close_old_connections()
                checked_at = time.monotonic()
            failed = False
            try:
                step()
            except DagSpecError as exc:
                logger.error("%s: %s", name, exc)
            except Exception:
                failed = True
                logger.exception("%s step failed; retrying", name)
            (wake or stop).wait(interval)
        connection.close()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
