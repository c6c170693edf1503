"""Worker labels and label selectors (SPEC section 3). Pure: no Django, no controlplane.

Labels reach us in two shapes: the `k=v,...` string of flags and env vars, and the map of
config files and DAG YAML. Both normalise to `dict[str, str]`, so matching is plain dict
comparison. The one place we part from the Go original: bad input is an error instead of
being dropped silently, because a silently dropped label quietly changes where runs go.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

__all__ = [
    "MAX_HOST_LENGTH",
    "MAX_LABELS",
    "MAX_LABEL_KEY_NAME",
    "MAX_LABEL_KEY_PREFIX",
    "MAX_LABEL_VALUE",
    "MAX_WORKER_ID_LENGTH",
    "LabelError",
    "check_host",
    "check_labels",
    "check_worker_id",
    "format_labels",
    "matches",
    "normalize_label_map",
    "parse_label_string",
    "parse_labels",
]


# Size limits, checked wherever labels or a worker identity enter (config, flags, env,
# registry files, gRPC, DAG selectors), modelled on Kubernetes labels: a key is a name of at
# most 63 characters, optionally after a `prefix/` of at most 128; a value is at most 63.
# The database columns (255) hold all of them, so one bad worker can never fail the write
# of the others.
MAX_LABELS = 64
MAX_LABEL_KEY_NAME = 63
MAX_LABEL_KEY_PREFIX = 128
MAX_LABEL_VALUE = 63
MAX_WORKER_ID_LENGTH = 128
MAX_HOST_LENGTH = 253  # the longest DNS name


class LabelError(ValueError):
    """Invalid label or worker identity; `str()` is the one-line message for the operator."""


def parse_label_string(text: str) -> dict[str, str]:
    """Parse `k=v,k2=v2`: split items at the first `=`, trim, skip empties, last key wins.

    `k=v=w` gives `{"k": "v=w"}` and `k=` gives `{"k": ""}`; an item without `=` or with an
    empty key raises LabelError.
    """
    labels: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise LabelError(f'invalid label "{item}": expected key=value')
        labels[key] = value.strip()
    return check_labels(labels)


def normalize_label_map(value: object) -> dict[str, str]:
    """Map form (config file, DAG YAML): scalar values become strings, keys/values trimmed.

    YAML turns `gpu: true` into a bool and `memory: 64` into an int; the Go original drops
    those silently, we keep them as the text the operator most likely meant.
    """
    if not isinstance(value, Mapping):
        raise LabelError(f"labels must be a mapping, got {_type_name(value)}")
    labels: dict[str, str] = {}
    for raw_key, raw_value in value.items():
        if not isinstance(raw_key, str):
            raise LabelError(f"label keys must be strings, got {_type_name(raw_key)} {raw_key!r}")
        key = raw_key.strip()
        if not key:
            raise LabelError(f'invalid label "{raw_key}": key must not be empty')
        labels[key] = _scalar_text(key, raw_value)
    return check_labels(labels)


def parse_labels(value: object) -> dict[str, str]:
    """Labels from any source: a `k=v,...` string, a mapping, or None (no labels)."""
    if value is None:
        return {}
    if isinstance(value, str):
        return parse_label_string(value)
    if isinstance(value, Mapping):
        return normalize_label_map(value)
    raise LabelError(f"labels must be a key=value,... string or a mapping, got {_type_name(value)}")


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """`labels` as a dict if within the size limits above, else LabelError naming the label."""
    if len(labels) > MAX_LABELS:
        raise LabelError(f"too many labels: {len(labels)} (at most {MAX_LABELS})")
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if len(name) > MAX_LABEL_KEY_NAME:
            raise LabelError(
                f'label key "{_clip(key)}" is {len(name)} characters long '
                f"(at most {MAX_LABEL_KEY_NAME}, after an optional prefix/)"
            )
        if len(prefix) > MAX_LABEL_KEY_PREFIX:
            raise LabelError(
                f'label key "{_clip(key)}": the prefix before "/" is {len(prefix)} '
                f"characters long (at most {MAX_LABEL_KEY_PREFIX})"
            )
        if len(value) > MAX_LABEL_VALUE:
            raise LabelError(
                f'label "{_clip(key)}": value is {len(value)} characters long '
                f"(at most {MAX_LABEL_VALUE})"
            )
    return dict(labels)


def check_worker_id(worker_id: str) -> str:
    """A worker id: 1 to MAX_WORKER_ID_LENGTH characters."""
    if not worker_id:
        raise LabelError("worker id must not be empty")
    if len(worker_id) > MAX_WORKER_ID_LENGTH:
        raise LabelError(
            f'worker id "{_clip(worker_id)}" is {len(worker_id)} characters long '
            f"(at most {MAX_WORKER_ID_LENGTH})"
        )
    return worker_id


def check_host(host: str) -> str:
    """A host name as a worker reports it: at most MAX_HOST_LENGTH characters."""
    if len(host) > MAX_HOST_LENGTH:
        raise LabelError(
            f'host "{_clip(host)}" is {len(host)} characters long (at most {MAX_HOST_LENGTH})'
        )
    return host


def format_labels(labels: Mapping[str, str]) -> str:
    """`k=v,k2=v2` sorted by key; the inverse of parse_label_string for well-formed labels."""
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """True when every selector key exists in `labels` with an identical (case-sensitive) value.

    An empty selector matches every worker. A key the worker lacks never matches, not even
    `k: ""`; the Go original treats a missing key as "" there, which lets an empty-valued
    selector pick workers that never declared the label.
    """
    return all(key in labels and labels[key] == value for key, value in selector.items())


def _scalar_text(key: str, value: object) -> str:
    # bool before int: bool is a subclass of int, and True must read "true", not "1".
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dt.date):
        # YAML reads an unquoted 2024-01-31 as a date; give back the text that was written.
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple | set):
        raise LabelError(f'label "{key}": nested values are not allowed')
    raise LabelError(f'label "{key}": unsupported value of type {_type_name(value)}')


def _clip(text: str, limit: int = 40) -> str:
    # Error messages name the offender without echoing a 5,000-character value back.
    return text if len(text) <= limit else f"{text[:limit]}..."


def _type_name(value: object) -> str:
    return type(value).__name__
