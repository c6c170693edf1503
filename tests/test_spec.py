"""DAG file parsing and validation (controlplane/core/spec/). Pure: no database."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controlplane.core.spec import (
    KIND_COMMAND,
    KIND_DAG,
    KIND_PARALLEL,
    Dag,
    DagFile,
    DagSpecError,
    Parallel,
    RetryPolicy,
    SpecProblem,
    load_dag_file,
    parse_dag_file,
    parse_params_string,
    resolve_params,
)
from controlplane.core.spec.parse import PARSE_CACHE, _ParseCache

REPO = Path(__file__).resolve().parent.parent


def parse(text: str, *, default_name: str = "flow", dags_dir: Path | None = None) -> DagFile:
    return parse_dag_file(
        textwrap.dedent(text), source="test.yaml", default_name=default_name, dags_dir=dags_dir
    )


def problems(text: str, *, dags_dir: Path | None = None) -> list[str]:
    with pytest.raises(DagSpecError) as info:
        parse(text, dags_dir=dags_dir)
    return [str(p) for p in info.value.problems]


def one_step(step_yaml: str) -> str:
    """A DAG whose only step is `step_yaml` (given as the mapping's lines)."""
    body = textwrap.indent(textwrap.dedent(step_yaml).strip(), "    ")
    return "steps:\n  -" + body[3:] + "\n"


# ---- documents and the main DAG


def test_minimal_dag_gets_default_name_and_runs_in_file_order():
    dag_file = parse(
        """
        steps:
          - name: a
            command: echo a
          - name: b
            command: echo b
        """
    )
    dag = dag_file.main
    assert dag.name == "flow"
    assert [s.name for s in dag.steps] == ["a", "b"]
    assert dag.uses_graph is False
    assert dag.steps[0].kind == KIND_COMMAND
    assert dag.steps[0].executor_type == "shell"
    assert dag.steps[0].command == "echo a"
    assert dag.on_worker_lost == "redispatch"
    assert dag.max_redispatch == 3
    assert dag.timeout_sec is None
    assert dag.worker_selector == {}
    assert dag.force_local is False
    assert dag_file.source == "test.yaml"
    assert dag_file.text.startswith("\nsteps:")


def test_explicit_name_wins_over_default():
    assert parse("name: nightly\nsteps: [{name: a, command: 'true'}]").main.name == "nightly"


def test_all_dag_keys_are_read():
    dag = parse(
        """
        name: full
        description: does it all
        schedule: "0 3 * * *"
        params: A=1
        env: {B: two}
        worker_selector: {gpu: "true"}
        on_worker_lost: fail
        max_redispatch: 0
        timeout_sec: 2.5
        steps:
          - name: a
            command: echo
        """
    ).main
    assert dag.description == "does it all"
    assert dag.schedule == ("0 3 * * *",)
    assert dict(dag.params) == {"A": "1"}
    assert dict(dag.env) == {"B": "two"}
    assert dict(dag.worker_selector) == {"gpu": "true"}
    assert dag.on_worker_lost == "fail"
    assert dag.max_redispatch == 0
    assert dag.timeout_sec == 2.5


def test_parsed_objects_are_immutable():
    dag = parse("env: {A: '1'}\nsteps: [{name: a, command: 'true'}]").main
    with pytest.raises(dataclasses.FrozenInstanceError):
        dag.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        dag.env["A"] = "2"  # type: ignore[index]


def test_multi_dag_file_names_later_documents_and_skips_empty_ones():
    dag_file = parse(
        """
        ---
        steps:
          - call: child
        ---
        ---
        name: child
        steps:
          - name: c
            command: echo child
        """
    )
    assert [d.name for d in dag_file.dags] == ["flow", "child"]
    assert dag_file.get("child") is dag_file.dags[1]
    assert dag_file.get("missing") is None
    assert dag_file.main.step("step-1").call == "child"


def test_later_document_without_name_is_an_error():
    assert problems(
        """
        steps: [{name: a, command: echo}]
        ---
        steps: [{name: b, command: echo}]
        """
    ) == ["[1]: DAG at index 1 must have a name in a multi-DAG file"]


def test_duplicate_dag_name_in_one_file_is_an_error():
    assert problems(
        """
        name: same
        steps: [{name: a, command: echo}]
        ---
        name: same
        steps: [{name: b, command: echo}]
        """
    ) == ['[1].name: duplicate DAG name "same"']


def test_defaulted_main_name_clashing_with_a_later_dag_is_an_error():
    assert problems(
        """
        steps: [{name: a, command: echo}]
        ---
        name: flow
        steps: [{name: b, command: echo}]
        """
    ) == ['[1].name: duplicate DAG name "flow"']


def test_paths_in_later_documents_carry_the_document_index():
    assert problems(
        """
        steps: [{name: a, command: echo}]
        ---
        name: other
        steps:
          - name: b
            command: 7.5
        """
    ) == ["[1].steps[0].command: must be a string or a list of words, got number"]


def test_yaml_syntax_error_is_one_problem_with_line_and_column():
    with pytest.raises(DagSpecError) as info:
        parse("steps:\n  - name: a\n    command: [echo,\n")
    [problem] = info.value.problems
    assert problem.path == ""
    assert problem.message.startswith("invalid YAML at line 4, column 1:")


def test_duplicate_yaml_key_is_an_error_with_its_line():
    [message] = problems("steps:\n  - name: a\n    name: b\n    command: echo\n")
    assert message == 'invalid YAML at line 3, column 5: duplicate key "name"'


def test_yaml_merge_keys_still_work():
    dag = parse(
        """
        steps:
          - &base
            name: a
            command: echo a
            timeout_sec: 5
          - <<: *base
            name: b
        """
    ).main
    assert [(s.name, s.timeout_sec) for s in dag.steps] == [("a", 5.0), ("b", 5.0)]


def test_empty_file_is_an_error():
    assert problems("# nothing here\n") == ["no DAG defined: the file is empty"]


def test_document_that_is_not_a_mapping_is_an_error():
    assert problems("- echo hi\n") == ["a DAG must be a mapping of keys, got list"]


def test_every_problem_in_the_file_is_reported():
    found = problems(
        """
        timeout_sec: 0
        steps:
          - name: a
            comand: echo
          - name: a
            command: echo
            output: 9lives
        """
    )
    assert found == [
        'steps[0].comand: unknown key (did you mean "command"?)',
        "steps[0]: a step needs one of command, script or call",
        "steps[1].output: must be a variable name (letters, digits and _, "
        "not starting with a digit)",
        'steps[1].name: duplicate step name "a" (first used at steps[0])',
        "timeout_sec: must be a positive number",
    ]


def test_load_dag_file_defaults_the_name_to_the_file_stem(tmp_path):
    path = tmp_path / "etl-daily.yaml"
    path.write_text("steps: [{name: a, command: echo}]\n")
    dag_file = load_dag_file(path)
    assert dag_file.main.name == "etl-daily"
    assert dag_file.source == str(path)


def test_unreadable_file_is_a_problem(tmp_path):
    with pytest.raises(DagSpecError) as info:
        load_dag_file(tmp_path / "missing.yaml")
    assert [str(p) for p in info.value.problems] == ["cannot read file: No such file or directory"]


def test_file_that_is_not_utf8_is_a_problem(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"description: caf\xe9\nsteps: []\n")
    with pytest.raises(DagSpecError) as info:
        load_dag_file(path)
    assert str(info.value.problems[0]).startswith("cannot read file: not UTF-8 text")


def test_spec_error_message_joins_all_problems():
    error = DagSpecError([SpecProblem("steps", "x"), SpecProblem("", "y")])
    assert str(error) == "steps: x; y"


# ---- DAG keys


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"*/5 * * * *"', ("*/5 * * * *",)),
        ('["0 1 * * *", "@daily"]', ("0 1 * * *", "@daily")),
        ("[]", ()),
    ],
)
def test_schedule_accepts_a_cron_string_or_a_list(value, expected):
    assert (
        parse(f"schedule: {value}\nsteps: [{{name: a, command: echo}}]").main.schedule == expected
    )


