"""The gRPC edge: convert each request, check the caller's rights, call the coordinator.

`controlplane.rpc.auth.AuthInterceptor` has authenticated the caller before any method here
runs; `controlplane.rights` decides what that caller may do with its request.

Built on djangogrpcframework's `Service.as_servicer`, whose request signals give every call
clean database connections, as Django's request cycle does for HTTP. The server is grpc.aio:
the synchronous methods run in a pool thread (`controlplane.rpc.auth`), and Poll is async so
that a waiting poll holds no thread (`coordinator_servicer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TypeVar

import grpc
import grpc.aio
from django_grpc_framework.services import Service
from django_grpc_framework.signals import grpc_request_finished, grpc_request_started

from controlplane.coordinator import Coordinator
from controlplane.core.clock import utcnow
from controlplane.core.health import OFFLINE
from controlplane.core.labels import LabelError
from controlplane.core.rpc.events import event_from_pb, ms
from controlplane.core.rpc.v1 import coordinator_pb2 as pb
from controlplane.core.spec import DagSpecError
from controlplane.rights import (
    Denied,
    check_child_call,
    check_in_tree,
    check_report_sequence,
    own_running,
)
from controlplane.rpc import convert
from controlplane.rpc.auth import current_principal
from controlplane.rpc.threads import Aborted, BlockingContext, call_blocking, in_thread
from dags.runs import RunError
from workers.credentials import CredentialError, Principal
from workers.presence import Identity

T = TypeVar("T")

# Idle workers whose identity the loop keeps (see coordinator_servicer); past that many
# distinct ids it starts over.
KNOWN_IDENTITIES = 100_000
# The replies to an idle heartbeat: the same message each time (only ever serialized).
CARRY_ON = pb.HeartbeatResponse()
DRAINING = pb.HeartbeatResponse(draining=True)
WOKEN = pb.WakeResponse()


class CoordinatorService(Service):
    coordinator: Coordinator | None = None
    executor: Executor | None = None  # the pool for Poll's database part

    @property
    def core(self) -> Coordinator:
        assert self.coordinator is not None
        return self.coordinator

    @property
    def db(self) -> Executor:
        assert self.executor is not None
        return self.executor

    async def Poll(
        self, request: pb.PollRequest, context: grpc.aio.ServicerContext
    ) -> pb.PollResponse:
        """The long poll: it waits on the event loop, and costs a thread only to build tasks.

        Served by `coordinator_servicer`, not `as_servicer` (whose wrapper is synchronous);
        the database part is wrapped in the same request signals here.
        """
        try:
            who = _identity(request.worker, BlockingContext(context))
            tasks = await self.core.poll(
                who,
                free_slots=request.free_slots,
                wait=request.wait_ms / 1000,
                in_thread=lambda build: in_thread(self.db, _in_request(build, request, context)),
            )
        except Aborted as exc:
            await context.abort(exc.code, exc.details)
        except (Denied, CredentialError) as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return pb.PollResponse(tasks=[convert.task_to_pb(t) for t in tasks])

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatResponse:
        who = _identity(request.worker, context)
        running = own_running(who.id, convert.running_from_pb(list(request.running)))
        cancel, draining = _allowed(
            context,
            lambda: self.core.heartbeat(who, running=running, stopping=request.stopping),
        )
        return pb.HeartbeatResponse(cancel_attempt_tokens=cancel, draining=draining)

    def Report(self, request: pb.ReportRequest, context: grpc.ServicerContext) -> pb.ReportResponse:
        _worker(request.worker_id, context)
        events = [event_from_pb(e) for e in request.events]
        _allowed(context, lambda: check_report_sequence(events))
        # Whose attempts they are is checked in the query that applies them.
        result, tasks = _allowed(
            context,
            lambda: self.core.report_and_claim(
                events, worker_id=request.worker_id, want=request.want_tasks
            ),
        )
        return pb.ReportResponse(
            applied=result.applied,
            rejected_attempt_tokens=sorted(result.rejected_tokens),
            tasks=[convert.task_to_pb(t) for t in tasks],
        )

    def StartChild(
        self, request: pb.StartChildRequest, context: grpc.ServicerContext
    ) -> pb.StartChildResponse:
        _worker(request.worker_id, context)
        call = _allowed(
            context,
            lambda: check_child_call(
                request.worker_id,
                parent_run_id=request.parent_dag_run_id,
                parent_token=request.parent_attempt_token,
                step=request.step,
                dag_name=request.dag_name,
            ),
        )
        try:
            run_id = self.core.start_child(
                parent_run_id=request.parent_dag_run_id,
                parent_token=request.parent_attempt_token,
                step=request.step,
                item_index=request.item_index if request.HasField("item_index") else None,
                dag_name=call.dag_name,
                params=dict(request.params),
                selector=call.selector,
            )
        except (RunError, DagSpecError) as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.StartChildResponse(dag_run_id=run_id)

    def GetRunStatus(
        self, request: pb.GetRunStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetRunStatusResponse:
        _worker(request.worker_id, context)
        _allowed(context, lambda: check_in_tree(request.worker_id, request.dag_run_id))
        status = self.core.run_status(request.dag_run_id)
        return pb.GetRunStatusResponse(
            found=status.found,
            status=status.status,
            error=status.error,
            outputs=dict(status.outputs or {}),
        )

    def CancelRun(
        self, request: pb.CancelRunRequest, context: grpc.ServicerContext
    ) -> pb.CancelRunResponse:
        _worker(request.worker_id, context)
        _allowed(context, lambda: check_in_tree(request.worker_id, request.dag_run_id))
        try:
            self.core.cancel(request.dag_run_id)
        except RunError as exc:
            return pb.CancelRunResponse(accepted=False, error=str(exc))
        return pb.CancelRunResponse(accepted=True)

    def ListWorkers(
        self, request: pb.ListWorkersRequest, context: grpc.ServicerContext
    ) -> pb.ListWorkersResponse:
        now = utcnow()
        fleet = self.core.fleet
        workers = []
        for state in fleet.states():
            health = fleet.health(state, now=now)
            if health == OFFLINE:
                continue
            workers.append(
                pb.WorkerStatus(
                    info=convert.identity_to_pb(convert.identity_of(state)),
                    health_status=health,
                    last_heartbeat_ms=ms(state.last_heartbeat),
                    busy=len(state.running),
                    draining=state.draining,
                    # No attempt tokens: a token lets its holder report for the attempt.
                    running=[
                        pb.RunningTask(dag_run_id=r.dag_run_id, started_at_ms=ms(r.started_at))
                        for r in state.running
                    ],
                )
            )
        return pb.ListWorkersResponse(workers=workers)

    def Wake(self, request: pb.WakeRequest, context: grpc.ServicerContext) -> pb.WakeResponse:
        self.core.wake()
        return pb.WakeResponse()


def coordinator_servicer(
    core: Coordinator, *, executor: Executor, heartbeat_executor: Executor
) -> object:
    """What the server registers for the Coordinator service.

    Every method is django-grpc-framework's `as_servicer` handler (a synchronous function,
    run in a pool thread by the auth interceptor, inside the request signals) but three async
    ones: Poll, on a service instance made per call as `as_servicer` does, Heartbeat
    (with HeartbeatStream, the same heartbeats on an open stream) and Wake.
    """
    blocking = CoordinatorService.as_servicer(coordinator=core, executor=executor)
    # Idle heartbeats are answered on the loop: they touch no database, so they skip
    # as_servicer's request signals (closing and checking every connection per call was a
    # tenth of the loop's time with a fleet of 2,000). An idle worker says the same thing
    # about itself every second: its identity, checked against the principal object the
    # auth interceptor gave the call (the same object until the credential's row is read
    # again), is kept by worker id, so a repeated heartbeat is answered without converting,
    # checking and copying it again (fewer objects made per heartbeat, so fewer garbage
    # collections pausing the loop). Only the loop reads and writes it.
    known: dict[str, tuple[pb.WorkerInfo, Principal, Identity]] = {}

    def idle_heartbeat(
        request: pb.HeartbeatRequest, context: BlockingContext
    ) -> pb.HeartbeatResponse:
        """An idle worker's heartbeat (no running attempts), answered on the loop."""
        info, principal = request.worker, current_principal()
        seen = known.get(info.worker_id)
        if seen is not None and seen[1] is principal and seen[0] == info:
            who = seen[2]
        else:
            who = _identity(info, context)
            if len(known) >= KNOWN_IDENTITIES:
                known.clear()
            known[who.id] = (info, principal, who)
        try:
            _, draining = core.heartbeat(who, running=[], stopping=request.stopping)
        except (Denied, CredentialError) as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return DRAINING if draining else CARRY_ON

    class Servicer:
        def __getattr__(self, action: str) -> object:
            return getattr(blocking, action)

        async def Heartbeat(
            self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
        ) -> pb.HeartbeatResponse:
            """`as_servicer`'s Heartbeat, on the event loop when it cannot block.

            An idle worker's heartbeat (no running attempts: most of a fleet's) reads no
            database, only the fleet in memory, so it is answered on the loop, saving the
            trip to a thread and back for ~2,000 calls a second. One that carries attempts
            reads them, in the heartbeat pool.
            """
            if request.running:
                return await call_blocking(
                    heartbeat_executor, context, lambda c: blocking.Heartbeat(request, c)
                )
            try:
                return idle_heartbeat(request, BlockingContext(context))
            except Aborted as exc:
                await context.abort(exc.code, exc.details)
                raise

        async def HeartbeatStream(
            self, requests: AsyncIterator[pb.HeartbeatRequest], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[pb.HeartbeatResponse]:
            """Heartbeat for each request of an open stream, replies in order.

            A message costs the loop a fraction of a unary call (no call setup, metadata,
            interceptor or HTTP/2 stream per heartbeat), which is what lets one coordinator
            hold a fleet of thousands. The auth interceptor has set the principal for each
            message; a refusal ends the stream with the status a unary call would have got.
            """
            blocking_context = BlockingContext(context)
            async for request in requests:
                if request.running:
                    yield await self.Heartbeat(request, context)
                    continue
                # The idle heartbeat inline: no coroutine per message.
                try:
                    response = idle_heartbeat(request, blocking_context)
                except Aborted as exc:
                    await context.abort(exc.code, exc.details)
                    raise
                yield response

        async def Wake(
            self, request: pb.WakeRequest, context: grpc.aio.ServicerContext
        ) -> pb.WakeResponse:
            """A hint that runs were queued: it sets an event, so it is answered on the loop.
            A process creating runs waits for this reply; through the pool it waited for a
            thread hop and the pool's turn on the interpreter lock (12% of a run creator's
            time under load, docs/benchmarks.md)."""
            core.wake()
            return WOKEN

        async def Poll(
            self, request: pb.PollRequest, context: grpc.aio.ServicerContext
        ) -> pb.PollResponse:
            service = CoordinatorService(coordinator=core, executor=executor)
            service.request, service.context, service.action = request, context, "Poll"
            return await service.Poll(request, context)

    return Servicer()


def _in_request(
    fn: Callable[[], T], request: object, context: grpc.aio.ServicerContext
) -> Callable[[], T]:
    """fn inside django-grpc-framework's request signals, as `as_servicer` runs a method."""

    def run() -> T:
        grpc_request_started.send(sender=CoordinatorService, request=request, context=context)
        try:
            return fn()
        finally:
            grpc_request_finished.send(sender=CoordinatorService)

    return run


def _identity(info: pb.WorkerInfo, context: grpc.ServicerContext) -> Identity:
    if not info.worker_id:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "worker.worker_id is required")
    try:
        who = convert.identity_from_pb(info)
    except LabelError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"worker {info.worker_id[:40]!r}: {exc}")
    principal = current_principal()
    _allowed(context, lambda: principal.check_worker(who.id, who.labels))
    return dataclasses.replace(who, credential=principal.credential)


def _worker(worker_id: str, context: grpc.ServicerContext) -> None:
    """The caller may act as `worker_id` (a call that carries no labels)."""
    if not worker_id:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "worker_id is required")
    _allowed(context, lambda: current_principal().check_worker(worker_id, {}))


def _allowed(context: grpc.ServicerContext, check: Callable[[], T]) -> T:
    """Run a rights check; a refusal ends the call with PERMISSION_DENIED and its reason."""
    try:
        return check()
    except (Denied, CredentialError) as exc:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
