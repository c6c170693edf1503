"""Worker labels and selectors (SPEC section 3): parsing, normalising, formatting, matching."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.core.labels import (
    LabelError,
    format_labels,
    matches,
    normalize_label_map,
    parse_label_string,
    parse_labels,
)

REPO = Path(__file__).resolve().parent.parent

# --- label strings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The seeds' examples.
        ("gpu=true,memory=64G,region=us-east-1",
         {"gpu": "true", "memory": "64G", "region": "us-east-1"}),
        ("cpu-arch=amd64,cpu-cores=16,instance-type=m5.large",
         {"cpu-arch": "amd64", "cpu-cores": "16", "instance-type": "m5.large"}),
        ("kubernetes.node=n1,kubernetes.namespace=default",
         {"kubernetes.node": "n1", "kubernetes.namespace": "default"}),
        # Keys and values trimmed.
        ("  gpu = true ,  memory=64G  ", {"gpu": "true", "memory": "64G"}),
        # Empty items skipped.
        ("a=1,,b=2,", {"a": "1", "b": "2"}),
        (",a=1", {"a": "1"}),
        (" , ,", {}),
        ("", {}),
        # Split at the first "=".
        ("k=v=w", {"k": "v=w"}),
        ("url=http://x/?a=b", {"url": "http://x/?a=b"}),
        # An empty value is allowed.
        ("e=", {"e": ""}),
        ("e = ", {"e": ""}),
        # A later duplicate wins.
        ("gpu=false,gpu=true", {"gpu": "true"}),
        # Values are case-sensitive text, kept as written.
        ("Gpu=True", {"Gpu": "True"}),
    ],
)  # fmt: skip
def test_parse_label_string_follows_the_spec_rules(text, expected):
    assert parse_label_string(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu=true,gpu", 'invalid label "gpu": expected key=value'),
        ("gpu=true, gpu ,b=1", 'invalid label "gpu": expected key=value'),
        ("=c", 'invalid label "=c": expected key=value'),
        (" = c ", 'invalid label "= c": expected key=value'),
        ("a=1,novalue", 'invalid label "novalue": expected key=value'),
    ],
)
def test_parse_label_string_refuses_items_without_key_value(text, message):
    with pytest.raises(LabelError) as excinfo:
        parse_label_string(text)
    assert str(excinfo.value) == message


def test_label_error_is_a_value_error_with_one_line():
    with pytest.raises(ValueError) as excinfo:
        parse_label_string("oops")
    assert "\n" not in str(excinfo.value)


# --- map form --------------------------------------------------------------------------------


def test_normalize_label_map_turns_scalars_into_strings():
    raw = {
        "gpu": True,
        "spot": False,
        "memory": 64,
        "ratio": 1.5,
        "empty": None,
        "region": " us-east-1 ",
        " zone ": "a",
        "since": dt.date(2024, 1, 31),
    }
    assert normalize_label_map(raw) == {
        "gpu": "true",
        "spot": "false",
        "memory": "64",
        "ratio": "1.5",
        "empty": "",
        "region": "us-east-1",
        "zone": "a",
        "since": "2024-01-31",
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gpu": {"model": "a100"}}, 'label "gpu": nested values are not allowed'),
        ({"gpu": ["a100"]}, 'label "gpu": nested values are not allowed'),
        ({" gpu ": ["a100"]}, 'label "gpu": nested values are not allowed'),
        ({5: "x"}, "label keys must be strings, got int 5"),
        ({True: "x"}, "label keys must be strings, got bool True"),
        ({"  ": "x"}, 'invalid label "  ": key must not be empty'),
        (["gpu=true"], "labels must be a mapping, got list"),
        ({"gpu": object()}, 'label "gpu": unsupported value of type object'),
    ],
)
def test_normalize_label_map_refuses_nested_values_and_odd_keys(raw, message):
    with pytest.raises(LabelError) as excinfo:
        normalize_label_map(raw)
    assert str(excinfo.value) == message


def test_parse_labels_accepts_both_forms_and_none():
    assert parse_labels("gpu=true") == {"gpu": "true"}
    assert parse_labels({"gpu": True}) == {"gpu": "true"}
    assert parse_labels(None) == {}
    assert parse_labels("") == {}
    assert parse_labels({}) == {}


def test_parse_labels_refuses_other_types():
    with pytest.raises(LabelError) as excinfo:
        parse_labels(["gpu=true"])
    assert str(excinfo.value) == "labels must be a key=value,... string or a mapping, got list"


def test_format_labels_sorts_by_key():
    assert format_labels({"region": "us", "gpu": "true", "az": ""}) == "az=,gpu=true,region=us"
    assert format_labels({}) == ""


# --- matching (seed 003) ---------------------------------------------------------------------

GPU_WORKER = {"gpu": "true", "memory": "64G", "region": "us-east-1"}


@pytest.mark.parametrize(
    ("labels", "selector", "expected"),
    [
        # Empty selector matches any worker, even one without labels.
        (GPU_WORKER, {}, True),
        ({}, {}, True),
        # Every selector pair must match; extra worker labels are ignored.
        (GPU_WORKER, {"gpu": "true"}, True),
        (GPU_WORKER, {"gpu": "true", "memory": "64G"}, True),
        (GPU_WORKER, GPU_WORKER, True),
        (GPU_WORKER, {"gpu": "true", "memory": "128G"}, False),
        # Exact, case-sensitive values.
        (GPU_WORKER, {"gpu": "True"}, False),
        (GPU_WORKER, {"GPU": "true"}, False),
        (GPU_WORKER, {"gpu": "true "}, False),
        # A missing key never matches, even with an empty value (differs from the Go original).
        (GPU_WORKER, {"cuda": ""}, False),
        ({}, {"gpu": ""}, False),
        ({"gpu": ""}, {"gpu": ""}, True),
        # The original's table tests.
        ({"type": "compute"}, {"type": "compute", "region": "us-east"}, False),
        ({}, {"type": "compute"}, False),
        # Multi-region example.
        ({"region": "eu-west-1", "az": "eu-west-1a"}, {"region": "eu-west-1"}, True),
        ({"region": "us-east-1", "az": "us-east-1a"}, {"region": "eu-west-1"}, False),
        # Environment example: prod task needs soc2 too.
        ({"env": "prod", "access": "secure", "compliance": "soc2"},
         {"env": "prod", "compliance": "soc2"}, True),
        ({"env": "dev", "access": "internal"}, {"env": "prod", "compliance": "soc2"}, False),
    ],
)  # fmt: skip
def test_matches_follows_the_selector_rules(labels, selector, expected):
    assert matches(labels, selector) is expected


def test_labels_module_imports_neither_django_nor_an_app():
    code = (
        "import sys, controlplane.core.labels; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'dags', 'workers') "
        "or (m.startswith('controlplane.') and not m.startswith('controlplane.core'))); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