def test_invalid_cron_expressions_are_reported_per_entry():
    assert problems(
        """
        schedule: ["0 1 * * *", "every day", 5]
        steps: [{name: a, command: echo}]
        """
    ) == [
        'schedule[1]: invalid cron expression "every day"',
        "schedule[2]: must be a cron expression, got integer",
    ]


def test_schedule_of_the_wrong_type_is_an_error():
    assert problems("schedule: {at: 3}\nsteps: [{name: a, command: echo}]") == [
        "schedule: must be a cron expression or a list of them, got mapping"
    ]


@pytest.mark.parametrize(
    "params",
    [
        "A=1 B='two words' C=",
        "[A=1, {B: two words}, C=]",
        "{A: 1, B: two words, C: null}",
    ],
)
def test_params_accept_string_list_and_map_forms(params):
    dag = parse(f"params: {params}\nsteps: [{{name: a, command: echo}}]").main
    assert list(dag.params.items()) == [("A", "1"), ("B", "two words"), ("C", "")]


def test_param_values_keep_the_text_yaml_read():
    dag = parse("params: {T: true, N: 64, D: 2024-01-31}\nsteps: [{name: a, command: echo}]").main
    assert dict(dag.params) == {"T": "true", "N": "64", "D": "2024-01-31"}


def test_only_true_and_false_are_booleans():
    # YAML 1.1 would turn the key ON into True and the value no into False.
    dag = parse("params: {ON: yes, OFF: no, B: TRUE}\nsteps: [{name: a, command: echo}]").main
    assert dict(dag.params) == {"ON": "yes", "OFF": "no", "B": "true"}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("A=1 loose", 'params: "loose" is not NAME=VALUE'),
        ('"A=1 B=\'x"', 'params: cannot split "A=1 B=\'x": No closing quotation'),
        ("[A=1, nope]", 'params[1]: "nope" is not NAME=VALUE'),
        ("[A=1, A=2]", 'params[1]: "A" is given twice'),
        ("[[1, 2]]", "params[0]: must be a NAME=VALUE string or a one-key mapping"),
        (
            "{my-param: x}",
            'params.my-param: invalid name "my-param": use letters, digits and _,'
            " not starting with a digit",
        ),
        ("{A: [1]}", "params.A: value must be a string or number, got list"),
        (
            "7",
            "params: must be a mapping, a list of NAME=VALUE or a NAME=VALUE string, got integer",
        ),
    ],
)
def test_bad_params_are_reported_with_their_path(params, expected):
    assert problems(f"params: {params}\nsteps: [{{name: a, command: echo}}]") == [expected]


