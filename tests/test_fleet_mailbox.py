"""The fleet's mailboxes, as long polls use them on the coordinator's event loop.

A poll waits as a future (no thread); mail delivered from another thread (the dispatcher's)
wakes it, `close` releases every waiting poll at shutdown, and a cancelled wait leaves the
mail for the next poll.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

from controlplane.core.config import TimingConfig
from workers.presence import Fleet

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LONG = 30.0  # a wait that only mail, close or cancel can end within the test's bounds


def fleet() -> Fleet:
    return Fleet(timing=TimingConfig(), started_at=T0)


def test_mail_from_another_thread_wakes_the_waiting_poll():
    mailboxes = fleet()

    async def scenario() -> list[object]:
        waiting = asyncio.create_task(mailboxes.wait_for_mail("w1", max_items=2, timeout=LONG))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        sender = threading.Thread(
            target=lambda: [mailboxes.deliver("w1", n) for n in ("a", "b", "c")]
        )
        sender.start()
        sender.join()
        return await asyncio.wait_for(waiting, timeout=10)

    assert asyncio.run(scenario()) == ["a", "b"]
    assert mailboxes.pending_mail() == ["c"]


def test_mail_already_there_is_taken_at_once_and_an_empty_box_times_out():
    mailboxes = fleet()
    mailboxes.deliver("w1", "a")

    async def scenario() -> tuple[list[object], list[object]]:
        ready = await mailboxes.wait_for_mail("w1", max_items=5, timeout=LONG)
        empty = await mailboxes.wait_for_mail("w1", max_items=5, timeout=0.05)
        return ready, empty

    assert asyncio.run(scenario()) == (["a"], [])


def test_close_releases_every_waiting_poll_and_keeps_the_mail():
    mailboxes = fleet()

    async def scenario() -> list[list[object]]:
        waits = [
            asyncio.create_task(mailboxes.wait_for_mail(f"w{n}", max_items=1, timeout=LONG))
            for n in range(50)
        ]
        await asyncio.sleep(0.05)
        threading.Thread(target=mailboxes.close).start()
        return list(await asyncio.wait_for(asyncio.gather(*waits), timeout=10))

    assert asyncio.run(scenario()) == [[]] * 50
    mailboxes.deliver("w1", "kept")
    assert mailboxes.pending_mail() == ["kept"]


def test_a_cancelled_wait_leaves_the_mail_for_the_next_poll():
    mailboxes = fleet()

    async def scenario() -> list[object]:
        waiting = asyncio.create_task(mailboxes.wait_for_mail("w1", max_items=1, timeout=LONG))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        mailboxes.deliver("w1", "a")
        return await mailboxes.wait_for_mail("w1", max_items=1, timeout=LONG)

    assert asyncio.run(scenario()) == ["a"]
