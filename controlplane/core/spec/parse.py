"""DAG YAML -> the objects of `spec.model`: each document, its DAG, steps and fields.

The rules every problem follows (paths, spelling, collecting rather than raising) are in
the package docstring (`controlplane/core/spec/__init__.py`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import shlex
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import TypeGuard

from croniter import croniter

from controlplane.core.labels import LabelError, normalize_label_map
from controlplane.core.spec.checks import (
    Draft,
    check_call_cycles,
    check_call_targets,
    check_cross_file_cycles,
    check_dag_names,
)
from controlplane.core.spec.graph import find_cycles
from controlplane.core.spec.model import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_REDISPATCH,
    EMPTY,
    KIND_COMMAND,
    KIND_DAG,
    KIND_PARALLEL,
    NAME_RE,
    VAR_REF,
    Dag,
    DagFile,
    DagSpecError,
    Parallel,
    RetryPolicy,
    SpecProblem,
    Step,
    bad_name_message,
    dag_name_problem,
    default_dag_name,
    join_path,
    protected_name_problem,
)
from controlplane.core.spec.params import parse_params_string
from controlplane.core.yamlload import YamlError, load_all

# ---- public functions


def parse_dag_file(
    text: str, *, source: str, default_name: str, dags_dir: Path | None = None
) -> DagFile:
    """Parse and validate every DAG in `text`; raise DagSpecError listing all problems.

    `default_name` names the main DAG when it has no `name:`. With `dags_dir`, a `call` of a
    DAG that is not in this file must have a `<dags_dir>/<name>.yaml` (or `.yml`).

    A hot DAG is parsed once: the result is kept in a bounded cache keyed by the text itself
    (so a changed file is parsed again), unless it depends on other files (see `_ParseCache`).
    """
    key = (text, source, default_name, None if dags_dir is None else str(dags_dir))
    cached = PARSE_CACHE.get(key)
    if cached is not None:
        return cached
    dag_file, self_contained = _parse_dag_file(
        text, source=source, default_name=default_name, dags_dir=dags_dir
    )
    if dags_dir is None or self_contained:
        PARSE_CACHE.put(key, dag_file)
    return dag_file


class _ParseCache:
    """Parsed files by (text, source, default name, DAGs dir); least recently used goes first.

    Keyed by the whole text rather than a path's mtime: a file rewritten within the mtime
    granularity is still parsed again, and reading a DAG file costs far less than parsing it.
    A file whose steps call DAGs of other files is only cached when parsed without a DAGs
    dir: with one, its validity depends on those files, which may change on their own.
    Parsed objects are frozen, so callers share them safely.
    """

    def __init__(self, *, max_entries: int, max_text_chars: int) -> None:
        self.max_entries, self.max_text_chars = max_entries, max_text_chars
        self._entries: OrderedDict[tuple[str, str, str, str | None], DagFile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str, str | None]) -> DagFile | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[str, str, str, str | None], dag_file: DagFile) -> None:
        if len(key[0]) > self.max_text_chars:
            return  # a huge file would pin its text in memory for little gain
        with self._lock:
            self._entries[key] = dag_file
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


PARSE_CACHE = _ParseCache(max_entries=256, max_text_chars=256 * 1024)


def _parse_dag_file(
    text: str, *, source: str, default_name: str, dags_dir: Path | None
) -> tuple[DagFile, bool]:
    """The parsed file, and whether it calls no DAG outside itself."""
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
    check_dag_names(drafts, problems)
    check_call_targets(drafts, dags_dir=dags_dir, problems=problems)
    check_call_cycles(drafts, problems)
    if dags_dir is not None and not problems:
        check_cross_file_cycles(
            drafts, source=source, dags_dir=dags_dir, load=load_dag_file, problems=problems
        )
    if problems:
        raise DagSpecError(problems)
    dag_file = DagFile(
        source=source, text=text, dags=tuple(d.dag for d in drafts), warnings=tuple(warnings)
    )
    in_file = {d.dag.name for d in drafts}
    self_contained = all(target in in_file for d in drafts for _, target in d.calls)
    return dag_file, self_contained


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


# ---- YAML loading


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


def _parse_document(
    raw: object,
    *,
    index: int,
    default_name: str,
    problems: list[SpecProblem],
    warnings: list[SpecProblem],
) -> Draft:
    prefix = "" if index == 0 else f"[{index}]"
    draft = Draft(index=index, prefix=prefix, dag=Dag(name="", steps=()), name_given=False)
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
        name = (
            _dag_name(raw_name, path=join_path(prefix, "name"), problems=problems) or default_name
        )
    elif index == 0 and not default_name:
        problems.append(SpecProblem(join_path(prefix, "name"), "name is required"))

    selector_key, raw_selector = _pick_selector(raw, path=prefix, problems=problems)
    selector, force_local = _dag_selector(
        raw_selector, path=join_path(prefix, selector_key), problems=problems
    )
    if "command" in raw and raw.get("steps") is not None:
        warnings.append(
            SpecProblem(join_path(prefix, "command"), "warning: ignored because steps are given")
        )
        steps, calls, uses_graph = _parse_steps(raw["steps"], prefix=prefix, problems=problems)
    elif "command" in raw:
        # A one-step DAG: the command is its step, named as an unnamed first step would be.
        command = _command(raw["command"], path=join_path(prefix, "command"), problems=problems)
        if raw["command"] is None:
            problems.append(SpecProblem(join_path(prefix, "command"), "must not be empty"))
        steps = (Step(name=_generated_step_name(1, set()), command=command),) if command else ()
        calls, uses_graph = [], False
    else:
        steps, calls, uses_graph = _parse_steps(raw.get("steps"), prefix=prefix, problems=problems)
    draft.calls = calls
    draft.dag = Dag(
        name=name,
        steps=steps,
        description=_optional_str(
            raw.get("description"), path=join_path(prefix, "description"), problems=problems
        )
        or "",
        schedule=_schedule(
            raw.get("schedule"), path=join_path(prefix, "schedule"), problems=problems
        ),
        params=_key_values(
            raw.get("params"),
            path=join_path(prefix, "params"),
            allow_string=True,
            problems=problems,
        ),
        env=_key_values(
            raw.get("env"), path=join_path(prefix, "env"), allow_string=False, problems=problems
        ),
        worker_selector=selector,
        force_local=force_local,
        on_worker_lost=_on_worker_lost(
            raw.get("on_worker_lost"), path=join_path(prefix, "on_worker_lost"), problems=problems
        ),
        max_redispatch=_max_redispatch(
            raw.get("max_redispatch"), path=join_path(prefix, "max_redispatch"), problems=problems
        ),
        timeout_sec=_timeout(
            raw.get("timeout_sec"), path=join_path(prefix, "timeout_sec"), problems=problems
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
                join_path(path, "workerSelector"),
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
    path = join_path(prefix, "steps")
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

    command = _command(raw.get("command"), path=join_path(path, "command"), problems=problems)
    script = _optional_str(raw.get("script"), path=join_path(path, "script"), problems=problems)
    if script is not None and not script.strip():
        problems.append(SpecProblem(join_path(path, "script"), "must not be empty"))
    for key in ("command", "script"):
        # `command:` with nothing after it is a half-written step, not "no command".
        if key in raw and raw[key] is None:
            problems.append(SpecProblem(join_path(path, key), "must not be empty"))

    call_key = "call"
    if "call" in raw and "run" in raw:
        problems.append(SpecProblem(join_path(path, "run"), "call and run are both set; use one"))
    elif "run" in raw:
        call_key = "run"
    call = None
    if call_key in raw:
        call = _call_target(raw[call_key], path=join_path(path, call_key), problems=problems)
    call_path = join_path(path, call_key)

    executor, config = _executor(
        raw.get("executor"), path=join_path(path, "executor"), problems=problems
    )
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
                        join_path(path, "executor"), f'executor type "{executor}" is not supported'
                    )
                )

    config_dag = config.get("dag") if config else None
    if kind in _SUBDAG_KINDS:
        if config_dag is not None:
            config_path = join_path(path, "executor.config.dag")
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
                    join_path(path, call_key),
                    f'executor type "{executor_type}" cannot call a DAG',
                )
            )
        elif command is None and script is None and "command" not in raw and "script" not in raw:
            problems.append(SpecProblem(path, "a step needs one of command, script or call"))
        if has_parallel:
            problems.append(
                SpecProblem(
                    join_path(path, "parallel"), "only a step that calls a DAG can be parallel"
                )
            )
        if raw.get("params") is not None:
            problems.append(
                SpecProblem(join_path(path, "params"), "only a step that calls a DAG takes params")
            )

    selector_key, raw_selector = _pick_selector(raw, path=path, problems=problems)
    selector: Mapping[str, str] = EMPTY
    if raw_selector is not None:
        selector_path = join_path(path, selector_key)
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
    name_path = join_path(path, "name")
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
        depends=_depends(raw.get("depends"), path=join_path(path, "depends"), problems=problems),
        dir=_optional_str(raw.get("dir"), path=join_path(path, "dir"), problems=problems),
        env=_key_values(
            raw.get("env"), path=join_path(path, "env"), allow_string=False, problems=problems
        ),
        output=_output(raw.get("output"), path=join_path(path, "output"), problems=problems),
        call=call if kind in _SUBDAG_KINDS else None,
        params=_key_values(
            raw.get("params"), path=join_path(path, "params"), allow_string=True, problems=problems
        )
        if kind in _SUBDAG_KINDS
        else EMPTY,
        parallel=_parallel(raw.get("parallel"), path=join_path(path, "parallel"), problems=problems)
        if kind == KIND_PARALLEL
        else None,
        worker_selector=selector,
        retry_policy=_retry_policy(
            raw.get("retry_policy"), path=join_path(path, "retry_policy"), problems=problems
        ),
        continue_on_failure=_continue_on(
            raw.get("continue_on"), path=join_path(path, "continue_on"), problems=problems
        ),
        timeout_sec=_timeout(
            raw.get("timeout_sec"), path=join_path(path, "timeout_sec"), problems=problems
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
        type_path = join_path(path, "type")
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
    config_path = join_path(path, "config")
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
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        problems.append(
            SpecProblem(
                path, "must be a variable name (letters, digits and _, not starting with a digit)"
            )
        )
        return None
    if problem := protected_name_problem(value):
        problems.append(SpecProblem(path, problem))
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
        items_path = join_path(path, "items")
        raw_max = value.get("max_concurrent")
        if raw_max is not None:
            if _is_int(raw_max) and raw_max > 0:
                max_concurrent = int(raw_max)
            else:
                problems.append(
                    SpecProblem(join_path(path, "max_concurrent"), "must be an integer > 0")
                )
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
        problems.append(SpecProblem(join_path(path, "limit"), "must be an integer >= 0"))
        limit = 0
    if not _is_number(interval) or interval < 0:
        problems.append(SpecProblem(join_path(path, "interval_sec"), "must be a number >= 0"))
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
        problems.append(SpecProblem(join_path(path, "failure"), "must be true or false"))
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
                problems.append(
                    SpecProblem(join_path(step_path, "depends"), f'unknown step "{dep}"')
                )
        if step.name:
            graph.setdefault(step.name, tuple(d for d in step.depends if d in known))
    for cycle in find_cycles(graph):
        problems.append(SpecProblem(path, f"dependency cycle {' -> '.join(cycle)}"))


# ---- cross-document checks


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
        pairs = [(join_path(path, str(k)), k, v) for k, v in value.items()]
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
                ((only_key, only_value),) = item.items()
                pairs.append((item_path, only_key, only_value))
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
    for item_path, name, raw in pairs:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            problems.append(SpecProblem(item_path, bad_name_message(str(name))))
            continue
        if problem := protected_name_problem(name):
            problems.append(SpecProblem(item_path, problem))
            continue
        scalar = _scalar_text(raw)
        if scalar is None:
            problems.append(
                SpecProblem(item_path, f"value must be a string or number, got {_type_name(raw)}")
            )
            continue
        if name in result:
            problems.append(SpecProblem(item_path, f'"{name}" is given twice'))
            continue
        result[name] = scalar
    return MappingProxyType(result)


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
        problems.append(SpecProblem(join_path(path, str(key)), message))


def _spelling_hint(key: str, allowed: tuple[str, ...]) -> str | None:
    # camelCase of a snake_case key is the most common slip (the seeds mix both styles).
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower().replace("-", "_")
    if snake in allowed:
        return snake
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
    if not close:
        close = difflib.get_close_matches(snake, allowed, n=1, cutoff=0.75)
    return close[0] if close else None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
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


def parse_stored_dag_file(text: str, *, source: str) -> DagFile:
    """Parse a DAG file stored with a run, naming its main DAG as when it was first loaded."""
    return parse_dag_file(text, source=source, default_name=default_dag_name(source))
