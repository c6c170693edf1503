"""The dispatch rules as pure functions: mode decision, worker choice, waiting reasons."""

from __future__ import annotations

import pytest

from controlplane.core.routing import (
    WorkerView,
    choose_worker,
    decide_execution_mode,
    waiting_reason,
)
from controlplane.core.spec import Dag, Step

GPU = {"gpu": "true"}


def dag(*, selector: dict[str, str] | None = None, force_local: bool = False) -> Dag:
    return Dag(
        name="d",
        steps=(Step(name="s", command="true"),),
        worker_selector=selector or {},
        force_local=force_local,
    )


@pytest.mark.parametrize(
    ("dag_selector", "force_local", "step_selector", "default_mode", "expected"),
    [
        # forced local wins over everything, including a selector and distributed default
        ({}, True, {}, "distributed", ("local", "forced_local", {})),
        (GPU, True, {}, "distributed", ("local", "forced_local", {})),
        ({}, True, GPU, "local", ("local", "forced_local", {})),
        # a non-empty selector dispatches even when the default mode is local
        (GPU, False, {}, "local", ("distributed", "selector", GPU)),
        (GPU, False, {}, "distributed", ("distributed", "selector", GPU)),
        # otherwise the default mode decides
        ({}, False, {}, "local", ("local", "default_mode", {})),
        ({}, False, {}, "distributed", ("distributed", "default_mode", {})),
        # a step-level selector overrides the child's own
        (GPU, False, {"region": "eu"}, "local", ("distributed", "selector", {"region": "eu"})),
        ({}, False, {"region": "eu"}, "local", ("distributed", "selector", {"region": "eu"})),
    ],
)
def test_mode_decision_table(dag_selector, force_local, step_selector, default_mode, expected):
    decision = decide_execution_mode(
        dag(selector=dag_selector, force_local=force_local),
        step_selector=step_selector,
        default_mode=default_mode,
    )
    assert (decision.mode, decision.why, dict(decision.selector)) == expected


def w(
    wid: str,
    labels: dict[str, str],
    *,
    health: str = "HEALTHY",
    draining: bool = False,
    free: int = 1,
) -> WorkerView:
    return WorkerView(wid, labels, health, draining, free)


@pytest.mark.parametrize(
    ("workers", "reason"),
    [
        ([], "no_workers"),
        ([w("a", {}, health="OFFLINE")], "no_workers"),
        ([w("a", {"gpu": "false"})], "no_matching_worker"),
        ([w("a", {"cpu": "true"})], "no_matching_worker"),
        ([w("a", GPU, health="UNHEALTHY")], "matching_workers_unhealthy"),
        (
            [w("a", GPU, draining=True), w("b", GPU, health="UNHEALTHY")],
            "matching_workers_draining",
        ),
        ([w("a", GPU, free=0)], "matching_workers_busy"),
        ([w("a", GPU, free=0), w("b", GPU, draining=True)], "matching_workers_busy"),
    ],
)
def test_waiting_reasons(workers, reason):
    assert waiting_reason(GPU, workers) == reason
    chosen, _ = choose_worker(GPU, workers)
    assert chosen is None


def test_choose_worker_takes_a_dispatchable_match_with_the_most_free_slots():
    workers = [
        w("busy", GPU, free=0),
        w("warning", GPU, health="WARNING", free=2),
        w("healthy", GPU, free=3),
        w("unhealthy", GPU, health="UNHEALTHY", free=9),
        w("draining", GPU, draining=True, free=9),
        w("other", {"gpu": "false"}, free=9),
    ]
    chosen, matched = choose_worker(GPU, workers)
    assert chosen is not None and chosen.id == "healthy"
    assert matched == 5
    chosen, _ = choose_worker(GPU, [w for w in workers if w.id != "healthy"])
    assert chosen is not None and chosen.id == "warning"  # WARNING still takes work


def test_empty_selector_may_go_to_any_worker():
    chosen, matched = choose_worker({}, [w("a", {}), w("b", {"x": "y"}, free=2)])
    assert chosen is not None and chosen.id == "b"
    assert matched == 2
