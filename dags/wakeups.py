"""Wake-ups across coordinators: PostgreSQL LISTEN/NOTIFY on one channel.

A run queued through one coordinator, the API or a command must start as fast on a worker
connected to another coordinator. Whoever queues a run calls `runs_queued()` inside its
transaction; after the commit one NOTIFY goes out, and every coordinator's `listen` thread
sets its dispatcher's wake event. The payload is empty: a wake-up only says "look at the
queue", and PostgreSQL folds identical notifications of one transaction into one.

On SQLite there is one coordinator and this is a no-op (the Wake RPC and the dispatcher's
idle poll remain). A lost notification costs latency, never a run: dispatchers still poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from django.db import DatabaseError, connection, transaction

logger = logging.getLogger(__name__)

CHANNEL = "dagu_runs_queued"
RECONNECT_SECONDS = 2.0


def runs_queued() -> None:
    """Notify every coordinator once the current transaction commits (now if none is open)."""
    if connection.vendor == "postgresql":
        transaction.on_commit(_notify)


def _notify() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"NOTIFY {CHANNEL}")
    except DatabaseError as exc:
        logger.warning("cannot notify coordinators of queued runs: %s", exc)


def listen(*, stop: threading.Event, on_wake: Callable[[], None]) -> threading.Thread | None:
    """Start a thread that calls `on_wake` on every notification; None on SQLite.

    It holds a dedicated connection (LISTEN belongs to one session, which Django's pooled,
    periodically closed connections cannot keep) and reconnects after a database restart,
    waking once on every (re)connect for what was queued while it was not listening.
    """
    if connection.vendor != "postgresql":
        return None
    params = {**connection.get_connection_params(), "autocommit": True}

    def loop() -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(**params) as pg:
                    pg.execute(f"LISTEN {CHANNEL}")
                    on_wake()
                    while not stop.is_set():
                        for _ in pg.notifies(timeout=1.0):
                            on_wake()  # setting an Event: a burst costs next to nothing
            except psycopg.Error as exc:
                logger.warning("wake-up listener: %s; reconnecting", str(exc).strip() or exc)
                stop.wait(RECONNECT_SECONDS)

    thread = threading.Thread(target=loop, name="wakeups", daemon=True)
    thread.start()
    return thread
