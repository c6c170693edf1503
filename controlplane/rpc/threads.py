"""Blocking work of an RPC (Django, the database) off the coordinator's event loop.

The coordinator serves gRPC on one asyncio loop (`controlplane.rpc.server`); a call that
waits (a long Poll) costs no thread there. What blocks, the ORM above all, runs in a bounded
thread pool through `call_blocking`, with a `BlockingContext` that lets the synchronous
servicer code keep calling `context.abort(...)` as it would on a synchronous server.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, NoReturn, TypeVar

import grpc

T = TypeVar("T")


class Aborted(Exception):
    """`BlockingContext.abort` in the pool thread; the loop ends the call with it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code, self.details = code, details


class BlockingContext:
    """A grpc.aio call context as synchronous servicer code uses it.

    `abort` raises (as the synchronous server's does) and the loop side turns that into the
    real abort; the other methods used here (auth_context, peer, invocation_metadata) only
    read and are passed through.
    """

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Aborted(code, details)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def in_thread(executor: Executor, fn: Callable[[], T]) -> T:
    """fn() in the pool; the call's context variables (its principal) go along."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, contextvars.copy_context().run, fn)


async def call_blocking(
    executor: Executor,
    context: grpc.aio.ServicerContext,
    fn: Callable[[BlockingContext], T],
) -> T:
    """fn(blocking context) in the pool; an abort there ends the call with its status."""
    try:
        return await in_thread(executor, lambda: fn(BlockingContext(context)))
    except Aborted as exc:
        await context.abort(exc.code, exc.details)
        raise  # not reached: abort raises