def test_env_accepts_map_and_list_but_not_a_string():
    dag = parse("env: [A=1, {B: 2}]\nsteps: [{name: a, command: echo}]").main
    assert dict(dag.env) == {"A": "1", "B": "2"}
    assert problems("env: A=1\nsteps: [{name: a, command: echo}]") == [
        "env: must be a mapping, a list of NAME=VALUE, got string"
    ]


def test_steps_are_required_and_must_be_a_non_empty_list():
    assert problems("name: x\n") == ["steps: is required: a DAG needs at least one step"]
    assert problems("steps: []\n") == ["steps: must not be empty: a DAG needs at least one step"]
    assert problems("steps: echo\n") == ["steps: must be a list of steps, got string"]
    assert problems("steps: [echo]\n") == ["steps[0]: a step must be a mapping of keys, got string"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("on_worker_lost: retry", 'on_worker_lost: must be "redispatch" or "fail"'),
        ("max_redispatch: -1", "max_redispatch: must be an integer >= 0"),
        ("max_redispatch: 1.5", "max_redispatch: must be an integer >= 0"),
        ("max_redispatch: true", "max_redispatch: must be an integer >= 0"),
        ("timeout_sec: 0", "timeout_sec: must be a positive number"),
        ("timeout_sec: -3", "timeout_sec: must be a positive number"),
        ("timeout_sec: soon", "timeout_sec: must be a positive number"),
        ("timeout_sec: .inf", "timeout_sec: must be a positive number"),
        ("description: [a]", "description: must be a string, got list"),
        (
            "name: 'my dag'",
            'name: invalid DAG name "my dag": use letters, digits, "_", "-" and "."',
        ),
        ("name: ''", "name: must be a non-empty string"),
    ],
)
def test_wrong_dag_values_are_errors(line, expected):
    assert problems(f"{line}\nsteps: [{{name: a, command: echo}}]") == [expected]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("descripton", 'descripton: unknown key (did you mean "description"?)'),
        ("maxRedispatch", 'maxRedispatch: unknown key (did you mean "max_redispatch"?)'),
        ("timeoutSec", 'timeoutSec: unknown key (did you mean "timeout_sec"?)'),
        ("onWorkerLost", 'onWorkerLost: unknown key (did you mean "on_worker_lost"?)'),
        ("tags", "tags: unknown key"),
    ],
)
def test_unknown_dag_keys_get_a_spelling_hint_when_one_is_close(key, expected):
    assert problems(f"{key}: 1\nsteps: [{{name: a, command: echo}}]") == [expected]


# ---- steps


def test_unnamed_steps_are_named_by_their_position():
    dag = parse("steps: [{command: echo a}, {name: b, command: echo b}, {command: echo c}]").main
    assert [s.name for s in dag.steps] == ["step-1", "b", "step-3"]


def test_a_generated_name_skips_names_explicit_steps_use():
    dag = parse(
        """
        steps:
          - command: echo 1
          - {name: step-1, command: echo 2}
          - {name: step-1-2, command: echo 3}
          - command: echo 4
        """
    ).main
    assert [s.name for s in dag.steps] == ["step-1-3", "step-1", "step-1-2", "step-4"]


def test_depends_may_name_a_generated_step():
    dag = parse("steps: [{command: echo a}, {command: echo b, depends: step-1}]").main
    assert dag.steps[1].depends == ("step-1",)
    assert dag.uses_graph


def test_an_unknown_generated_name_in_depends_is_still_an_error():
    assert problems("steps: [{command: echo a}, {command: echo b, depends: step-3}]") == [
        'steps[1].depends: unknown step "step-3"'
    ]


def test_unnamed_call_steps_are_named_by_position_too():
    dag_file = parse(
        """
        steps:
          - call: child
          - call: child
        ---
        name: child
        steps: [{name: c, command: echo}]
        """
    )
    assert [(s.name, s.call) for s in dag_file.main.steps] == [
        ("step-1", "child"),
        ("step-2", "child"),
    ]


def test_a_top_level_command_without_steps_is_a_one_step_dag():
    dag_file = parse("name: once\ncommand: echo hi\n")
    assert [(s.name, s.command) for s in dag_file.main.steps] == [("step-1", "echo hi")]
    assert dag_file.warnings == ()


def test_a_top_level_command_beside_steps_is_ignored_with_a_warning():
    dag_file = parse(
        """
        steps: [{name: a, call: child}]
        ---
        name: child
        command: echo ignored
        steps: [{name: c, command: echo used}]
        """
    )
    assert [s.command for s in dag_file.get("child").steps] == ["echo used"]
    assert [str(w) for w in dag_file.warnings] == [
        "[1].command: warning: ignored because steps are given"
    ]


