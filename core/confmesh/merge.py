"""Layer merging, lookups and canonical hashing: pure functions, no I/O.

A layer is a flat mapping of dotted keys to JSON values. ``layer_tree`` turns
it into a nested document: keys apply shallowest first, so ``database`` =
``{"host": "a"}`` plus ``database.pool.max`` = ``5`` give
``{"database": {"host": "a", "pool": {"max": 5}}}``. Layers then merge from
lowest to highest precedence: objects merge deeply, lists and scalars replace.
Deleting a key in a higher layer therefore uncovers the lower layer's value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confmesh.errors import InvalidArgument

JSONValue = Any
MAX_SAFE_INTEGER = 2**53
# Total nesting of a resolved document (key segments + value levels). Each JSON
# level costs ~3 protobuf levels on the wire (Value > Struct > map entry) and
# protobuf parsers stop at 100, so 28 is the most that always crosses the wire.
MAX_VALUE_DEPTH = 28
MAX_VALUE_BYTES = 256 * 1024  # one overwrite, with old and new in its audit record, fits etcd's 1.5 MiB


# JSON text can spell a lone UTF-16 surrogate ("\ud800"): valid JSON, but no UTF-8 encoding exists for
# it, so it can be neither hashed, sent over gRPC nor written back. Only an escape can produce one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_text(text: str, path: str, what: str = "string") -> None:
    if text.isascii():
        return
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{path}: {what} holds a lone surrogate ({exc.object[exc.start : exc.end]!r}), "
            "which has no UTF-8 encoding",
            code="invalid_value",
            field=path,
        ) from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_json(raw: bytes | str, *, constants: bool = True) -> Any:
    """``json.loads`` for text read from outside (etcd, a request): lone surrogates are a ``ValueError``,
    and so are ``NaN`` and ``Infinity`` unless `constants`.

    Every string in the result can then be encoded as UTF-8 (hashed, sent over gRPC, written back).
    """
    if isinstance(raw, str) and not raw.isascii():
        raw.encode()  # a str with surrogates in it (UnicodeEncodeError is a ValueError)
    value = json.loads(raw) if constants else json.loads(raw, parse_constant=_no_constant)
    pattern = _SURROGATE_ESCAPE if isinstance(raw, str) else _SURROGATE_ESCAPE_BYTES
    if pattern.search(raw):  # type: ignore[arg-type]
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"a string holds a lone surrogate {exc.object[exc.start : exc.end]!r}") from exc
    return value


def normalize(value: JSONValue, *, path: str = "value", depth: int = 0) -> JSONValue:
    """Validate a JSON value and return its canonical form.

    Integral floats become ints (the wire carries numbers as doubles, so 5 and
    5.0 are the same value); integers beyond 2**53 and non-finite floats are
    refused because they cannot cross the wire exactly.
    """
    if depth > MAX_VALUE_DEPTH:
        raise InvalidArgument(
            f"{path}: nested deeper than {MAX_VALUE_DEPTH} levels", code="value_too_deep", field=path
        )
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        _check_text(value, path)
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise InvalidArgument(
                f"{path}: integer {value} is beyond ±2**53 and cannot be represented exactly; "
                "store it as a string",
                code="invalid_value",
                field=path,
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{path}: {value} is not a finite number", code="invalid_value", field=path)
        if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
            return int(value)
        return value
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgument(
                    f"{path}: object keys must be strings", code="invalid_value", field=path
                )
            _check_text(k, path, "an object key")
            out[k] = normalize(v, path=f"{path}.{k}", depth=depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [normalize(v, path=f"{path}[{i}]", depth=depth + 1) for i, v in enumerate(value)]
    raise InvalidArgument(
        f"{path}: {type(value).__name__} is not a JSON value", code="invalid_value", field=path
    )


def parse_json_value(raw: bytes | str, *, path: str = "value") -> JSONValue:
    """Parse and normalize a stored JSON value, with a clear error.

    No size limit applies here: writes are held to MAX_VALUE_BYTES, but what
    etcd already holds (bounded by etcd's own request limit, and perhaps
    written under an older limit) is read as it is.
    """
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path}: not valid JSON ({exc})", code="invalid_json", field=path) from exc
    return normalize(value, path=path)


def canonical_json(value: JSONValue) -> bytes:
    """The byte form hashes are computed over: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        normalize(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def same_value(a: JSONValue, b: JSONValue) -> bool:
    """JSON equality: ``true`` is not ``1`` (as Python's ``==`` would have it); ``5`` is ``5.0``."""
    return canonical_json(a) == canonical_json(b)


def _depth_order(key: str) -> tuple[int, str]:
    return key.count("."), key


def _set_path(tree: dict[str, JSONValue], parts: Sequence[str], value: JSONValue, owned: set[int]) -> None:
    """Set `value` at `parts`, copying any object on the way that the tree does not own (an entry's value)."""
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict) or id(child) not in owned:
            child = dict(child) if isinstance(child, dict) else {}
            owned.add(id(child))
            node[part] = child
        node = child
    last = parts[-1]
    existing = node.get(last)
    if isinstance(existing, dict) and isinstance(value, dict):
        node[last] = deep_merge(existing, value)
    else:
        node[last] = value


