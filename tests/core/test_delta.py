"""Delta updates: an incremental resolve (and digest) always equals the full one."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confmesh.delta import (
    CONFIG,
    FLAGS,
    MISSING,
    Update,
    apply_updates,
    change_roots,
    get_path,
    minimal_paths,
    replace_at,
    resolve_at,
)
from confmesh.digest import format_hash, snapshot_digest, snapshot_hash, subtree_sum
from confmesh.merge import JSONValue, normalize, resolve


class DictLayer(dict[str, JSONValue]):
    """A LayerView over a plain dict (prefix queries scan it; the server's store keeps an index)."""

    def under(self, key: str) -> dict[str, JSONValue]:
        dotted = key + "."
        return {k: v for k, v in self.items() if k == key or k.startswith(dotted)}


segments = st.sampled_from(["a", "b", "c", "pool"])
keys = st.lists(segments, min_size=1, max_size=3).map(".".join)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2), st.text(max_size=3))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=2),
        st.dictionaries(st.sampled_from(["a", "b", "x"]), children, max_size=2),
    ),
    max_leaves=5,
).map(normalize)
# Layers may hold conflicting keys (a = 5 next to a.b = 1): etcdctl can write them.
layer_entries = st.dictionaries(keys, values, max_size=6)
# A change: per layer, keys to set (value) or delete (MISSING).
edits = st.lists(
    st.tuples(st.integers(0, 2), keys, st.one_of(st.just(MISSING), values)), min_size=1, max_size=4
)


def edited(
    layers: list[dict[str, Any]], changes: list[tuple[int, str, Any]]
) -> tuple[list[DictLayer], set[str]]:
    after = [DictLayer(layer) for layer in layers]
    for index, key, value in changes:
        if value is MISSING:
            after[index].pop(key, None)
        else:
            after[index][key] = value
    return after, {key for _, key, _ in changes}


def incremental(
    config: dict[str, Any], digest: int, layers: list[DictLayer], changed: set[str]
) -> tuple[dict[str, Any], int]:
    updates = [Update(CONFIG, root, resolve_at(layers, root)) for root in change_roots(layers, changed)]
    new, _, new_digest = apply_updates(config, {}, digest, updates)
    return new, new_digest


@settings(max_examples=400, deadline=None)
@given(st.lists(layer_entries, min_size=3, max_size=3), edits)
def test_incremental_resolve_equals_full_resolve(layers: list[dict[str, Any]], changes: Any) -> None:
    before = resolve(layers)
    after, changed = edited(layers, changes)
    new, digest = incremental(before, snapshot_digest(before, {}), after, changed)
    assert new == resolve(after)
    assert digest == snapshot_digest(new, {})


@settings(max_examples=300, deadline=None)
@given(st.lists(layer_entries, min_size=3, max_size=3), edits, edits)
def test_composed_roots_take_a_client_across_skipped_versions(
    layers: list[dict[str, Any]], first: Any, second: Any
) -> None:
    """A client two versions behind gets the union of both changes' roots, valued at the newest."""
    base = resolve(layers)
    middle, keys1 = edited(layers, first)
    final, keys2 = edited([dict(layer) for layer in middle], second)
    roots = minimal_paths([*change_roots(middle, keys1), *change_roots(final, keys2)])
    target = resolve(final)
    updates = [Update(CONFIG, root, get_path(target, root)) for root in roots]
    new, _, digest = apply_updates(base, {}, snapshot_digest(base, {}), updates)
    assert new == target
    assert digest == snapshot_digest(target, {})


def test_patches_copy_the_path_and_never_modify_the_original() -> None:
    doc = {"db": {"host": "a", "pool": {"max": 5}}, "other": {"x": 1}}
    new = replace_at(doc, ("db", "pool", "max"), 9)
    assert doc["db"]["pool"]["max"] == 5
    assert new["db"]["pool"]["max"] == 9
    assert new["other"] is doc["other"]
    gone = replace_at(new, ("db", "pool", "max"), MISSING)
    assert gone == {"db": {"host": "a"}, "other": {"x": 1}}
    assert replace_at({"a": 5}, ("a", "b"), MISSING) == {"a": 5}
    with pytest.raises(ValueError, match="non-empty path"):
        replace_at(doc, (), 1)


def test_the_root_of_a_change_is_its_shallowest_explicit_prefix() -> None:
    layers = [DictLayer({"db": {"host": "a"}}), DictLayer({"db.pool.max": 5}), DictLayer()]
    assert change_roots(layers, ["db.pool.max"]) == [("db",)]
    assert change_roots(layers[1:], ["db.pool.max", "db.pool.max.x"]) == [("db", "pool", "max")]
    assert minimal_paths([("a", "b"), ("a",), ("c",)]) == [("a",), ("c",)]


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=4))
def test_the_digest_is_the_sum_of_its_subtrees(doc: dict[str, Any]) -> None:
    whole = snapshot_digest(doc, {})
    parts = sum(subtree_sum(CONFIG, (key,), value) for key, value in doc.items()) % (1 << 256)
    assert whole == parts
    assert snapshot_hash(doc, {}) == format_hash(whole)
    # The sections are told apart: the same document as flags hashes differently.
    if doc:
        assert snapshot_digest({}, doc) != whole


def test_an_empty_object_is_content() -> None:
    assert snapshot_hash({"a": {}}, {}) != snapshot_hash({}, {})
    assert snapshot_hash({"a": {"b": {}}}, {}) != snapshot_hash({"a": {}}, {})


def test_flags_patch_by_key() -> None:
    flags = {"on": {"state": "ENABLED"}, "off": {"state": "DISABLED"}}
    digest = snapshot_digest({}, flags)
    _, new, new_digest = apply_updates({}, flags, digest, [Update(FLAGS, ("off",), MISSING)])
    assert new == {"on": {"state": "ENABLED"}}
    assert new_digest == snapshot_digest({}, new)


leafy = st.recursive(
    st.none()
    | st.integers(-3, 3)
    | st.text(max_size=2)
    | st.just({})
    | st.lists(st.integers(0, 2), max_size=2),
    lambda kids: st.dictionaries(st.sampled_from(["a", "b"]), kids, max_size=2),
    max_leaves=6,
)
update_paths = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(tuple)


@given(st.dictionaries(st.sampled_from(["a", "b"]), leafy, max_size=2),
       st.lists(st.tuples(update_paths, st.one_of(st.just(MISSING), leafy)), max_size=4))  # fmt: skip
def test_any_update_keeps_the_digest_equal_to_the_full_sum(doc: dict[str, Any], updates: list[Any]) -> None:
    """Whatever a path crosses (a scalar, a list, an empty object, nothing), the incremental digest is the
    digest of the resulting document: docs/watch-protocol.md's update rules, checked."""
    digest = snapshot_digest(doc, {})
    config, flags = doc, {}
    for path, value in updates:
        config, flags, digest = apply_updates(config, flags, digest, [Update(CONFIG, path, value)])
        assert digest == snapshot_digest(config, flags), (path, value, config)


def test_setting_below_a_leaf_replaces_the_leaf() -> None:
    for leaf in (5, [1], {}, "x"):
        doc = {"a": leaf}
        config, _, digest = apply_updates(doc, {}, snapshot_digest(doc, {}), [Update(CONFIG, ("a", "b"), 1)])
        assert config == {"a": {"b": 1}} and digest == snapshot_digest(config, {})
    # Removing a path that is not there changes nothing, whatever lies on the way.
    doc = {"a": 5}
    assert apply_updates(doc, {}, snapshot_digest(doc, {}), [Update(CONFIG, ("a", "b"), MISSING)])[0] == doc