def test_a_bad_top_level_command_is_reported_at_command():
    assert problems("command: {a: 1}\n") == [
        "command: must be a string or a list of words, got mapping"
    ]
    assert problems("command:\n") == ["command: must not be empty"]


def test_a_selector_on_a_command_step_comes_with_a_hint():
    with pytest.raises(DagSpecError) as info:
        parse("steps: [{name: a, command: echo, workerSelector: {gpu: 'true'}}]")
    assert info.value.lines() == [
        'steps[0].workerSelector: executor type "shell" does not support worker_selector field',
        "steps[0].workerSelector: hint: to route this step, put workerSelector at the DAG "
        "level, or move the step into a sub-DAG called with call: and put workerSelector on "
        "that call step",
    ]


def test_command_list_is_joined_as_a_shell_line():
    step = parse(one_step("name: a\ncommand: [printf, '%s\\n', hello world, 3]")).main.steps[0]
    assert step.command == "printf '%s\\n' 'hello world' 3"


def test_script_with_command_as_interpreter_is_allowed():
    step = parse(one_step("name: a\ncommand: python3\nscript: print(1)")).main.steps[0]
    assert (step.command, step.script, step.kind) == ("python3", "print(1)", KIND_COMMAND)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("name: a\ndir: /tmp", ["steps[0]: a step needs one of command, script or call"]),
        ("name: a\ncommand:", ["steps[0].command: must not be empty"]),
        ("name: a\ncommand: '  '", ["steps[0].command: must not be empty"]),
        ("name: a\ncommand: []", ["steps[0].command: must not be empty"]),
        ("name: a\nscript: ''", ["steps[0].script: must not be empty"]),
        ("name: a\ncommand: [echo, [x]]", ["steps[0].command[1]: must be a string, got list"]),
        ("name: ''\ncommand: echo", ["steps[0].name: must be a non-empty string"]),
        ("name: a\ncommand: echo\ndir: 3", ["steps[0].dir: must be a string, got integer"]),
    ],
)
def test_bad_command_fields_are_reported(step, expected):
    assert problems(one_step(step)) == expected


def test_step_keys_are_read():
    step = parse(
        one_step(
            """
            name: a
            command: echo hi
            dir: /tmp
            env: {X: "1"}
            output: RESULT
            retry_policy: {limit: 2, interval_sec: 0.5}
            continue_on: {failure: true}
            timeout_sec: 3
            """
        )
    ).main.steps[0]
    assert step.dir == "/tmp"
    assert dict(step.env) == {"X": "1"}
    assert step.output == "RESULT"
    assert step.retry_policy == RetryPolicy(limit=2, interval_sec=0.5)
    assert step.continue_on_failure is True
    assert step.timeout_sec == 3.0


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("retry_policy: {limit: -1}", "steps[0].retry_policy.limit: must be an integer >= 0"),
        (
            "retry_policy: {interval_sec: x}",
            "steps[0].retry_policy.interval_sec: must be a number >= 0",
        ),
        (
            "retry_policy: 3",
            "steps[0].retry_policy: must be a mapping {limit, interval_sec}, got integer",
        ),
        (
            "retry_policy: {limit: 1, intervalSec: 2}",
            'steps[0].retry_policy.intervalSec: unknown key (did you mean "interval_sec"?)',
        ),
        (
            "continue_on: {failure: yes please}",
            "steps[0].continue_on.failure: must be true or false",
        ),
        (
            "continue_on: {failed: true}",
            'steps[0].continue_on.failed: unknown key (did you mean "failure"?)',
        ),
        ("timeout_sec: 0", "steps[0].timeout_sec: must be a positive number"),
        (
            "output: my-var",
            "steps[0].output: must be a variable name (letters, digits and _,"
            " not starting with a digit)",
        ),
        (
            "retryPolicy: {limit: 1}",
            'steps[0].retryPolicy: unknown key (did you mean "retry_policy"?)',
        ),
        (
            "continueOn: {failure: true}",
            'steps[0].continueOn: unknown key (did you mean "continue_on"?)',
        ),
        ("dependss: [b]", 'steps[0].dependss: unknown key (did you mean "depends"?)'),
        ("preconditions: []", "steps[0].preconditions: unknown key"),
    ],
)
def test_bad_step_fields_are_reported_with_their_path(field, expected):
    assert problems(one_step(f"name: a\ncommand: echo\n{field}")) == [expected]


def test_misspelled_command_gets_a_hint():
    assert problems(one_step("name: a\ncomand: echo")) == [
        'steps[0].comand: unknown key (did you mean "command"?)',
        "steps[0]: a step needs one of command, script or call",
    ]


# ---- dependencies


def test_depends_makes_the_steps_a_graph():
    dag = parse(
        """
        steps:
          - name: a
            command: echo
          - name: b
            command: echo
            depends: a
          - name: c
            command: echo
            depends: [a, b, a]
        """
    ).main
    assert dag.uses_graph is True
    assert [s.depends for s in dag.steps] == [(), ("a",), ("a", "b")]


