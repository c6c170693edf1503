"""DAG YAML -> validated, immutable objects. No Django imports: the worker agent uses this.

INTERFACE CONTRACT (the executor, dispatch and commands rely on these names):
- `DagFile`, `Dag`, `Step`, `RetryPolicy`, `Parallel` (frozen dataclasses)
- `SpecProblem(path, message)`; `DagSpecError(problems)`
- `parse_dag_file(text, *, source, default_name) -> DagFile` (raises DagSpecError)
- `load_dag_file(path) -> DagFile` (raises DagSpecError; unreadable file is a problem too)
- `resolve_params(dag, overrides) -> dict[str, str]`, `parse_params_string(text) -> dict`

Problems are collected, not raised one by one: an operator fixing a file wants the whole list.
Every problem names its YAML path:

- Paths in the main (first) document have no prefix: `steps[0].command`.
- Later documents are prefixed with their position among the file's non-empty documents,
  which is also their index in `DagFile.dags`: `[1].steps[0].command`; a problem with the
  document as a whole is reported at `[1]`.
- The path uses the spelling found in the file (`steps[2].workerSelector`, `steps[0].run`).
- A YAML syntax error, an unreadable file and a file without any DAG are one problem with an
  empty path (the message carries line and column where there is one).
- Dependency cycles are reported at `steps` of the DAG, with arrows following `depends`
  (`a -> b` means a depends on b); call cycles between DAGs of one file at the calling step.

Decisions the contract leaves open:
- A step needs `command`, `script` or `call`/`run`. `command` next to `script` is the
  interpreter the script is run with (as in Dagu), so that pair is allowed; `call` with
  either is an error.
- A step without `name` is named `step-N`, N its 1-based position in the DAG's `steps`
  (`step-N-2`, ... when an explicit name already uses it); call steps too, so two calls of
  one DAG never clash and a `call: ${VAR}` step has a stable name.
- A DAG with a top-level `command:` and no `steps` is a one-step DAG (its step `step-1`);
  with `steps` the command is ignored, with a warning in `DagFile.warnings`.
- `params` and `env` names must be shell-style names (`[A-Za-z_][A-Za-z0-9_]*`): they become
  environment variables of the steps. A name given twice in one list or string is an error.
- Explicit DAG names and `call` targets are restricted to letters, digits, `_`, `-` and `.`,
  because a call target doubles as a file name in the DAGs dir. Names from the file stem are
  taken as they are; a call target containing `$` is resolved at run time and not checked.
- YAML is read by `controlplane.core.yamlload`, as config files are: duplicate keys are an error,
  only `true`/`false` are booleans (`on`, `yes`, `no` are text), alias bombs and recursive
  aliases are refused with one line.
- `parallel` items are strings, numbers, booleans or mappings; an empty literal list is an
  error (it would launch nothing and "succeed").
"""

from __future__ import annotations

import dataclasses
import difflib
import graphlib
import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import MappingProxyType

from croniter import croniter

from controlplane.core.labels import LabelError, normalize_label_map
from controlplane.core.yamlload import YamlError, load_all

__all__ = [
    "KIND_COMMAND",
    "KIND_DAG",
    "KIND_PARALLEL",
    "Dag",
    "DagFile",
    "DagSpecError",
    "Parallel",
    "RetryPolicy",
    "SpecProblem",
    "Step",
    "load_dag_file",
    "parse_dag_file",
    "parse_params_string",
    "resolve_params",
]
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


# ---- public functions


def parse_dag_file(
    text: str, *, source: str, default_name: str, dags_dir: Path | None = None
) -> DagFile:
    """Parse and validate every DAG in `text`; raise DagSpecError listing all problems.

    `default_name` names the main DAG when it has no `name:`. With `dags_dir`, a `call` of a
    DAG that is not in this file must have a `<dags_dir>/<name>.yaml` (or `.yml`).
    """
    problems: list[SpecProblem] = []
    warnings: list[SpecProblem] = []
    documents = _load_documents(text, problems)
    if problems:
        raise DagSpecError(problems)
    if not documents:
        raise DagSpecError([SpecProblem("", "no DAG defined: the file is empty")])
    drafts = [
        _parse_document(
            raw, index=i, default_name=default_name, problems=problems, warnings=warnings
        )
        for i, raw in enumerate(documents)
    ]
    _check_dag_names(drafts, problems)
    _check_call_targets(drafts, dags_dir=dags_dir, problems=problems)
    _check_call_cycles(drafts, problems)
    if dags_dir is not None and not problems:
        _check_cross_file_cycles(drafts, source=source, dags_dir=dags_dir, problems=problems)
    if problems:
        raise DagSpecError(problems)
    return DagFile(
        source=source, text=text, dags=tuple(d.dag for d in drafts), warnings=tuple(warnings)
    )


