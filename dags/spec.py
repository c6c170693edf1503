"""DAG YAML -> validated, immutable objects. No Django imports: the worker agent uses this.

INTERFACE CONTRACT (the executor, dispatch and commands rely on these names):
- `DagFile`, `Dag`, `Step`, `RetryPolicy`, `Parallel` (frozen dataclasses)
- `SpecProblem(path, message)`; `DagSpecError(problems)`
- `parse_dag_file(text, *, source, default_name) -> DagFile` (raises DagSpecError)
- `load_dag_file(path) -> DagFile` (raises DagSpecError; unreadable file is a problem too)
- `resolve_params(dag, overrides) -> dict[str, str]`, `parse_params_string(text) -> dict`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

EMPTY: Mapping[str, str] = MappingProxyType({})

# Step kinds. "command" covers command/script steps (the "shell" executor); "dag" is a
# call of one child DAG; "parallel" calls one child per item.
KIND_COMMAND = "command"
KIND_DAG = "dag"
KIND_PARALLEL = "parallel"


@dataclass(frozen=True)
class SpecProblem:
    path: str  # YAML path, e.g. "steps[2].worker_selector"; "" for the document itself
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DagSpecError(Exception):
    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class RetryPolicy:
    limit: int = 0
    interval_sec: float = 0.0


@dataclass(frozen=True)
class Parallel:
    # Exactly one of items / variable is set. Items are strings, numbers or mappings.
    items: tuple[object, ...] | None = None
    variable: str | None = None  # e.g. "${ITEMS}": expanded at run time, JSON list or words
    max_concurrent: int = 10


@dataclass(frozen=True)
class Step:
    name: str
    kind: str = KIND_COMMAND
    executor_type: str = "shell"  # the name used in messages ("shell", "dag", "parallel", ...)
    command: str | None = None  # shell command line (a list form is joined with shlex.join)
    script: str | None = None
    depends: tuple[str, ...] = ()
    dir: str | None = None
    env: Mapping[str, str] = EMPTY
    output: str | None = None
    call: str | None = None  # child DAG name for kind dag/parallel
    params: Mapping[str, str] = EMPTY  # params passed to the child DAG
    parallel: Parallel | None = None
    worker_selector: Mapping[str, str] = EMPTY  # step-level override for the child DAG
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    continue_on_failure: bool = False
    timeout_sec: float | None = None


@dataclass(frozen=True)
class Dag:
    name: str
    steps: tuple[Step, ...]
    description: str = ""
    schedule: tuple[str, ...] = ()
    params: Mapping[str, str] = EMPTY  # defaults, in declaration order
    env: Mapping[str, str] = EMPTY
    worker_selector: Mapping[str, str] = EMPTY
    force_local: bool = False  # worker_selector: local
    on_worker_lost: str = "redispatch"  # or "fail"
    max_redispatch: int = 3
    timeout_sec: float | None = None
    # True when any step has `depends`: steps form a graph; else they run in file order.
    uses_graph: bool = False

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass(frozen=True)
class DagFile:
    source: str  # path or a label such as "<api>"
    text: str  # the whole file, stored with each run so children resolve from it
    dags: tuple[Dag, ...]

    @property
    def main(self) -> Dag:
        return self.dags[0]

    def get(self, name: str) -> Dag | None:
        for dag in self.dags:
            if dag.name == name:
                return dag
        return None
