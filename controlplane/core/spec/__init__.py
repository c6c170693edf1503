"""DAG YAML -> validated, immutable objects. No Django imports: the worker agent uses this.

Modules: `model` (the objects, problems and naming rules), `parse` (YAML documents to those
objects), `checks` (across the DAGs of a file and the files it calls), `graph` (cycles),
`params` (run parameters). Callers import from the package.

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

from controlplane.core.spec.checks import find_in_dags_dir
from controlplane.core.spec.model import (
    KIND_COMMAND,
    KIND_DAG,
    KIND_PARALLEL,
    VAR_REF,
    Dag,
    DagFile,
    DagSpecError,
    Parallel,
    RetryPolicy,
    SpecProblem,
    Step,
    dag_name_problem,
    default_dag_name,
    expand_vars,
    is_protected_env_name,
    protected_name_problem,
)
from controlplane.core.spec.params import parse_params_string, resolve_params
from controlplane.core.spec.parse import load_dag_file, parse_dag_file, parse_stored_dag_file

__all__ = [
    "KIND_COMMAND",
    "KIND_DAG",
    "KIND_PARALLEL",
    "VAR_REF",
    "Dag",
    "DagFile",
    "DagSpecError",
    "Parallel",
    "RetryPolicy",
    "SpecProblem",
    "Step",
    "dag_name_problem",
    "default_dag_name",
    "expand_vars",
    "find_in_dags_dir",
    "is_protected_env_name",
    "load_dag_file",
    "parse_dag_file",
    "parse_params_string",
    "parse_stored_dag_file",
    "protected_name_problem",
    "resolve_params",
]
