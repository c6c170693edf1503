"""Cycles in a dependency graph (steps' `depends`, DAGs' calls), for the problems list."""

from __future__ import annotations

import graphlib
from collections.abc import Mapping


def find_cycles(graph: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """Cycles as `[a, b, ..., a]` (a -> b: a depends on b), one per knot, in graph order.

    graphlib finds a cycle without recursion, so a 1,200-step chain is fine; each found
    cycle's nodes are dropped and the search repeats until the rest sorts.
    """
    order = {node: i for i, node in enumerate(graph)}
    remaining = {node: tuple(graph.get(node, ())) for node in graph}
    cycles: list[list[str]] = []
    while True:
        try:
            graphlib.TopologicalSorter(remaining).prepare()
        except graphlib.CycleError as exc:
            # graphlib lists each node before the one depending on it: reverse for arrows.
            found: list[str] = list(reversed(exc.args[1]))[:-1]
            first = min(range(len(found)), key=lambda i: order.get(found[i], len(order)))
            cycle = found[first:] + found[:first]
            cycles.append([*cycle, cycle[0]])
            dropped = set(cycle)
            remaining = {
                node: tuple(d for d in deps if d not in dropped)
                for node, deps in remaining.items()
                if node not in dropped
            }
        else:
            return sorted(cycles, key=lambda c: order.get(c[0], len(order)))
