"""What a DAG file becomes: frozen objects, the problems found on the way, the naming rules.

Everything else in `controlplane.core.spec` builds these (`parse`, `checks`) or reads them
(`params`, the executor, dispatch, the run lifecycle).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

EMPTY: Mapping[str, str] = MappingProxyType({})

# Step kinds. "command" covers command/script steps (the "shell" executor); "dag" is a
# call of one child DAG; "parallel" calls one child per item.
KIND_COMMAND = "command"
KIND_DAG = "dag"
KIND_PARALLEL = "parallel"

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DAG_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
MAX_DAG_NAME_LENGTH = 200  # with ".yaml", well inside every filesystem's name limit
# `$VAR` or `${VAR}`, as steps' commands and params expand them.
VAR_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
DEFAULT_MAX_REDISPATCH = 3
DEFAULT_MAX_CONCURRENT = 10


@dataclass(frozen=True)
class SpecProblem:
    path: str  # YAML path, e.g. "steps[2].worker_selector"; "" for the document itself
    message: str
    # How to get what the author likely meant; shown as a line of its own after the problem.
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def lines(self) -> list[str]:
        """The problem, then its hint if it has one: each a line for an operator."""
        if not self.hint:
            return [str(self)]
        return [str(self), str(SpecProblem(self.path, f"hint: {self.hint}"))]


class DagSpecError(Exception):
    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))

    def lines(self) -> list[str]:
        return [line for problem in self.problems for line in problem.lines()]


@dataclass(frozen=True)
class RetryPolicy:
    limit: int = 0
    interval_sec: float = 0.0


@dataclass(frozen=True)
class Parallel:
    # Exactly one of items / variable is set. Items are strings, numbers or mappings.
    items: tuple[object, ...] | None = None
    variable: str | None = None  # e.g. "${ITEMS}": expanded at run time, JSON list or words
    max_concurrent: int = DEFAULT_MAX_CONCURRENT


@dataclass(frozen=True)
class Step:
    name: str
    kind: str = KIND_COMMAND
    executor_type: str = "shell"  # the name used in messages ("shell", "dag", "parallel", ...)
    command: str | None = None  # shell command line (a list form is joined with shlex.join)
    script: str | None = None
    depends: tuple[str, ...] = ()
    dir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    output: str | None = None
    call: str | None = None  # child DAG name for kind dag/parallel
    params: Mapping[str, str] = field(default_factory=dict)  # params passed to the child DAG
    parallel: Parallel | None = None
    worker_selector: Mapping[str, str] = field(
        default_factory=dict
    )  # step-level override for the child DAG
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    continue_on_failure: bool = False
    timeout_sec: float | None = None


@dataclass(frozen=True)
class Dag:
    name: str
    steps: tuple[Step, ...]
    description: str = ""
    schedule: tuple[str, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)  # defaults, in declaration order
    env: Mapping[str, str] = field(default_factory=dict)
    worker_selector: Mapping[str, str] = field(default_factory=dict)
    force_local: bool = False  # worker_selector: local
    on_worker_lost: str = "redispatch"  # or "fail"
    max_redispatch: int = DEFAULT_MAX_REDISPATCH
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
    # Things that are ignored rather than wrong; `message` starts with "warning: ".
    warnings: tuple[SpecProblem, ...] = ()

    @property
    def main(self) -> Dag:
        return self.dags[0]

    def get(self, name: str) -> Dag | None:
        for dag in self.dags:
            if dag.name == name:
                return dag
        return None


def dag_name_problem(name: str) -> str | None:
    """Why `name` cannot name a DAG, or None. A call target doubles as a file name in the
    DAGs dir, so these rules are what keeps a call inside it (checked again at run time
    for targets written with variables)."""
    if len(name) > MAX_DAG_NAME_LENGTH:
        return f'invalid DAG name "{name[:40]}...": longer than {MAX_DAG_NAME_LENGTH} characters'
    if not _DAG_NAME_RE.fullmatch(name) or name in (".", ".."):
        return f'invalid DAG name "{name}": use letters, digits, "_", "-" and "."'
    return None


def bad_name_message(name: str) -> str:
    return f'invalid name "{name}": use letters, digits and _, not starting with a digit'


# Variables that decide which code a step's process loads or how its shell reads the command,
# and the ones the engine sets for each step: params, env and outputs may not set them, or a
# run request could turn "run this DAG" into "run my library inside it" (LD_PRELOAD=...).
SYSTEM_ENV_NAMES = frozenset(
    {
        "DAG_NAME",
        "DAG_RUN_ID",
        "DAG_RUN_STEP_NAME",
        "ROOT_DAG_RUN_ID",
        "PARENT_DAG_RUN_ID",
        "WORKER_ID",
    }
)
PROTECTED_ENV_NAMES = SYSTEM_ENV_NAMES | frozenset(
    {
        "PATH",
        "BASH_ENV",
        "ENV",
        "IFS",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PERL5OPT",
        "NODE_OPTIONS",
    }
)
PROTECTED_ENV_PREFIXES = ("LD_", "DYLD_")


def is_protected_env_name(name: str) -> bool:
    """True for a name params, env and outputs may not set (case-sensitive, as the OS is)."""
    return name in PROTECTED_ENV_NAMES or name.startswith(PROTECTED_ENV_PREFIXES)


def protected_name_problem(name: str) -> str | None:
    """The one-line refusal for a protected variable name, or None when the name is free."""
    if not is_protected_env_name(name):
        return None
    return f'"{name}" is a protected variable: params and env cannot set it'


def default_dag_name(source: str) -> str:
    """The main DAG's default name: its file's stem, wherever the stored text is parsed again."""
    return Path(source).stem or "dag"


def join_path(base: str, key: str) -> str:
    """The YAML path of `key` under `base` ("" is the document itself)."""
    return f"{base}.{key}" if base else key


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand `$VAR` and `${VAR}` against `env`; unknown names become "" as in the shell."""
    return VAR_REF.sub(lambda m: env.get(m.group(1) or m.group(2), ""), text)
