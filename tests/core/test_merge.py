"""Layer merging: examples, then properties (hypothesis) of the pure functions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confmesh.digest import snapshot_hash
from confmesh.errors import InvalidArgument
from confmesh.merge import (
    canonical_json,
    deep_merge,
    explain,
    find_conflicts,
    layer_tree,
    lookup,
    normalize,
    resolve,
)
from confmesh.wire import from_struct, to_struct


def test_three_layers_merge_deeply_and_lists_replace() -> None:
    defaults = {"database.pool.max": 10, "database.host": "db", "tags": ["a", "b"], "debug": False}
    env = {"database.pool.max": 50, "tags": ["prod"]}
    service = {"database": {"host": "db-orders"}}
    assert resolve([defaults, env, service]) == {
        "database": {"host": "db-orders", "pool": {"max": 50}},
        "tags": ["prod"],
        "debug": False,
    }


def test_deleting_a_higher_key_uncovers_the_lower_one() -> None:
    defaults = {"timeout": 5}
    service = {"timeout": 30}
    assert resolve([defaults, {}, service])["timeout"] == 30
    assert resolve([defaults, {}, {}])["timeout"] == 5


def test_a_scalar_replaces_an_object_and_back() -> None:
    assert resolve([{"a.b": 1}, {"a": 7}]) == {"a": 7}
    assert resolve([{"a": 7}, {"a.b": 1}]) == {"a": {"b": 1}}


def test_within_a_layer_shallow_keys_apply_first() -> None:
    assert layer_tree({"db.pool.max": 5, "db": {"host": "h", "pool": {"min": 1}}}) == {
        "db": {"host": "h", "pool": {"min": 1, "max": 5}}
    }


def test_explain_names_each_layer_and_the_source_key() -> None:
    layers = [{"db": {"pool": {"max": 1}}}, {"db.pool.max": 2}, {}]
    hits, found, value = explain(layers, "db.pool.max")
    assert found and value == 2
    assert [(h.layer_index, h.source_key, h.value) for h in hits] == [(0, "db", 1), (1, "db.pool.max", 2)]
    hits, found, _ = explain(layers, "nope")
    assert not found and hits == []


def test_conflicts_within_a_layer() -> None:
    assert find_conflicts({"a": 5, "a.b": 1}) == [("a.b", "a")]
    assert find_conflicts({"a": {"x": 1}, "a.b": 1}) == []


def test_normalize_refuses_what_cannot_cross_the_wire() -> None:
    assert normalize({"n": 5.0, "f": 1.5}) == {"n": 5, "f": 1.5}
    with pytest.raises(InvalidArgument, match="2\\*\\*53"):
        normalize(2**60)
    with pytest.raises(InvalidArgument, match="finite"):
        normalize(float("nan"))
    deep: Any = 1
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(InvalidArgument, match="deeper"):
        normalize(deep)
    with pytest.raises(InvalidArgument, match="not a JSON value"):
        normalize({"s": {1, 2}})


# -- properties ---------------------------------------------------------------

segments = st.sampled_from(["a", "b", "c", "db", "pool", "max"])
keys = st.lists(segments, min_size=1, max_size=3).map(".".join)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
documents = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), json_values, max_size=4)


def well_formed(entries: dict[str, Any]) -> bool:
    return not find_conflicts(entries)


layers = st.dictionaries(keys, scalars, max_size=6).filter(well_formed)


@given(documents, documents)
def test_deep_merge_merges_objects_and_replaces_everything_else(a: dict[str, Any], b: dict[str, Any]) -> None:
    # Not associative: a scalar in a middle layer cuts off the objects below
    # it, so layers always fold lowest first (resolve does).
    merged = deep_merge(a, b)
    assert set(merged) == set(a) | set(b)
    for key, value in merged.items():
        if key not in b:
            assert value == a[key]
        elif isinstance(a.get(key), dict) and isinstance(b[key], dict):
            assert value == deep_merge(a[key], b[key])
        else:
            assert value == b[key]


@given(documents)
def test_deep_merge_is_idempotent_and_has_identity(a: dict[str, Any]) -> None:
    assert deep_merge(a, a) == a
    assert deep_merge({}, a) == a
    assert deep_merge(a, {}) == a


@given(layers, layers, layers)
def test_the_highest_layer_that_sets_a_leaf_wins(
    l0: dict[str, Any], l1: dict[str, Any], l2: dict[str, Any]
) -> None:
    merged = resolve([l0, l1, l2])
    for index, layer in enumerate([l0, l1, l2]):
        above = [l1, l2][index:]
        for key, value in layer.items():
            covered = any(
                k == key or k.startswith(key + ".") or key.startswith(k + ".")
                for upper in above
                for k in upper
            )
            if not covered:
                assert lookup(merged, key) == (True, value)


@given(layers, layers, keys, scalars)
def test_deleting_a_top_key_uncovers_the_lower_layers(
    l0: dict[str, Any], l1: dict[str, Any], key: str, value: Any
) -> None:
    top = {key: value}
    assert lookup(resolve([l0, l1, top]), key) == (True, value)
    # Removing the top layer's key gives exactly what the lower layers say.
    assert resolve([l0, l1, {}]) == resolve([l0, l1])


@given(st.dictionaries(keys, json_values, max_size=5))
def test_layer_order_within_a_layer_does_not_matter(entries: dict[str, Any]) -> None:
    reordered = dict(reversed(list(entries.items())))
    assert layer_tree(entries) == layer_tree(reordered)


@settings(max_examples=200)
@given(documents)
def test_wire_round_trip_preserves_content_and_hash(doc: dict[str, Any]) -> None:
    back = from_struct(to_struct(doc))
    assert back == normalize(doc)
    assert snapshot_hash(back, {}) == snapshot_hash(normalize(doc), {})


@given(documents)
def test_hash_ignores_key_order(doc: dict[str, Any]) -> None:
    reordered = dict(reversed(list(doc.items())))
    assert canonical_json(doc) == canonical_json(reordered)


@given(st.lists(st.dictionaries(keys, json_values, max_size=5), min_size=1, max_size=3))
def test_resolving_never_modifies_the_layers(layer_list: list[dict[str, Any]]) -> None:
    """A deeper key used to be written into a shallower key's stored object, so deleting it later
    left its value behind until the next re-list."""
    import copy

    before = copy.deepcopy(layer_list)
    resolve(layer_list)
    assert layer_list == before