def test_empty_depends_still_makes_a_graph():
    dag = parse("steps: [{name: a, command: echo, depends: []}, {name: b, command: echo}]").main
    assert dag.uses_graph is True


def test_unknown_dependency_is_an_error():
    assert problems(
        """
        steps:
          - name: a
            command: echo
          - name: b
            command: echo
            depends: [a, x]
        """
    ) == ['steps[1].depends: unknown step "x"']


def test_dependency_cycle_is_an_error():
    assert problems(
        """
        steps:
          - name: a
            command: echo
            depends: b
          - name: b
            command: echo
            depends: a
          - name: c
            command: echo
            depends: c
        """
    ) == ["steps: dependency cycle a -> b -> a", "steps: dependency cycle c -> c"]


def test_depends_of_the_wrong_type_is_an_error():
    assert problems(one_step("name: a\ncommand: echo\ndepends: {b: 1}")) == [
        "steps[0].depends: must be a step name or a list of them, got mapping"
    ]


# ---- sub-DAG steps

CHILD = """
---
name: child
params: P=default
steps: [{name: c, command: echo}]
"""


def test_call_step_is_a_dag_step():
    step = parse(
        one_step("name: go\ncall: child\nparams: P=1 Q=2\noutput: OUT") + CHILD
    ).main.steps[0]
    assert (step.kind, step.executor_type, step.call) == (KIND_DAG, "dag", "child")
    assert dict(step.params) == {"P": "1", "Q": "2"}
    assert step.command is None


def test_run_is_an_alias_of_call():
    step = parse(one_step("name: go\nrun: child") + CHILD).main.steps[0]
    assert (step.kind, step.call) == (KIND_DAG, "child")


def test_call_and_run_together_are_an_error():
    assert problems(one_step("name: go\ncall: child\nrun: child") + CHILD) == [
        "steps[0].run: call and run are both set; use one"
    ]


@pytest.mark.parametrize(
    ("parallel", "expected"),
    [
        ("[a, 2, {x: 1, y: [1]}]", Parallel(items=("a", 2, {"x": 1, "y": [1]}))),
        ("${ITEMS}", Parallel(variable="${ITEMS}")),
        ("{items: [a, b], max_concurrent: 3}", Parallel(items=("a", "b"), max_concurrent=3)),
        ("{items: $LIST}", Parallel(variable="$LIST", max_concurrent=10)),
    ],
)
def test_parallel_accepts_items_a_variable_or_a_mapping(parallel, expected):
    step = parse(one_step(f"name: fan\ncall: child\nparallel: {parallel}") + CHILD).main.steps[0]
    assert (step.kind, step.executor_type) == (KIND_PARALLEL, "parallel")
    assert step.parallel == expected


@pytest.mark.parametrize(
    ("parallel", "expected"),
    [
        ("[]", "steps[0].parallel: must not be empty"),
        (
            "{items: [a], max_concurrent: 0}",
            "steps[0].parallel.max_concurrent: must be an integer > 0",
        ),
        ("{max_concurrent: 2}", "steps[0].parallel.items: is required"),
        (
            "[a, null]",
            "steps[0].parallel[1]: an item must be a string, a number, a boolean or a"
            " mapping, got null",
        ),
        (
            "7",
            "steps[0].parallel: must be a list of items, a variable reference such as ${ITEMS},"
            " or {items, max_concurrent}, got integer",
        ),
        (
            "{items: [a], maxConcurrent: 2}",
            'steps[0].parallel.maxConcurrent: unknown key (did you mean "max_concurrent"?)',
        ),
    ],
)
def test_bad_parallel_values_are_reported(parallel, expected):
    assert problems(one_step(f"name: fan\ncall: child\nparallel: {parallel}") + CHILD) == [expected]


def test_parallel_without_call_is_an_error():
    assert problems(one_step("name: fan\ncommand: echo\nparallel: [a]")) == [
        "steps[0].parallel: only a step that calls a DAG can be parallel"
    ]


def test_params_on_a_command_step_are_an_error():
    assert problems(one_step("name: a\ncommand: echo\nparams: A=1")) == [
        "steps[0].params: only a step that calls a DAG takes params"
    ]


def test_call_with_command_is_an_error():
    assert problems(one_step("name: a\ncall: child\ncommand: echo") + CHILD) == [
        "steps[0]: a step that calls a DAG cannot have command or script"
    ]


@pytest.mark.parametrize(
    ("executor", "kind", "executor_type"),
    [
        ("dag", KIND_DAG, "dag"),
        ("subworkflow", KIND_DAG, "subworkflow"),
        ("{type: subworkflow}", KIND_DAG, "subworkflow"),
    ],
)
def test_explicit_sub_dag_executor_sets_kind_and_type(executor, kind, executor_type):
    step = parse(one_step(f"name: go\ncall: child\nexecutor: {executor}") + CHILD).main.steps[0]
    assert (step.kind, step.executor_type, step.call) == (kind, executor_type, "child")


