"""Delta updates of resolved snapshots: which subtrees a change touches, and how to patch them.

A change to some keys of some layers can only alter the resolved document
below a few *roots*. For a changed key the root is its shallowest prefix that
some layer of the scope sets explicitly, or the key itself: above the root
every layer holds only the objects that nesting creates, so the resolved
value at the root is the deep merge of each layer's own subtree there.

An update replaces the subtree at one path (or removes it, pruning the
objects above it that only existed to hold it). Documents are never modified
in place: a patch copies the objects along the path and shares the rest, so
earlier snapshots stay valid. The server builds the next snapshot with the
same function a client uses to apply a delta, and both keep the snapshot's
digest (confmesh.digest) up to date in proportion to the change.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from confmesh.digest import JCS, MODULUS, subtree_sum
from confmesh.merge import JSONValue, deep_merge, layer_tree

Path = tuple[str, ...]


class _Missing(enum.Enum):
    MISSING = "missing"


MISSING = _Missing.MISSING
CONFIG = "config"
FLAGS = "flags"


class Update(NamedTuple):
    """The subtree at `path` of `section` becomes `value` (MISSING: removed)."""

    section: str
    path: Path
    value: Any


class LayerView(Protocol):
    """One layer's entries (dotted key -> value) with a prefix query."""

    def __contains__(self, key: object) -> bool: ...

    def under(self, key: str) -> Mapping[str, JSONValue]:
        """The entries whose key is `key` or starts with `key` + "."."""
        ...


def get_path(doc: Mapping[str, Any], path: Path) -> Any:
    node: Any = doc
    for part in path:
        if not isinstance(node, dict):
            return MISSING
        node = node.get(part, MISSING)
        if node is MISSING:
            return MISSING
    return node


def replace_at(doc: Mapping[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """A copy of `doc` with the subtree at `path` set to `value` (MISSING: removed, empty parents pruned)."""
    if not path:
        raise ValueError("an update needs a non-empty path")
    if value is MISSING and get_path(doc, path) is MISSING:
        return _as_dict(doc)
    root = dict(doc)
    spine = [root]
    node = root
    for part in path[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
        spine.append(child)
    if value is MISSING:
        del node[path[-1]]
        for depth in range(len(path) - 1, 0, -1):
            if spine[depth]:
                break
            del spine[depth - 1][path[depth - 1]]
    else:
        node[path[-1]] = value
    return root


def apply_updates(
    config: Mapping[str, Any],
    flags: Mapping[str, Any],
    digest: int,
    updates: Iterable[Update],
    scheme: str = JCS,
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Apply updates in order; return the new documents (the given ones are not modified) and their digest.

    `digest` is of `scheme` (confmesh.digest), and so is the digest returned.
    """
    docs: dict[str, Mapping[str, Any]] = {CONFIG: config, FLAGS: flags}
    for section, path, value in updates:
        doc = docs[section]
        old = get_path(doc, path)
        if old is not MISSING:
            digest -= subtree_sum(section, path, old, scheme)
        elif value is not MISSING and (above := _leaf_above(doc, path)) is not None:
            # Setting a value below a leaf (a scalar, a list, an empty object) turns it into an object:
            # that leaf leaves the sum.
            digest -= subtree_sum(section, above[0], above[1], scheme)
        if value is not MISSING:
            digest += subtree_sum(section, path, value, scheme)
        docs[section] = replace_at(doc, path, value)
    return _as_dict(docs[CONFIG]), _as_dict(docs[FLAGS]), digest % MODULUS


def _leaf_above(doc: Mapping[str, Any], path: Path) -> tuple[Path, Any] | None:
    """The leaf on the way to `path` (strictly above it) and its path, if there is one."""
    node: Any = doc
    for depth, part in enumerate(path[:-1], 1):
        node = node.get(part, MISSING)
        if node is MISSING:
            return None
        if not isinstance(node, dict) or not node:
            return path[:depth], node
    return None


def _as_dict(doc: Mapping[str, Any]) -> dict[str, Any]:
    return doc if isinstance(doc, dict) else dict(doc)


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[: n + 1]) for n in range(len(parts))]


def change_roots(layers: Sequence[LayerView], keys: Iterable[str]) -> list[Path]:
    """The subtrees of the resolved document that changing `keys` can alter, shallowest first.

    Roots below another root are dropped: the shallower one covers them.
    """
    roots = set()
    for key in keys:
        prefixes = _prefixes(key)
        root = next((p for p in prefixes if any(p in layer for layer in layers)), key)
        roots.add(tuple(root.split(".")))
    return minimal_paths(roots)


def minimal_paths(paths: Iterable[Path]) -> list[Path]:
    """`paths` without those below another one, shallowest first."""
    kept: list[Path] = []
    seen: set[Path] = set()
    for path in sorted(set(paths), key=lambda p: (len(p), p)):
        if any(path[:n] in seen for n in range(1, len(path))):
            continue
        seen.add(path)
        kept.append(path)
    return kept


def resolve_at(layers: Sequence[LayerView], root: Path) -> Any:
    """The resolved value at `root` (a root from change_roots), lowest layer first; MISSING if none."""
    key = ".".join(root)
    merged: Any = MISSING
    for layer in layers:
        entries = layer.under(key)
        if not entries:
            continue
        value = get_path(layer_tree(entries), root)
        if value is MISSING:
            continue
        both_objects = isinstance(merged, dict) and isinstance(value, dict)
        merged = deep_merge(merged, value) if both_objects else value
    return merged
