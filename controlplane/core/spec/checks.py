"""Checks across the DAGs of a file and the files it calls: names, call targets, call cycles.

`parse` turns each YAML document into a `Draft`; these run once every document is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.core.spec.graph import find_cycles
from controlplane.core.spec.model import Dag, DagFile, DagSpecError, SpecProblem, join_path


@dataclass
class Draft:
    """One parsed document plus what the cross-document checks need."""

    index: int
    prefix: str  # "" for the main DAG, "[i]" for later documents
    dag: Dag
    name_given: bool
    # (path of the call key, target) for each sub-DAG step, in file order.
    calls: list[tuple[str, str]] = field(default_factory=list)


def check_dag_names(drafts: list[Draft], problems: list[SpecProblem]) -> None:
    seen: set[str] = set()
    for draft in drafts:
        if draft.index > 0 and not draft.name_given:
            problems.append(
                SpecProblem(
                    draft.prefix,
                    f"DAG at index {draft.index} must have a name in a multi-DAG file",
                )
            )
            continue
        name = draft.dag.name
        if not name:
            continue
        if name in seen:
            problems.append(
                SpecProblem(join_path(draft.prefix, "name"), f'duplicate DAG name "{name}"')
            )
        seen.add(name)


def check_call_targets(
    drafts: list[Draft], *, dags_dir: Path | None, problems: list[SpecProblem]
) -> None:
    in_file = {d.dag.name for d in drafts if d.dag.name}
    for draft in drafts:
        for path, target in draft.calls:
            if target in in_file or "$" in target:
                continue
            if dags_dir is None:
                continue  # the DAGs dir decides at run time
            if find_in_dags_dir(target, dags_dir) is None:
                problems.append(
                    SpecProblem(
                        path,
                        f'unknown DAG "{target}": not in this file nor in {dags_dir}',
                    )
                )


def find_in_dags_dir(name: str, dags_dir: Path) -> Path | None:
    """`<dags_dir>/<name>.yaml` (or `.yml`) if it is a file; `name` must be a valid name."""
    for suffix in (".yaml", ".yml"):
        path = dags_dir / f"{name}{suffix}"
        try:
            if path.is_file():
                return path
        except OSError:  # a name too long for the filesystem names no file
            return None
    return None


def check_call_cycles(drafts: list[Draft], problems: list[SpecProblem]) -> None:
    # Without conditions in the language, a DAG that (indirectly) calls itself never ends.
    by_name = {d.dag.name: d for d in drafts if d.dag.name}
    graph = {
        name: tuple(t for _, t in draft.calls if t in by_name) for name, draft in by_name.items()
    }
    for cycle in find_cycles(graph):
        draft = by_name[cycle[0]]
        path = next(p for p, t in draft.calls if t == cycle[1])
        problems.append(SpecProblem(path, f"DAG call cycle {' -> '.join(cycle)}"))


# A DAG whose calls reach more files than this is checked only that far; the run-time
# nesting limit still stops whatever cycle lies beyond.
MAX_CALLED_FILES = 200
_Node = tuple[str, str]  # (file, DAG name)


def check_cross_file_cycles(
    drafts: list[Draft],
    *,
    source: str,
    dags_dir: Path,
    load: Callable[[Path], DagFile],
    problems: list[SpecProblem],
) -> None:
    """Call cycles through DAG files in the DAGs dir (`ping` calls `pong`, which calls
    `ping`), followed as runs resolve calls: the caller's own file first, then
    `<dags_dir>/<name>.yaml`. Cycles inside this file are check_call_cycles' business."""
    here = _file_key(Path(source))
    calls_in: dict[str, dict[str, list[str]]] = {
        here: {d.dag.name: [t for _, t in d.calls] for d in drafts if d.dag.name}
    }
    graph: dict[_Node, list[_Node]] = {}
    todo: list[_Node] = [(here, name) for name in calls_in[here]]
    while todo:
        node = todo.pop()
        if node in graph:
            continue
        file, name = node
        graph[node] = []
        for target in calls_in[file].get(name, []):
            if "$" in target:
                continue  # resolved at run time, where the nesting limit applies
            if target in calls_in[file]:
                callee: _Node = (file, target)
            else:
                path = find_in_dags_dir(target, dags_dir)
                if path is None:
                    continue
                key = _file_key(path)
                if key not in calls_in:
                    if len(calls_in) >= MAX_CALLED_FILES:
                        continue
                    calls_in[key] = _calls_of(path, load)
                if target not in calls_in[key]:
                    continue
                callee = (key, target)
            graph[node].append(callee)
            todo.append(callee)

    def label(node: _Node) -> str:
        return f"{node[1]} ({source if node[0] == here else node[0]})"

    labels = {label(n): n for n in graph}
    cycles = find_cycles({label(n): tuple(label(c) for c in cs) for n, cs in graph.items()})
    for cycle in cycles:
        nodes = [labels[text] for text in cycle]
        if all(file == here for file, _ in nodes):
            continue
        blamed = _blame(drafts, graph, set(nodes), here=here)
        what = (
            "DAG call cycle" if any(f == here for f, _ in nodes) else "calls into a DAG call cycle"
        )
        problems.append(SpecProblem(blamed, f"{what} across files {' -> '.join(cycle)}"))


def _file_key(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return str(path)


def _calls_of(path: Path, load: Callable[[Path], DagFile]) -> dict[str, list[str]]:
    """{DAG name: call targets} of a file in the DAGs dir; {} if it cannot be read."""
    try:
        dag_file = load(path)
    except DagSpecError:
        return {}
    return {d.name: [s.call for s in d.steps if s.call] for d in dag_file.dags}


def _blame(
    drafts: list[Draft], graph: Mapping[_Node, list[_Node]], cycle: set[_Node], *, here: str
) -> str:
    """The path of the first call in this file from which the cycle is reachable."""
    for draft in drafts:
        callees = graph.get((here, draft.dag.name), [])
        for call_path, target in draft.calls:
            todo = [c for c in callees if c[1] == target]
            seen = set(todo)
            while todo:
                node = todo.pop()
                if node in cycle:
                    return call_path
                for nxt in graph.get(node, []):
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
    return ""