def test_explicit_parallel_executor_needs_parallel_items():
    step = parse(
        one_step("name: go\ncall: child\nexecutor: parallel\nparallel: [a]") + CHILD
    ).main.steps[0]
    assert (step.kind, step.executor_type) == (KIND_PARALLEL, "parallel")
    assert problems(one_step("name: go\ncall: child\nexecutor: parallel") + CHILD) == [
        'steps[0]: executor type "parallel" needs a parallel field'
    ]


def test_executor_config_dag_names_the_child():
    step = parse(
        one_step("name: go\nexecutor: {type: dag, config: {dag: child}}") + CHILD
    ).main.steps[0]
    assert (step.kind, step.call) == (KIND_DAG, "child")


def test_sub_dag_executor_without_a_child_is_an_error():
    assert problems(one_step("name: go\nexecutor: dag")) == [
        'steps[0]: executor type "dag" needs the DAG to run in call (or executor.config.dag)'
    ]


def test_executor_config_dag_must_agree_with_call():
    assert problems(
        one_step("name: go\ncall: child\nexecutor: {type: dag, config: {dag: other}}") + CHILD
    ) == ['steps[0].executor.config.dag: "other" conflicts with call "child"']


@pytest.mark.parametrize("executor", ["shell", "command", "{type: command}"])
def test_shell_and_command_executors_run_commands(executor):
    step = parse(one_step(f"name: a\ncommand: echo\nexecutor: {executor}")).main.steps[0]
    assert step.kind == KIND_COMMAND
    assert step.executor_type == executor.strip("{}").removeprefix("type: ")


@pytest.mark.parametrize(
    ("executor", "expected"),
    [
        ("docker", 'steps[0].executor: executor type "docker" is not supported'),
        (
            "{type: http, config: {url: x}}",
            'steps[0].executor: executor type "http" is not supported',
        ),
        ("{config: {}}", "steps[0].executor.type: must be an executor type name"),
        (
            "{type: shell, config: {shell: bash}}",
            'steps[0].executor.config: executor type "shell" takes no config',
        ),
        (
            "{type: dag, config: {dagg: x}}",
            'steps[0].executor.config.dagg: unknown key (did you mean "dag"?)',
        ),
        ("{kind: shell}", "steps[0].executor.kind: unknown key"),
        ("[shell]", "steps[0].executor: must be a type name or {type, config}, got list"),
    ],
)
def test_bad_executors_are_reported(executor, expected):
    assert expected in problems(one_step(f"name: a\ncommand: echo\nexecutor: {executor}") + CHILD)


def test_shell_executor_cannot_call_a_dag():
    assert problems(one_step("name: a\ncall: child\nexecutor: shell") + CHILD) == [
        'steps[0].call: executor type "shell" cannot call a DAG'
    ]


# ---- worker_selector


@pytest.mark.parametrize("key", ["worker_selector", "workerSelector"])
def test_dag_level_selector_is_a_normalised_label_map(key):
    dag = parse(
        f"""
        {key}:
          gpu: true
          memory: 64
          " region ": " eu-west-1 "
        steps: [{{name: a, command: echo}}]
        """
    ).main
    assert dict(dag.worker_selector) == {"gpu": "true", "memory": "64", "region": "eu-west-1"}
    assert dag.force_local is False


@pytest.mark.parametrize("value", ["local", "' LOCAL '", "Local"])
def test_dag_level_local_forces_the_main_instance(value):
    dag = parse(f"worker_selector: {value}\nsteps: [{{name: a, command: echo}}]").main
    assert dag.force_local is True
    assert dag.worker_selector == {}


def test_dag_level_selector_string_other_than_local_is_an_error():
    # Issue case 2.
    assert problems("worker_selector: ' remote '\nsteps: [{name: a, command: echo}]") == [
        'worker_selector: unsupported worker_selector string value "remote"; '
        'the only allowed string value is "local"'
    ]


def test_selector_error_path_uses_the_spelling_in_the_file():
    assert problems("workerSelector: remote\nsteps: [{name: a, command: echo}]") == [
        'workerSelector: unsupported worker_selector string value "remote"; '
        'the only allowed string value is "local"'
    ]


def test_both_selector_spellings_on_one_object_are_an_error():
    assert problems(
        "worker_selector: {a: b}\nworkerSelector: {a: b}\nsteps: [{name: a, command: echo}]"
    ) == ["workerSelector: worker_selector and workerSelector are both set; use one"]
    assert problems(
        one_step("name: go\ncall: child\nworker_selector: {a: b}\nworkerSelector: {a: b}") + CHILD
    ) == ["steps[0].workerSelector: worker_selector and workerSelector are both set; use one"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{gpu: {nested: 1}}", 'worker_selector: label "gpu": nested values are not allowed'),
        ("{1: x}", "worker_selector: label keys must be strings, got int 1"),
        ("[gpu]", 'worker_selector: must be a mapping of labels or "local", got list'),
    ],
)
def test_bad_dag_level_selectors_are_reported(value, expected):
    assert problems(f"worker_selector: {value}\nsteps: [{{name: a, command: echo}}]") == [expected]


