"""Run events <-> proto. Model-free: both the worker agent and the servicer use it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controlplane.core.events import (
    ATTEMPT_STARTED,
    RUN_FINISHED,
    STEP_FINISHED,
    STEP_LOG,
    STEP_STARTED,
    Event,
)
from controlplane.core.rpc.v1 import coordinator_pb2 as pb


def ms(value: datetime | None) -> int:
    return int(value.timestamp() * 1000) if value else 0


def from_ms(value: int) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if value else None


def event_from_pb(e: pb.RunEvent) -> Event:
    # Any: the common fields are an int and two strings, spread into each Event below.
    base: dict[str, Any] = {
        "seq": e.seq,
        "dag_run_id": e.dag_run_id,
        "attempt_token": e.attempt_token,
    }
    kind = e.WhichOneof("event")
    if kind == ATTEMPT_STARTED:
        return Event(kind=kind, at=from_ms(e.attempt_started.at_ms), **base)
    if kind == STEP_STARTED:
        s = e.step_started
        return Event(kind=kind, step=s.step, at=from_ms(s.at_ms), retry=s.retry, **base)
    if kind == STEP_LOG:
        g = e.step_log
        return Event(
            kind=kind,
            step=g.step,
            stream=g.stream,
            data=g.data,
            offset=g.offset,
            retry=g.retry,
            **base,
        )
    if kind == STEP_FINISHED:
        f = e.step_finished
        return Event(
            kind=kind,
            step=f.step,
            status=f.status,
            exit_code=f.exit_code if f.HasField("exit_code") else None,
            at=from_ms(f.at_ms),
            output_value=f.output_value if f.HasField("output_value") else None,
            error=f.error,
            **base,
        )
    if kind == RUN_FINISHED:
        r = e.run_finished
        return Event(
            kind=kind,
            status=r.status,
            error=r.error,
            outputs=dict(r.outputs),
            at=from_ms(r.at_ms),
            unstarted_status=r.unstarted_status,
            **base,
        )
    return Event(kind=kind or "", **base)


def event_to_pb(e: Event) -> pb.RunEvent:
    msg = pb.RunEvent(seq=e.seq, dag_run_id=e.dag_run_id, attempt_token=e.attempt_token)
    if e.kind == ATTEMPT_STARTED:
        msg.attempt_started.at_ms = ms(e.at)
    elif e.kind == STEP_STARTED:
        msg.step_started.CopyFrom(pb.StepStarted(step=e.step, at_ms=ms(e.at), retry=e.retry))
    elif e.kind == STEP_LOG:
        msg.step_log.CopyFrom(
            pb.StepLog(step=e.step, stream=e.stream, data=e.data, offset=e.offset, retry=e.retry)
        )
    elif e.kind == STEP_FINISHED:
        f = pb.StepFinished(step=e.step, status=e.status, at_ms=ms(e.at), error=e.error)
        if e.exit_code is not None:
            f.exit_code = e.exit_code
        if e.output_value is not None:
            f.output_value = e.output_value
        msg.step_finished.CopyFrom(f)
    elif e.kind == RUN_FINISHED:
        msg.run_finished.CopyFrom(
            pb.RunFinished(
                status=e.status,
                error=e.error,
                outputs=dict(e.outputs),
                at_ms=ms(e.at),
                unstarted_status=e.unstarted_status,
            )
        )
    return msg
