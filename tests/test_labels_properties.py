"""Property tests for label parsing and selector matching."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from controlplane.core.labels import (
    LabelError,
    format_labels,
    matches,
    normalize_label_map,
    parse_label_string,
)

# Keys and values as operators write them: no "," (the item separator), keys without "=",
# no surrounding whitespace (trimmed away by design).
KEY_CHARS = string.ascii_letters + string.digits + "-_./:"
keys = st.text(alphabet=KEY_CHARS, min_size=1, max_size=12)
values = st.text(alphabet=KEY_CHARS + "=", max_size=12)
label_maps = st.dictionaries(keys, values, max_size=8)
padding = st.text(alphabet=" \t", max_size=3)


@given(label_maps)
def test_format_then_parse_round_trips(labels):
    assert parse_label_string(format_labels(labels)) == labels


@given(label_maps)
def test_format_does_not_depend_on_insertion_order(labels):
    reversed_map = dict(reversed(list(labels.items())))
    assert format_labels(reversed_map) == format_labels(labels)


@given(st.lists(st.tuples(keys, values, padding, padding), max_size=8), st.integers(0, 3))
def test_parse_trims_and_later_duplicates_win(items, empty_items):
    text = ",".join(f"{pad1}{k}{pad2}={pad1}{v}{pad2}" for k, v, pad1, pad2 in items)
    text += "," * empty_items
    assert parse_label_string(text) == {k: v for k, v, _, _ in items}


@given(label_maps, keys)
def test_an_item_without_equals_is_refused_by_name(labels, bad):
    text = ",".join(filter(None, [format_labels(labels), bad]))
    with pytest.raises(LabelError) as excinfo:
        parse_label_string(text)
    assert str(excinfo.value) == f'invalid label "{bad}": expected key=value'


@given(label_maps)
def test_normalize_keeps_string_maps_unchanged(labels):
    assert normalize_label_map(labels) == labels


@given(label_maps)
def test_empty_selector_matches_every_worker(labels):
    assert matches(labels, {})


@given(label_maps)
def test_selector_equal_to_labels_matches(labels):
    assert matches(labels, labels)


@given(label_maps, st.data())
def test_any_subset_of_the_labels_matches(labels, data):
    chosen = data.draw(st.sets(st.sampled_from(sorted(labels))) if labels else st.just(set()))
    assert matches(labels, {k: labels[k] for k in chosen})


@given(label_maps, label_maps, label_maps)
def test_matching_is_monotone_in_worker_labels(labels, selector, extra):
    # A worker with more labels (same values for the ones it had) still matches.
    superset = {**extra, **labels}
    if matches(labels, selector):
        assert matches(superset, selector)


@given(label_maps, st.data())
def test_removing_a_selector_key_never_breaks_a_match(labels, data):
    assume(labels)
    selector = dict(labels)
    dropped = data.draw(st.sampled_from(sorted(selector)))
    del selector[dropped]
    assert matches(labels, selector)


@given(label_maps, st.data(), values)
def test_changing_a_selector_value_breaks_the_match(labels, data, new_value):
    assume(labels)
    key = data.draw(st.sampled_from(sorted(labels)))
    assume(new_value != labels[key])
    assert not matches(labels, {**labels, key: new_value})


@given(label_maps, keys, values)
def test_a_missing_key_never_matches(labels, key, value):
    assume(key not in labels)
    assert not matches(labels, {key: value})
    assert not matches(labels, {key: ""})