def load_dag_file(path: str | os.PathLike[str], *, dags_dir: Path | None = None) -> DagFile:
    """Read and parse a DAG file; the main DAG's default name is the file stem."""
    path = Path(path)
    try:
        # A FIFO or device in the DAGs dir would block or stream forever.
        if path.exists() and not path.is_file():
            raise DagSpecError([SpecProblem("", "cannot read file: not a regular file")])
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problem = f"cannot read file: not UTF-8 text (byte {exc.start})"
        raise DagSpecError([SpecProblem("", problem)]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DagSpecError([SpecProblem("", f"cannot read file: {reason}")]) from None
    return parse_dag_file(text, source=str(path), default_name=path.stem, dags_dir=dags_dir)


def parse_params_string(text: str) -> dict[str, str]:
    """Parse `K=V K2='a b'` (shell quoting); raise ValueError naming the bad word.

    Positional (`KEY`-less) parameters are not supported: every word must be NAME=VALUE.
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r}: {exc}") from None
    params: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f'"{word}" is not NAME=VALUE')
        if not _NAME_RE.fullmatch(key):
            raise ValueError(_bad_name_message(key))
        if key in params:
            raise ValueError(f'parameter "{key}" is given twice')
        params[key] = value
    return params


def resolve_params(dag: Dag, overrides: Mapping[str, str]) -> dict[str, str]:
    """The DAG's defaults in declaration order, overridden by `overrides`.

    Override keys the DAG does not declare are kept and come after the declared ones: a
    parent passing an extra value to a child is not an error.
    """
    resolved = dict(dag.params)
    for key, value in overrides.items():
        resolved[key] = str(value)
    return resolved


# ---- YAML loading

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DAG_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
MAX_DAG_NAME_LENGTH = 200  # with ".yaml", well inside every filesystem's name limit
# `$VAR` or `${VAR}`, as steps' commands and params expand them.
VAR_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _load_documents(text: str, problems: list[SpecProblem]) -> list[object]:
    try:
        return load_all(text)
    except YamlError as exc:
        problems.append(SpecProblem("", str(exc)))
        return []


# ---- documents and DAGs

_DAG_KEYS = (
    "name",
    "command",
    "description",
    "schedule",
    "params",
    "env",
    "steps",
    "worker_selector",
    "workerSelector",
    "on_worker_lost",
    "max_redispatch",
    "timeout_sec",
)
_STEP_KEYS = (
    "name",
    "command",
    "script",
    "depends",
    "dir",
    "env",
    "output",
    "call",
    "run",
    "params",
    "parallel",
    "worker_selector",
    "workerSelector",
    "retry_policy",
    "continue_on",
    "timeout_sec",
    "executor",
)
_PARALLEL_KEYS = ("items", "max_concurrent")
_RETRY_KEYS = ("limit", "interval_sec")
_CONTINUE_ON_KEYS = ("failure",)
_EXECUTOR_KEYS = ("type", "config")
_SUBDAG_CONFIG_KEYS = ("dag",)

_ON_WORKER_LOST = ("redispatch", "fail")
_COMMAND_EXECUTORS = ("shell", "command")
_DAG_EXECUTORS = ("dag", "subworkflow")
_PARALLEL_EXECUTOR = "parallel"
_SUBDAG_KINDS = (KIND_DAG, KIND_PARALLEL)
DEFAULT_MAX_REDISPATCH = 3
DEFAULT_MAX_CONCURRENT = 10


@dataclass
class _Draft:
    """One parsed document plus what the cross-document checks need."""

    index: int
    prefix: str  # "" for the main DAG, "[i]" for later documents
    dag: Dag
    name_given: bool
    # (path of the call key, target) for each sub-DAG step, in file order.
    calls: list[tuple[str, str]] = field(default_factory=list)


def _parse_document(
    raw: object,
    *,
    index: int,
    default_name: str,
    problems: list[SpecProblem],
    warnings: list[SpecProblem],
) -> _Draft:
    prefix = "" if index == 0 else f"[{index}]"
    draft = _Draft(index=index, prefix=prefix, dag=Dag(name="", steps=()), name_given=False)
    if not isinstance(raw, Mapping):
        problems.append(
            SpecProblem(prefix, f"a DAG must be a mapping of keys, got {_type_name(raw)}")
        )
        return draft
    _check_keys(raw, allowed=_DAG_KEYS, path=prefix, problems=problems)

    name = default_name
    raw_name = raw.get("name")
    if raw_name is not None:
        draft.name_given = True
        name = _dag_name(raw_name, path=_at(prefix, "name"), problems=problems) or default_name
    elif index == 0 and not default_name:
        problems.append(SpecProblem(_at(prefix, "name"), "name is required"))

    selector_key, raw_selector = _pick_selector(raw, path=prefix, problems=problems)
    selector, force_local = _dag_selector(
        raw_selector, path=_at(prefix, selector_key), problems=problems
    )
    if "command" in raw and raw.get("steps") is not None:
        warnings.append(
            SpecProblem(_at(prefix, "command"), "warning: ignored because steps are given")
        )
        steps, calls, uses_graph = _parse_steps(raw["steps"], prefix=prefix, problems=problems)
    elif "command" in raw:
        # A one-step DAG: the command is its step, named as an unnamed first step would be.
        command = _command(raw["command"], path=_at(prefix, "command"), problems=problems)
        if raw["command"] is None:
            problems.append(SpecProblem(_at(prefix, "command"), "must not be empty"))
        steps = (Step(name=_generated_step_name(1, set()), command=command),) if command else ()
        calls, uses_graph = [], False
    else:
        steps, calls, uses_graph = _parse_steps(raw.get("steps"), prefix=prefix, problems=problems)
    draft.calls = calls
    draft.dag = Dag(
        name=name,
        steps=steps,
        description=_optional_str(
            raw.get("description"), path=_at(prefix, "description"), problems=problems
        )
        or "",
        schedule=_schedule(raw.get("schedule"), path=_at(prefix, "schedule"), problems=problems),
        params=_key_values(
            raw.get("params"), path=_at(prefix, "params"), allow_string=True, problems=problems
        ),
        env=_key_values(
            raw.get("env"), path=_at(prefix, "env"), allow_string=False, problems=problems
        ),
        worker_selector=selector,
        force_local=force_local,
        on_worker_lost=_on_worker_lost(
            raw.get("on_worker_lost"), path=_at(prefix, "on_worker_lost"), problems=problems
        ),
        max_redispatch=_max_redispatch(
            raw.get("max_redispatch"), path=_at(prefix, "max_redispatch"), problems=problems
        ),
        timeout_sec=_timeout(
            raw.get("timeout_sec"), path=_at(prefix, "timeout_sec"), problems=problems
        ),
        uses_graph=uses_graph,
    )
    return draft


def _dag_name(value: object, *, path: str, problems: list[SpecProblem]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        problems.append(SpecProblem(path, "must be a non-empty string"))
        return None
    problem = dag_name_problem(value)
    if problem:
        problems.append(SpecProblem(path, problem))
        return None
    return value


def dag_name_problem(name: str) -> str | None:
    """Why `name` cannot name a DAG, or None. A call target doubles as a file name in the
    DAGs dir, so these rules are what keeps a call inside it (checked again at run time
    for targets written with variables)."""
    if len(name) > MAX_DAG_NAME_LENGTH:
        return f'invalid DAG name "{name[:40]}...": longer than {MAX_DAG_NAME_LENGTH} characters'
    if not _DAG_NAME_RE.fullmatch(name) or name in (".", ".."):
        return f'invalid DAG name "{name}": use letters, digits, "_", "-" and "."'
    return None


def _schedule(value: object, *, path: str, problems: list[SpecProblem]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        entries: list[tuple[str, object]] = [(path, value)]
    elif isinstance(value, list):
        entries = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    else:
        problems.append(
            SpecProblem(
                path, f"must be a cron expression or a list of them, got {_type_name(value)}"
            )
        )
        return ()
    schedule: list[str] = []
    for entry_path, expr in entries:
        if not isinstance(expr, str):
            problems.append(
                SpecProblem(entry_path, f"must be a cron expression, got {_type_name(expr)}")
            )
        elif not croniter.is_valid(expr.strip()):
            problems.append(SpecProblem(entry_path, f'invalid cron expression "{expr}"'))
        else:
            schedule.append(expr.strip())
    return tuple(schedule)


def _on_worker_lost(value: object, *, path: str, problems: list[SpecProblem]) -> str:
    if value is None:
        return "redispatch"
    if value not in _ON_WORKER_LOST:
        problems.append(SpecProblem(path, 'must be "redispatch" or "fail"'))
        return "redispatch"
    return str(value)


def _max_redispatch(value: object, *, path: str, problems: list[SpecProblem]) -> int:
    if value is None:
        return DEFAULT_MAX_REDISPATCH
    if not _is_int(value) or value < 0:
        problems.append(SpecProblem(path, "must be an integer >= 0"))
        return DEFAULT_MAX_REDISPATCH
    return int(value)


def _timeout(value: object, *, path: str, problems: list[SpecProblem]) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or value <= 0:
        problems.append(SpecProblem(path, "must be a positive number"))
        return None
    return float(value)


# ---- worker selectors


def _pick_selector(
    raw: Mapping[object, object], *, path: str, problems: list[SpecProblem]
) -> tuple[str, object]:
    """The selector value and the spelling it was given with (snake_case if neither)."""
    if "worker_selector" in raw and "workerSelector" in raw:
        problems.append(
            SpecProblem(
                _at(path, "workerSelector"),
                "worker_selector and workerSelector are both set; use one",
            )
        )
        return "worker_selector", raw["worker_selector"]
    if "workerSelector" in raw:
        return "workerSelector", raw["workerSelector"]
    return "worker_selector", raw.get("worker_selector")


def _dag_selector(
    value: object, *, path: str, problems: list[SpecProblem]
) -> tuple[Mapping[str, str], bool]:
    """DAG level: a label map, or the string `local` (any case), which forces local runs."""
    if value is None:
        return EMPTY, False
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "local":
            return EMPTY, True
        problems.append(
            SpecProblem(
                path,
                f'unsupported worker_selector string value "{text}"; '
                'the only allowed string value is "local"',
            )
        )
        return EMPTY, False
    if not isinstance(value, Mapping):
        problems.append(
            SpecProblem(path, f'must be a mapping of labels or "local", got {_type_name(value)}')
        )
        return EMPTY, False
    return _label_map(value, path=path, problems=problems), False


def _step_selector(value: object, *, path: str, problems: list[SpecProblem]) -> Mapping[str, str]:
    if isinstance(value, str):
        problems.append(
            SpecProblem(
                path,
                'must be a mapping of labels; the string "local" is only allowed at DAG level',
            )
        )
        return EMPTY
    if not isinstance(value, Mapping):
        problems.append(SpecProblem(path, f"must be a mapping of labels, got {_type_name(value)}"))
        return EMPTY
    return _label_map(value, path=path, problems=problems)


def _label_map(
    value: Mapping[object, object], *, path: str, problems: list[SpecProblem]
) -> Mapping[str, str]:
    try:
        return MappingProxyType(normalize_label_map(value))
    except LabelError as exc:
        problems.append(SpecProblem(path, str(exc)))
        return EMPTY


# ---- steps


def _parse_steps(
    value: object, *, prefix: str, problems: list[SpecProblem]
) -> tuple[tuple[Step, ...], list[tuple[str, str]], bool]:
    """Steps, their (call path, target) pairs, and whether the steps form a graph."""
    path = _at(prefix, "steps")
    if value is None:
        problems.append(SpecProblem(path, "is required: a DAG needs at least one step"))
        return (), [], False
    if not isinstance(value, list):
        problems.append(SpecProblem(path, f"must be a list of steps, got {_type_name(value)}"))
        return (), [], False
    if not value:
        problems.append(SpecProblem(path, "must not be empty: a DAG needs at least one step"))
        return (), [], False

    steps: list[Step] = []
    step_paths: list[str] = []
    positions: list[int] = []
    calls: list[tuple[str, str]] = []
    uses_graph = False
    seen: dict[str, str] = {}
    for i, raw in enumerate(value):
        step_path = f"{path}[{i}]"
        if not isinstance(raw, Mapping):
            problems.append(
                SpecProblem(step_path, f"a step must be a mapping of keys, got {_type_name(raw)}")
            )
            continue
        uses_graph = uses_graph or "depends" in raw
        step, name_path, call = _parse_step(raw, path=step_path, problems=problems)
        if call is not None:
            calls.append(call)
        if step.name:
            if step.name in seen:
                problems.append(
                    SpecProblem(
                        name_path,
                        f'duplicate step name "{step.name}" (first used at {seen[step.name]})',
                    )
                )
            else:
                seen[step.name] = step_path
        steps.append(step)
        step_paths.append(step_path)
        positions.append(i + 1)

    # Unnamed steps are named after their position once every explicit name is known, so
    # an explicit `step-2` keeps its name and the unnamed second step becomes `step-2-2`.
    taken = set(seen)
    for i, (step, position) in enumerate(zip(steps, positions, strict=True)):
        if not step.name:
            name = _generated_step_name(position, taken)
            taken.add(name)
            steps[i] = dataclasses.replace(step, name=name)

    if uses_graph:
        _check_dependencies(steps, step_paths, path=path, problems=problems)
    return tuple(steps), calls, uses_graph


def _generated_step_name(position: int, taken: set[str]) -> str:
    """`step-N` for the step at 1-based `position`, else the first free `step-N-K`."""
    name = f"step-{position}"
    suffix = 2
    while name in taken:
        name = f"step-{position}-{suffix}"
        suffix += 1
    return name


def _parse_step(
    raw: Mapping[object, object], *, path: str, problems: list[SpecProblem]
) -> tuple[Step, str, tuple[str, str] | None]:
    """One step, the path to blame for its name, and its (call path, target) if any."""
    _check_keys(raw, allowed=_STEP_KEYS, path=path, problems=problems)

    command = _command(raw.get("command"), path=_at(path, "command"), problems=problems)
    script = _optional_str(raw.get("script"), path=_at(path, "script"), problems=problems)
    if script is not None and not script.strip():
        problems.append(SpecProblem(_at(path, "script"), "must not be empty"))
    for key in ("command", "script"):
        # `command:` with nothing after it is a half-written step, not "no command".
        if key in raw and raw[key] is None:
            problems.append(SpecProblem(_at(path, key), "must not be empty"))

    call_key = "call"
    if "call" in raw and "run" in raw:
        problems.append(SpecProblem(_at(path, "run"), "call and run are both set; use one"))
    elif "run" in raw:
        call_key = "run"
    call = None
    if call_key in raw:
        call = _call_target(raw[call_key], path=_at(path, call_key), problems=problems)
    call_path = _at(path, call_key)

    executor, config = _executor(raw.get("executor"), path=_at(path, "executor"), problems=problems)
    has_parallel = raw.get("parallel") is not None

    # Decide what the step is. The executor name is what messages quote.
    if executor is None:
        if call is not None or "call" in raw or "run" in raw:
            kind = KIND_PARALLEL if has_parallel else KIND_DAG
            executor_type = "parallel" if has_parallel else "dag"
        else:
            kind, executor_type = KIND_COMMAND, "shell"
    else:
        executor_type = executor
        if executor in _DAG_EXECUTORS:
            kind = KIND_PARALLEL if has_parallel else KIND_DAG
        elif executor == _PARALLEL_EXECUTOR:
            kind = KIND_PARALLEL
            if not has_parallel:
                problems.append(
                    SpecProblem(path, 'executor type "parallel" needs a parallel field')
                )
        else:
            kind = KIND_COMMAND
            if executor not in _COMMAND_EXECUTORS:
                problems.append(
                    SpecProblem(
                        _at(path, "executor"), f'executor type "{executor}" is not supported'
                    )
                )

    config_dag = config.get("dag") if config else None
    if kind in _SUBDAG_KINDS:
        if config_dag is not None:
            config_path = _at(path, "executor.config.dag")
            target = _call_target(config_dag, path=config_path, problems=problems)
            if call is None:
                call, call_path = target, config_path
            elif target is not None and target != call:
                problems.append(
                    SpecProblem(config_path, f'"{target}" conflicts with {call_key} "{call}"')
                )
        if call is None and not ("call" in raw or "run" in raw or config_dag is not None):
            problems.append(
                SpecProblem(
                    path,
                    f'executor type "{executor_type}" needs the DAG to run in call '
                    "(or executor.config.dag)",
                )
            )
        if command is not None or script is not None:
            problems.append(
                SpecProblem(path, "a step that calls a DAG cannot have command or script")
            )
    else:
        if call is not None or "call" in raw or "run" in raw:
            problems.append(
                SpecProblem(
                    _at(path, call_key),
                    f'executor type "{executor_type}" cannot call a DAG',
                )
            )
        elif command is None and script is None and "command" not in raw and "script" not in raw:
            problems.append(SpecProblem(path, "a step needs one of command, script or call"))
        if has_parallel:
            problems.append(
                SpecProblem(_at(path, "parallel"), "only a step that calls a DAG can be parallel")
            )
        if raw.get("params") is not None:
            problems.append(
                SpecProblem(_at(path, "params"), "only a step that calls a DAG takes params")
            )

    selector_key, raw_selector = _pick_selector(raw, path=path, problems=problems)
    selector: Mapping[str, str] = EMPTY
    if raw_selector is not None:
        selector_path = _at(path, selector_key)
        if kind in _SUBDAG_KINDS:
            selector = _step_selector(raw_selector, path=selector_path, problems=problems)
        else:
            problems.append(
                SpecProblem(
                    selector_path,
                    f'executor type "{executor_type}" does not support worker_selector field',
                    hint=f"to route this step, put {selector_key} at the DAG level, or move "
                    "the step into a sub-DAG called with call: and put "
                    f"{selector_key} on that call step",
                )
            )

    # Without `name` the step stays unnamed here; _parse_steps gives it `step-N`.
    name_path = _at(path, "name")
    name = ""
    raw_name = raw.get("name")
    if raw_name is not None:
        if isinstance(raw_name, str) and raw_name.strip():
            name = raw_name
        else:
            problems.append(SpecProblem(name_path, "must be a non-empty string"))

    step = Step(
        name=name,
        kind=kind,
        executor_type=executor_type,
        command=command,
        script=script,
        depends=_depends(raw.get("depends"), path=_at(path, "depends"), problems=problems),
        dir=_optional_str(raw.get("dir"), path=_at(path, "dir"), problems=problems),
        env=_key_values(
            raw.get("env"), path=_at(path, "env"), allow_string=False, problems=problems
        ),
        output=_output(raw.get("output"), path=_at(path, "output"), problems=problems),
        call=call if kind in _SUBDAG_KINDS else None,
        params=_key_values(
            raw.get("params"), path=_at(path, "params"), allow_string=True, problems=problems
        )
        if kind in _SUBDAG_KINDS
        else EMPTY,
        parallel=_parallel(raw.get("parallel"), path=_at(path, "parallel"), problems=problems)
        if kind == KIND_PARALLEL
        else None,
        worker_selector=selector,
        retry_policy=_retry_policy(
            raw.get("retry_policy"), path=_at(path, "retry_policy"), problems=problems
        ),
        continue_on_failure=_continue_on(
            raw.get("continue_on"), path=_at(path, "continue_on"), problems=problems
        ),
        timeout_sec=_timeout(
            raw.get("timeout_sec"), path=_at(path, "timeout_sec"), problems=problems
        ),
    )
    call_ref = (call_path, call) if kind in _SUBDAG_KINDS and call is not None else None
    return step, name_path, call_ref


def _command(value: object, *, path: str, problems: list[SpecProblem]) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            problems.append(SpecProblem(path, "must not be empty"))
            return None
        return value
    if isinstance(value, list):
        words: list[str] = []
        for i, word in enumerate(value):
            text = _scalar_text(word)
            if text is None:
                problems.append(
                    SpecProblem(f"{path}[{i}]", f"must be a string, got {_type_name(word)}")
                )
            else:
                words.append(text)
        if not value:
            problems.append(SpecProblem(path, "must not be empty"))
            return None
        return shlex.join(words)
    problems.append(
        SpecProblem(path, f"must be a string or a list of words, got {_type_name(value)}")
    )
    return None


def _call_target(value: object, *, path: str, problems: list[SpecProblem]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        problems.append(SpecProblem(path, "must be the name of a DAG"))
        return None
    target = value.strip()
    if "$" not in target:
        problem = dag_name_problem(target)
    elif dag_name_problem(VAR_REF.sub("x", target)):
        # Variables are expanded at run time and the result is checked again then; what
        # is written around them must already fit (`/tmp/x$` or `${DIR}/x` never will).
        problem = (
            f'invalid DAG name "{target}": outside its variables, use letters, digits, '
            '"_", "-" and "."'
        )
    else:
        problem = None
    if problem:
        problems.append(SpecProblem(path, problem))
        return None
    return target


def _executor(
    value: object, *, path: str, problems: list[SpecProblem]
) -> tuple[str | None, Mapping[object, object] | None]:
    """The explicit executor type (lower-cased) and its config, or (None, None)."""
    if value is None:
        return None, None
    if isinstance(value, str):
        raw_type: object = value
        type_path = path
        config: object = None
    elif isinstance(value, Mapping):
        _check_keys(value, allowed=_EXECUTOR_KEYS, path=path, problems=problems)
        raw_type = value.get("type")
        type_path = _at(path, "type")
        config = value.get("config")
    else:
        problems.append(
            SpecProblem(path, f"must be a type name or {{type, config}}, got {_type_name(value)}")
        )
        return None, None
    if not isinstance(raw_type, str) or not raw_type.strip():
        problems.append(SpecProblem(type_path, "must be an executor type name"))
        return None, None
    executor = raw_type.strip().lower()
    if config is None:
        return executor, None
    config_path = _at(path, "config")
    if not isinstance(config, Mapping):
        problems.append(SpecProblem(config_path, f"must be a mapping, got {_type_name(config)}"))
        return executor, None
    if executor in (*_DAG_EXECUTORS, _PARALLEL_EXECUTOR):
        _check_keys(config, allowed=_SUBDAG_CONFIG_KEYS, path=config_path, problems=problems)
    elif executor in _COMMAND_EXECUTORS and config:
        # Nothing in our shell executor is configurable; a key here would be silently ignored.
        problems.append(SpecProblem(config_path, f'executor type "{executor}" takes no config'))
    return executor, config


def _depends(value: object, *, path: str, problems: list[SpecProblem]) -> tuple[str, ...]:
    if value is None:
        return ()
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        problems.append(
            SpecProblem(path, f"must be a step name or a list of them, got {_type_name(value)}")
        )
        return ()
    names: list[str] = []
    for i, entry in enumerate(entries):
        entry_path = path if isinstance(value, str) else f"{path}[{i}]"
        if not isinstance(entry, str) or not entry.strip():
            problems.append(SpecProblem(entry_path, "must be a step name"))
        elif entry not in names:
            names.append(entry)
    return tuple(names)


def _output(value: object, *, path: str, problems: list[SpecProblem]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        problems.append(
            SpecProblem(
                path, "must be a variable name (letters, digits and _, not starting with a digit)"
            )
        )
        return None
    return value


def _parallel(value: object, *, path: str, problems: list[SpecProblem]) -> Parallel | None:
    if value is None:
        return None
    max_concurrent = DEFAULT_MAX_CONCURRENT
    items_value = value
    items_path = path
    if isinstance(value, Mapping):
        _check_keys(value, allowed=_PARALLEL_KEYS, path=path, problems=problems)
        items_value = value.get("items")
        items_path = _at(path, "items")
        raw_max = value.get("max_concurrent")
        if raw_max is not None:
            if _is_int(raw_max) and raw_max > 0:
                max_concurrent = int(raw_max)
            else:
                problems.append(SpecProblem(_at(path, "max_concurrent"), "must be an integer > 0"))
        if items_value is None:
            problems.append(SpecProblem(items_path, "is required"))
            return None
    if isinstance(items_value, str):
        if not items_value.strip():
            problems.append(SpecProblem(items_path, "must not be empty"))
            return None
        return Parallel(variable=items_value, max_concurrent=max_concurrent)
    if isinstance(items_value, list):
        if not items_value:
            problems.append(SpecProblem(items_path, "must not be empty"))
            return None
        items: list[object] = []
        for i, item in enumerate(items_value):
            normalized = _parallel_item(item)
            if normalized is None:
                problems.append(
                    SpecProblem(
                        f"{items_path}[{i}]",
                        "an item must be a string, a number, a boolean or a mapping, "
                        f"got {_type_name(item)}",
                    )
                )
            else:
                items.append(normalized)
        return Parallel(items=tuple(items), max_concurrent=max_concurrent)
    problems.append(
        SpecProblem(
            items_path,
            "must be a list of items, a variable reference such as ${ITEMS}, "
            f"or {{items, max_concurrent}}, got {_type_name(items_value)}",
        )
    )
    return None


def _parallel_item(item: object, *, nested: bool = False) -> object | None:
    """The item as JSON-able data (items reach child params as text or JSON), else None.

    A top-level item is a scalar or a mapping; inside a mapping lists and nulls are fine.
    """
    if isinstance(item, bool | int | float | str):
        return item
    if isinstance(item, date):
        return item.isoformat()
    if isinstance(item, Mapping):
        out: dict[str, object] = {}
        for key, value in item.items():
            if value is None:
                out[str(key)] = None
                continue
            normalized = _parallel_item(value, nested=True)
            if normalized is None:
                return None
            out[str(key)] = normalized
        return out
    if nested and isinstance(item, list):
        values = [None if v is None else _parallel_item(v, nested=True) for v in item]
        if any(n is None and v is not None for n, v in zip(values, item, strict=True)):
            return None
        return values
    return None


def _retry_policy(value: object, *, path: str, problems: list[SpecProblem]) -> RetryPolicy:
    if value is None:
        return RetryPolicy()
    if not isinstance(value, Mapping):
        problems.append(
            SpecProblem(path, f"must be a mapping {{limit, interval_sec}}, got {_type_name(value)}")
        )
        return RetryPolicy()
    _check_keys(value, allowed=_RETRY_KEYS, path=path, problems=problems)
    limit = value.get("limit", 0)
    interval = value.get("interval_sec", 0)
    if not _is_int(limit) or limit < 0:
        problems.append(SpecProblem(_at(path, "limit"), "must be an integer >= 0"))
        limit = 0
    if not _is_number(interval) or interval < 0:
        problems.append(SpecProblem(_at(path, "interval_sec"), "must be a number >= 0"))
        interval = 0
    return RetryPolicy(limit=int(limit), interval_sec=float(interval))


def _continue_on(value: object, *, path: str, problems: list[SpecProblem]) -> bool:
    if value is None:
        return False
    if not isinstance(value, Mapping):
        problems.append(
            SpecProblem(path, f"must be a mapping {{failure: true|false}}, got {_type_name(value)}")
        )
        return False
    _check_keys(value, allowed=_CONTINUE_ON_KEYS, path=path, problems=problems)
    failure = value.get("failure", False)
    if not isinstance(failure, bool):
        problems.append(SpecProblem(_at(path, "failure"), "must be true or false"))
        return False
    return failure


def _check_dependencies(
    steps: list[Step], step_paths: list[str], *, path: str, problems: list[SpecProblem]
) -> None:
    known = {step.name for step in steps if step.name}
    graph: dict[str, tuple[str, ...]] = {}
    for step, step_path in zip(steps, step_paths, strict=True):
        for dep in step.depends:
            if dep not in known:
                problems.append(SpecProblem(_at(step_path, "depends"), f'unknown step "{dep}"'))
        if step.name:
            graph.setdefault(step.name, tuple(d for d in step.depends if d in known))
    for cycle in _find_cycles(graph):
        problems.append(SpecProblem(path, f"dependency cycle {' -> '.join(cycle)}"))


def _find_cycles(graph: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
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


# ---- cross-document checks


def _check_dag_names(drafts: list[_Draft], problems: list[SpecProblem]) -> None:
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
            problems.append(SpecProblem(_at(draft.prefix, "name"), f'duplicate DAG name "{name}"'))
        seen.add(name)


def _check_call_targets(
    drafts: list[_Draft], *, dags_dir: Path | None, problems: list[SpecProblem]
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


def _check_call_cycles(drafts: list[_Draft], problems: list[SpecProblem]) -> None:
    # Without conditions in the language, a DAG that (indirectly) calls itself never ends.
    by_name = {d.dag.name: d for d in drafts if d.dag.name}
    graph = {
        name: tuple(t for _, t in draft.calls if t in by_name) for name, draft in by_name.items()
    }
    for cycle in _find_cycles(graph):
        draft = by_name[cycle[0]]
        path = next(p for p, t in draft.calls if t == cycle[1])
        problems.append(SpecProblem(path, f"DAG call cycle {' -> '.join(cycle)}"))


# A DAG whose calls reach more files than this is checked only that far; the run-time
# nesting limit still stops whatever cycle lies beyond.
MAX_CALLED_FILES = 200
_Node = tuple[str, str]  # (file, DAG name)


def _check_cross_file_cycles(
    drafts: list[_Draft], *, source: str, dags_dir: Path, problems: list[SpecProblem]
) -> None:
    """Call cycles through DAG files in the DAGs dir (`ping` calls `pong`, which calls
    `ping`), followed as runs resolve calls: the caller's own file first, then
    `<dags_dir>/<name>.yaml`. Cycles inside this file are _check_call_cycles' business."""
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
                    calls_in[key] = _calls_of(path)
                if target not in calls_in[key]:
                    continue
                callee = (key, target)
            graph[node].append(callee)
            todo.append(callee)

    def label(node: _Node) -> str:
        return f"{node[1]} ({source if node[0] == here else node[0]})"

    labels = {label(n): n for n in graph}
    cycles = _find_cycles({label(n): tuple(label(c) for c in cs) for n, cs in graph.items()})
    for cycle in cycles:
        nodes = [labels[text] for text in cycle]
        if all(file == here for file, _ in nodes):
            continue
        path = _blame(drafts, graph, set(nodes), here=here)
        what = (
            "DAG call cycle" if any(f == here for f, _ in nodes) else "calls into a DAG call cycle"
        )
        problems.append(SpecProblem(path, f"{what} across files {' -> '.join(cycle)}"))


def _file_key(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return str(path)


def _calls_of(path: Path) -> dict[str, list[str]]:
    """{DAG name: call targets} of a file in the DAGs dir; {} if it cannot be read."""
    try:
        dag_file = load_dag_file(path)
    except DagSpecError:
        return {}
    return {d.name: [s.call for s in d.steps if s.call] for d in dag_file.dags}


def _blame(
    drafts: list[_Draft], graph: Mapping[_Node, list[_Node]], cycle: set[_Node], *, here: str
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


# ---- small value helpers


def _key_values(
    value: object, *, path: str, allow_string: bool, problems: list[SpecProblem]
) -> Mapping[str, str]:
    """params/env: a mapping, a list of NAME=VALUE strings or one-key mappings, or (params
    only) a `NAME=VALUE ...` string. Order is kept: later env entries may refer to earlier."""
    if value is None:
        return EMPTY
    if isinstance(value, str) and allow_string:
        try:
            return MappingProxyType(parse_params_string(value))
        except ValueError as exc:
            problems.append(SpecProblem(path, str(exc)))
            return EMPTY
    pairs: list[tuple[str, object, object]] = []  # (path, key, value)
    if isinstance(value, Mapping):
        pairs = [(_at(path, str(k)), k, v) for k, v in value.items()]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            if isinstance(item, str):
                key, sep, text = item.partition("=")
                if not sep:
                    problems.append(SpecProblem(item_path, f'"{item}" is not NAME=VALUE'))
                    continue
                pairs.append((item_path, key, text))
            elif isinstance(item, Mapping) and len(item) == 1:
                ((key, text),) = item.items()
                pairs.append((item_path, key, text))
            else:
                problems.append(
                    SpecProblem(item_path, "must be a NAME=VALUE string or a one-key mapping")
                )
    else:
        forms = "a mapping, a list of NAME=VALUE" + (
            " or a NAME=VALUE string" if allow_string else ""
        )
        problems.append(SpecProblem(path, f"must be {forms}, got {_type_name(value)}"))
        return EMPTY
    result: dict[str, str] = {}
    for item_path, key, raw in pairs:
        if not isinstance(key, str) or not _NAME_RE.fullmatch(key):
            problems.append(SpecProblem(item_path, _bad_name_message(str(key))))
            continue
        text = _scalar_text(raw)
        if text is None:
            problems.append(
                SpecProblem(item_path, f"value must be a string or number, got {_type_name(raw)}")
            )
            continue
        if key in result:
            problems.append(SpecProblem(item_path, f'"{key}" is given twice'))
            continue
        result[key] = text
    return MappingProxyType(result)


def _bad_name_message(name: str) -> str:
    return f'invalid name "{name}": use letters, digits and _, not starting with a digit'


def _scalar_text(value: object) -> str | None:
    """YAML scalars as the text the author wrote (`true`, `64`); None for nested values."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return None


def _optional_str(value: object, *, path: str, problems: list[SpecProblem]) -> str | None:
    if value is None or isinstance(value, str):
        return value
    problems.append(SpecProblem(path, f"must be a string, got {_type_name(value)}"))
    return None


def _check_keys(
    raw: Mapping[object, object],
    *,
    allowed: tuple[str, ...],
    path: str,
    problems: list[SpecProblem],
) -> None:
    for key in raw:
        if key in allowed:
            continue
        hint = _spelling_hint(key, allowed) if isinstance(key, str) else None
        message = f'unknown key (did you mean "{hint}"?)' if hint else "unknown key"
        problems.append(SpecProblem(_at(path, str(key)), message))


def _spelling_hint(key: str, allowed: tuple[str, ...]) -> str | None:
    # camelCase of a snake_case key is the most common slip (the seeds mix both styles).
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower().replace("-", "_")
    if snake in allowed:
        return snake
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
    if not close:
        close = difflib.get_close_matches(snake, allowed, n=1, cutoff=0.75)
    return close[0] if close else None


def _at(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, date):
        return "date"
    return type(value).__name__


def default_dag_name(source: str) -> str:
    """The main DAG's default name: its file's stem, wherever the stored text is parsed again."""
    return Path(source).stem or "dag"


def parse_stored_dag_file(text: str, *, source: str) -> DagFile:
    """Parse a DAG file stored with a run, naming its main DAG as when it was first loaded."""
    return parse_dag_file(text, source=source, default_name=default_dag_name(source))
