"""A delta re-reads only the secret references of the top-level keys it changed, with the same result."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from confmesh.secrets import resolve_changed, resolve_refs

names = st.from_regex(r"[a-d]{1,2}", fullmatch=True)
leaves = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.just({"$secret": "env:CONFMESH_TEST_SECRET"}),
                   st.just({"$secret": "env:CONFMESH_TEST_MISSING"}))  # fmt: skip
trees = st.recursive(leaves, lambda inner: st.dictionaries(names, inner, max_size=3), max_leaves=8)
configs = st.dictionaries(names, trees, max_size=5)


@given(configs, configs)
def test_resolving_only_changed_keys_equals_resolving_all(
    before: dict[str, Any], changes: dict[str, Any]
) -> None:
    import os

    os.environ["CONFMESH_TEST_SECRET"] = "s3"  # pragma: allowlist secret
    os.environ.pop("CONFMESH_TEST_MISSING", None)
    previous, _ = resolve_refs(before)
    after = {**before, **changes}
    for dropped in list(before)[:1]:
        if dropped not in changes:
            after.pop(dropped)
    changed = frozenset(changes) | (frozenset(before) - frozenset(after))
    got, issues = resolve_changed(after, previous, changed)
    want, want_issues = resolve_refs(after)
    assert got == want
    assert sorted(i.path for i in issues) == sorted(
        i.path for i in want_issues if i.path.split(".")[0] in changed
    )


def test_unchanged_keys_are_not_read_again() -> None:
    previous = {"db": {"password": "old-read"}, "pool": {"max": 1}}  # pragma: allowlist secret
    config = {"db": {"password": {"$secret": "env:NOT_SET_ANYWHERE"}}, "pool": {"max": 2}}
    got, issues = resolve_changed(config, previous, frozenset({"pool"}))
    assert got == {**previous, "pool": {"max": 2}} and issues == []  # the old value kept, not read again
    assert resolve_changed({"a": 1}, None, frozenset())[0] == {"a": 1}