def layer_tree(entries: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    """Nest one layer's dotted keys into a document (shallowest keys first)."""
    tree: dict[str, JSONValue] = {}
    owned: set[int] = set()
    for key in sorted(entries, key=_depth_order):
        _set_path(tree, key.split("."), entries[key], owned)
    return tree


def deep_merge(base: Mapping[str, JSONValue], over: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    """Merge `over` onto `base`: objects recursively, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = deep_merge(current, value)
        else:
            out[key] = value
    return out


def resolve(layers: Iterable[Mapping[str, JSONValue]]) -> dict[str, JSONValue]:
    """Merge layers given lowest precedence first."""
    result: dict[str, JSONValue] = {}
    for entries in layers:
        result = deep_merge(result, layer_tree(entries))
    return result


_MISSING = object()


def lookup(tree: Mapping[str, JSONValue], key: str) -> tuple[bool, JSONValue]:
    node: JSONValue = tree
    for part in key.split("."):
        if not isinstance(node, Mapping):
            return False, None
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return False, None
    return True, node


@dataclass(frozen=True)
class LayerHit:
    """A key's value as one layer supplies it."""

    layer_index: int
    source_key: str
    value: JSONValue


def explain(layers: Sequence[Mapping[str, JSONValue]], key: str) -> tuple[list[LayerHit], bool, JSONValue]:
    """Each layer's value for `key` (lowest first) and the resolved result."""
    hits: list[LayerHit] = []
    for index, entries in enumerate(layers):
        found, value = lookup(layer_tree(entries), key)
        if not found:
            continue
        below = [k for k in entries if k == key or k.startswith(key + ".")]
        if below:
            source = key
        else:
            parts = key.split(".")
            ancestors = [".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]
            source = next((a for a in ancestors if a in entries), key)
        hits.append(LayerHit(index, source, value))
    found, resolved = lookup(resolve(layers), key)
    return hits, found, resolved


def contributing(values: Sequence[JSONValue]) -> list[int]:
    """Which of a key's layer values (lowest first) the resolved value is made of.

    The highest layer always counts; objects merge, so while the values from the top down are
    objects, each one below contributes too, up to the first non-object, which they replace.
    """
    if not values:
        return []
    picked = [len(values) - 1]
    if isinstance(values[-1], dict):
        for index in range(len(values) - 2, -1, -1):
            if not isinstance(values[index], dict):
                break
            picked.append(index)
    return sorted(picked)


def find_conflicts(entries: Mapping[str, JSONValue]) -> list[tuple[str, str]]:
    """(key, ancestor) pairs where a key sits below a non-object value in the same layer.

    ``a`` = 5 next to ``a.b`` = 1 is ambiguous, so writes that create such a
    pair are refused (values written out of band still merge deterministically).
    """
    conflicts = []
    for key in entries:
        parts = key.split(".")
        for n in range(1, len(parts)):
            ancestor = ".".join(parts[:n])
            if ancestor in entries and not isinstance(entries[ancestor], dict):
                conflicts.append((key, ancestor))
    return sorted(conflicts)
