"""Hostile and surprising YAML: one loader for config and DAG files, refusing with one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from controlplane.core.config import ConfigError, resolve
from controlplane.core.labels import matches
from controlplane.core.spec import DagSpecError, parse_dag_file
from controlplane.core.yamlload import MAX_DEPTH, YamlError, load_all, load_one
from tests.roles import user_with_role
from tests.test_validate_command import run_validate

# 457 bytes in the report; nine levels of ten expand to a billion strings.
ALIAS_BOMB = "\n".join(
    [
        'lol: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)),
        "steps:",
        "  - name: a",
        "    command: echo",
        "    env: *l8",
    ]
)
RECURSIVE = "steps: &r [{name: a, command: echo}, *r]\n"


def dag_problems(text: str) -> list[str]:
    with pytest.raises(DagSpecError) as excinfo:
        parse_dag_file(text, source="t.yaml", default_name="t")
    return [str(p) for p in excinfo.value.problems]


def config_problem(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={}, config_file=path)
    return str(excinfo.value)


# ---- one loader, one meaning


def test_a_label_reads_the_same_in_a_config_file_and_in_a_dag_selector(tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text("worker:\n  labels:\n    country: no\n    eu: on\n")
    labels = resolve(env={}, config_file=config_file).worker.labels
    assert dict(labels) == {"country": "no", "eu": "on"}
    dag = parse_dag_file(
        "worker_selector: {country: no, eu: on}\nsteps: [{name: a, command: echo}]\n",
        source="t.yaml",
        default_name="t",
    ).main
    assert matches(labels, dag.worker_selector)


def test_booleans_are_only_true_and_false():
    assert load_one("a: yes\nb: off\nc: true\nd: FALSE\n") == {
        "a": "yes",
        "b": "off",
        "c": True,
        "d": False,
    }


def test_a_key_given_twice_is_refused_in_config_files_too(tmp_path):
    problem = config_problem(tmp_path, "worker:\n  id: a\n  id: b\n")
    assert problem.endswith('invalid YAML at line 3, column 3: duplicate key "id"')


def test_several_documents_in_a_config_file_are_refused(tmp_path):
    problem = config_problem(tmp_path, "worker: {id: a}\n---\nworker: {id: b}\n")
    assert problem.endswith("expected a single document, found several separated by ---")


# ---- alias bombs, recursive aliases, deep nesting


def test_an_alias_bomb_is_refused_with_one_line():
    assert len(ALIAS_BOMB) < 800
    assert dag_problems(ALIAS_BOMB) == [
        "invalid YAML at line 1, column 1: aliases expand to more than 100,000 extra nodes"
    ]


def test_an_alias_bomb_in_a_config_file_is_refused(tmp_path):
    bomb = ALIAS_BOMB.split("\nsteps:")[0] + "\nworker:\n  labels: *l8\n"
    problem = config_problem(tmp_path, bomb)
    assert problem.endswith("aliases expand to more than 100,000 extra nodes")


def test_modest_aliases_are_fine():
    text = textwrap.dedent(
        """
        steps:
          - {name: a, command: echo, env: &env {A: "1", B: "2"}}
          - {name: b, command: echo, env: *env}
        """
    )
    dag = parse_dag_file(text, source="t.yaml", default_name="t").main
    assert dict(dag.step("b").env) == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (RECURSIVE, "line 1, column 8"),
        ("a: &m {b: *m}\n", "line 1, column 4"),
        ("steps:\n  - &s {name: a, command: echo, env: {X: *s}}\n", "line 2, column 5"),
    ],
)
def test_a_recursive_alias_is_refused_with_one_line(text, where):
    assert dag_problems(text) == [
        f"invalid YAML at {where}: recursive alias: an anchor is used inside itself"
    ]


def test_deep_nesting_is_refused_before_anything_recurses():
    text = "steps: " + "[" * 5000 + "]" * 5000 + "\n"
    (problem,) = dag_problems(text)
    assert problem.endswith(f"nested deeper than {MAX_DEPTH} levels")


def test_aliases_nesting_deeper_than_the_limit_are_refused():
    chain = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 100)]
    with pytest.raises(YamlError) as excinfo:
        load_all("\n".join(chain))
    assert str(excinfo.value).endswith(f"aliases nest deeper than {MAX_DEPTH} levels")


def test_a_recursive_alias_in_validate_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(RECURSIVE)
    home = tmp_path / "home"
    home.mkdir()
    result = run_validate(str(path), home=home)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}: invalid YAML at line 1, column 8: "
        "recursive alias: an anchor is used inside itself"
    ]


@pytest.mark.django_db
def test_a_recursive_alias_posted_to_the_api_is_a_json_400():
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user = user_with_role("yaml-user", "manager")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    for spec in (RECURSIVE, ALIAS_BOMB, "steps: " + "[" * 3000 + "]" * 3000):
        response = api.post("/api/v2/dag-runs", {"spec": spec}, format="json")
        assert response.status_code == 400
        assert response["Content-Type"] == "application/json"
        (error,) = response.json()["errors"]
        assert error.startswith("invalid YAML at line 1, column ")


# ---- long dependency chains


def test_a_1200_step_chain_listed_in_reverse_validates(tmp_path):
    lines = ["steps:"]
    for i in reversed(range(1200)):
        lines += [f"  - name: s{i}", "    command: 'true'"]
        if i:
            lines.append(f"    depends: s{i - 1}")
    path = tmp_path / "chain.yaml"
    path.write_text("\n".join(lines) + "\n")
    dag = parse_dag_file(path.read_text(), source=str(path), default_name="chain").main
    assert dag.steps[0].depends == ("s1198",)
    home = tmp_path / "home"
    home.mkdir()
    result = run_validate(str(path), home=home)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{path}: ok\n", "")


def test_a_1200_step_cycle_is_reported_once():
    lines = ["steps:"]
    for i in range(1200):
        lines += [f"  - name: s{i}", "    command: 'true'", f"    depends: s{(i + 1) % 1200}"]
    (problem,) = dag_problems("\n".join(lines) + "\n")
    assert problem.startswith("steps: dependency cycle s0 -> s1 -> s2 -> ")
    assert problem.endswith(" -> s1199 -> s0")