@pytest.mark.parametrize(
    "step",
    [
        "name: go\ncall: child\nworker_selector: {gpu: true}",
        "name: go\nrun: child\nworkerSelector: {gpu: true}",
        "name: go\ncall: child\nparallel: [a]\nworker_selector: {gpu: true}",
        "name: go\ncall: child\nexecutor: subworkflow\nworker_selector: {gpu: true}",
    ],
)
def test_step_level_selector_is_allowed_on_sub_dag_steps(step):
    parsed = parse(one_step(step) + CHILD).main.steps[0]
    assert dict(parsed.worker_selector) == {"gpu": "true"}


def test_step_level_selector_on_a_command_step_is_an_error():
    # Issue case 1, with the error on the third step as in SPEC section 4.
    assert problems(
        """
        steps:
          - name: a
            command: echo a
          - name: b
            command: echo b
          - name: c
            command: echo c
            worker_selector:
              gpu: "true"
        """
    ) == ['steps[2].worker_selector: executor type "shell" does not support worker_selector field']


@pytest.mark.parametrize(
    ("executor", "type_name"),
    [("command", "command"), ("shell", "shell"), ("docker", "docker")],
)
def test_step_level_selector_error_names_the_step_type(executor, type_name):
    found = problems(
        one_step(f"name: a\ncommand: echo\nexecutor: {executor}\nworkerSelector: {{gpu: 'true'}}")
    )
    expected = f'executor type "{type_name}" does not support worker_selector field'
    assert f"steps[0].workerSelector: {expected}" in found


def test_step_level_selector_on_a_script_step_is_an_error():
    assert problems(one_step("name: a\nscript: echo hi\nworker_selector: {}")) == [
        'steps[0].worker_selector: executor type "shell" does not support worker_selector field'
    ]


def test_step_level_selector_must_be_a_map():
    assert problems(one_step("name: go\ncall: child\nworker_selector: local") + CHILD) == [
        'steps[0].worker_selector: must be a mapping of labels; the string "local" is only '
        "allowed at DAG level"
    ]


# ---- call targets


def test_call_of_a_dag_in_the_same_file_needs_no_dags_dir():
    dag_file = parse(one_step("name: go\ncall: child") + CHILD, dags_dir=None)
    step = dag_file.main.step("go")
    assert (step.kind, step.call) == (KIND_DAG, "child")
    assert dag_file.get("child") is dag_file.dags[1]


def test_unknown_call_target_is_an_error_when_the_dags_dir_is_known(tmp_path):
    assert problems(one_step("name: go\ncall: elsewhere"), dags_dir=tmp_path) == [
        f'steps[0].call: unknown DAG "elsewhere": not in this file nor in {tmp_path}'
    ]


def test_unknown_call_target_in_a_later_dag_names_its_document(tmp_path):
    found = problems(
        one_step("name: go\ncall: child")
        + "---\nname: child\nsteps:\n  - name: c\n    run: missing\n",
        dags_dir=tmp_path,
    )
    assert found == [f'[1].steps[0].run: unknown DAG "missing": not in this file nor in {tmp_path}']


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_call_target_in_the_dags_dir_is_found(tmp_path, suffix):
    (tmp_path / f"elsewhere{suffix}").write_text("steps: [{name: a, command: echo}]\n")
    dag_file = parse(one_step("name: go\ncall: elsewhere"), dags_dir=tmp_path)
    assert dag_file.main.step("go").call == "elsewhere"
    assert dag_file.get("elsewhere") is None  # it stays in its own file
    assert problems(one_step("name: go\ncall: missing"), dags_dir=tmp_path) == [
        f'steps[0].call: unknown DAG "missing": not in this file nor in {tmp_path}'
    ]


def test_call_target_is_not_checked_without_a_dags_dir():
    step = parse(one_step("name: go\ncall: elsewhere")).main.step("go")
    assert (step.kind, step.call) == (KIND_DAG, "elsewhere")


def test_call_target_with_a_variable_is_left_to_run_time(tmp_path):
    step = parse(one_step("name: go\ncall: ${CHILD}"), dags_dir=tmp_path).main.step("go")
    assert (step.kind, step.call) == (KIND_DAG, "${CHILD}")


def test_call_target_must_be_a_plain_dag_name():
    assert problems(one_step("name: go\ncall: ../etc/passwd")) == [
        'steps[0].call: invalid DAG name "../etc/passwd": use letters, digits, "_", "-" and "."'
    ]


def test_dags_calling_each_other_in_a_loop_are_an_error():
    assert problems(
        """
        name: a
        steps: [{call: b}]
        ---
        name: b
        steps: [{call: a}]
        """
    ) == ["steps[0].call: DAG call cycle a -> b -> a"]


# ---- params helpers


