"""The one shape of every background loop: call a one-step function, sleep on an Event.

Each round closes stale database connections first, so a loop survives a restarted database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import close_old_connections, connection

from controlplane.core.spec import DagSpecError

logger = logging.getLogger(__name__)


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
        while not stop.is_set():
            # Cleared before the step, never after the pause: a wake-up that arrives while
            # the step runs (work it may have missed) ends the next pause at once.
            if wake is not None:
                wake.clear()
            close_old_connections()
            try:
                step()
            except DagSpecError as exc:
                logger.error("%s: %s", name, exc)
            except Exception:
                logger.exception("%s step failed; retrying", name)
            (wake or stop).wait(interval)
        connection.close()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
