"""Run parameters: the `K=V K2='a b'` string form, and a DAG's defaults with overrides."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from controlplane.core.spec.model import NAME_RE, Dag, bad_name_message, protected_name_problem


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
        if not NAME_RE.fullmatch(key):
            raise ValueError(bad_name_message(key))
        if problem := protected_name_problem(key):
            raise ValueError(problem)
        if key in params:
            raise ValueError(f'parameter "{key}" is given twice')
        params[key] = value
    return params


def resolve_params(dag: Dag, overrides: Mapping[str, str]) -> dict[str, str]:
    """The DAG's defaults in declaration order, overridden by `overrides`.

    Override keys the DAG does not declare are kept and come after the declared ones: a
    parent passing an extra value to a child is not an error. A protected name raises
    ValueError: every edge checks already, this is the last gate before a run is stored.
    """
    resolved = dict(dag.params)
    for key, value in overrides.items():
        if problem := protected_name_problem(key):
            raise ValueError(problem)
        if "\x00" in key or "\x00" in str(value):
            # No process environment can carry a NUL, and PostgreSQL's JSON cannot store one.
            raise ValueError(f"params: {key[:40]!r} holds a NUL character")
        resolved[key] = str(value)
    return resolved