def test_parse_params_string_splits_like_a_shell():
    assert parse_params_string("A=1 B='a b' C=\"x=y\" D=") == {
        "A": "1",
        "B": "a b",
        "C": "x=y",
        "D": "",
    }
    assert parse_params_string("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A=1 B", '"B" is not NAME=VALUE'),
        ("=1", 'invalid name "": use letters, digits and _, not starting with a digit'),
        ("A=1 A=2", 'parameter "A" is given twice'),
        ("A='1", 'cannot split "A=\'1": No closing quotation'),
    ],
)
def test_parse_params_string_rejects_bad_words_with_value_error(text, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        parse_params_string(text)


def test_resolve_params_applies_overrides_and_appends_undeclared_keys():
    dag = parse("params: A=1 B=2\nsteps: [{name: a, command: echo}]").main
    resolved = resolve_params(dag, {"B": "20", "EXTRA": "x"})
    assert list(resolved.items()) == [("A", "1"), ("B", "20"), ("EXTRA", "x")]
    assert resolve_params(dag, {}) == {"A": "1", "B": "2"}


def test_dag_step_lookup_raises_key_error_for_unknown_names():
    dag = Dag(name="d", steps=())
    with pytest.raises(KeyError):
        dag.step("nope")


# ---- process boundary


def test_spec_module_imports_no_django():
    # The worker agent imports controlplane.core.spec and must not need Django settings.
    code = (
        "import sys, controlplane.core.spec; "
        "bad = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')); "
        "print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---- protected variables


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES", "PATH", "BASH_ENV", "IFS",
             "PYTHONPATH", "NODE_OPTIONS", "DAG_RUN_ID", "WORKER_ID"],
)  # fmt: skip
def test_params_string_refuses_a_protected_variable(name):
    with pytest.raises(ValueError, match=f'^"{name}" is a protected variable'):
        parse_params_string(f"A=1 {name}=x")


def test_names_that_only_look_protected_are_free():
    assert parse_params_string("LD=1 MY_PATH=2 path=3 ENVIRONMENT=4") == {
        "LD": "1",
        "MY_PATH": "2",
        "path": "3",
        "ENVIRONMENT": "4",
    }


def test_protected_names_in_a_dag_file_are_reported_with_their_path():
    assert problems(
        """
        env: [PATH=/tmp/evil]
        params: {LD_PRELOAD: x.so}
        steps:
          - name: a
            command: echo
            env: {DAG_NAME: other}
            output: BASH_ENV
        """
    ) == [
        'steps[0].env.DAG_NAME: "DAG_NAME" is a protected variable: params and env cannot set it',
        'steps[0].output: "BASH_ENV" is a protected variable: params and env cannot set it',
        'params.LD_PRELOAD: "LD_PRELOAD" is a protected variable: params and env cannot set it',
        'env[0]: "PATH" is a protected variable: params and env cannot set it',
    ]


def test_resolve_params_refuses_a_protected_override():
    dag = parse("steps: [{name: a, command: echo}]").main
    with pytest.raises(ValueError, match='"LD_PRELOAD" is a protected variable'):
        resolve_params(dag, {"LD_PRELOAD": "/tmp/x.so"})


# --------------------------------------------------------------------------- parse cache


def test_a_dag_file_is_parsed_once_while_it_is_unchanged(tmp_path):
    path = tmp_path / "hot.yaml"
    path.write_text("steps:\n  - name: a\n    command: echo one\n")
    first = load_dag_file(path)
    assert load_dag_file(path) is first


def test_a_changed_dag_file_is_parsed_again_even_with_the_same_size_and_mtime(tmp_path):
    path = tmp_path / "hot.yaml"
    path.write_text("steps:\n  - name: a\n    command: echo one\n")
    stat = path.stat()
    assert load_dag_file(path).main.steps[0].command == "echo one"
    path.write_text("steps:\n  - name: a\n    command: echo two\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert load_dag_file(path).main.steps[0].command == "echo two"


def test_a_file_calling_other_files_is_checked_again_when_they_change(tmp_path):
    (tmp_path / "child.yaml").write_text("steps: [{name: a, command: echo}]\n")
    caller = tmp_path / "caller.yaml"
    caller.write_text("steps:\n  - name: go\n    call: child\n")
    assert load_dag_file(caller, dags_dir=tmp_path).main.steps[0].call == "child"
    (tmp_path / "child.yaml").unlink()
    with pytest.raises(DagSpecError, match='unknown DAG "child"'):
        load_dag_file(caller, dags_dir=tmp_path)


def test_the_parse_cache_is_bounded_and_drops_the_least_recently_used():
    cache = _ParseCache(max_entries=2, max_text_chars=100)
    one, two, three = (parse(f"steps: [{{name: s{i}, command: echo}}]") for i in range(3))
    cache.put(("1", "s", "n", None), one)
    cache.put(("2", "s", "n", None), two)
    assert cache.get(("1", "s", "n", None)) is one  # now the most recently used
    cache.put(("3", "s", "n", None), three)
    assert len(cache) == 2
    assert cache.get(("2", "s", "n", None)) is None
    assert cache.get(("1", "s", "n", None)) is one
    cache.put(("x" * 101, "s", "n", None), one)  # too big to keep
    assert cache.get(("x" * 101, "s", "n", None)) is None
    for i in range(PARSE_CACHE.max_entries + 10):
        parse(f"steps: [{{name: bounded{i}, command: echo}}]")
    assert len(PARSE_CACHE) == PARSE_CACHE.max_entries
