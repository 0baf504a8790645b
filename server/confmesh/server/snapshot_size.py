"""Refuse a write that would make any snapshot too large for a client to receive.

A snapshot (resolved config and flags) travels as one gRPC message, and a
client accepts 4 MiB by default; MAX_SNAPSHOT_BYTES leaves room for the
envelope. Every scope the write reaches is checked, counting all its layers,
so a write to the shared defaults cannot push every service over the limit:
known scopes (service layers, schemas, rollouts, open streams), and for each
environment the scope of a service with no layer of its own.

A cheap bound comes first: a Struct encodes a JSON document in at most
STRUCT_FACTOR times its compact JSON size, so scopes whose layers add up to
less than the limit over that factor are not resolved at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence

from confmesh import errors
from confmesh.keys import Layer, LayerKind, Scope
from confmesh.merge import JSONValue, resolve
from confmesh.wire import to_struct

MAX_SNAPSHOT_BYTES = 3 * 1024 * 1024
STRUCT_FACTOR = 4

Entries = Mapping[str, JSONValue]


def entries_bytes(entries: Entries) -> int:
    return sum(len(k) + _value_bytes(v) for k, v in entries.items())


def _encoded_bytes(value: JSONValue) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


# id(value) -> (value, its encoded size). A writer reads a layer's values as the same objects from
# one write to the next (writer.DecodedValues), so a write to a large layer encodes only what changed.
# Holding the value keeps its id from being reused while the entry lives.
_SIZES: dict[int, tuple[JSONValue, int]] = {}
_MAX_SIZES = 200_000


def remember_size(value: JSONValue, size: int) -> None:
    """`value`'s encoded size is known (it was decoded from `size` bytes of compact JSON)."""
    if isinstance(value, dict | list):
        if len(_SIZES) >= _MAX_SIZES:
            _SIZES.clear()
        _SIZES[id(value)] = (value, size)


def _value_bytes(value: JSONValue) -> int:
    if not isinstance(value, dict | list):
        return _encoded_bytes(value)
    hit = _SIZES.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    size = _encoded_bytes(value)
    if len(_SIZES) >= _MAX_SIZES:
        _SIZES.clear()
    _SIZES[id(value)] = (value, size)
    return size


def snapshot_bytes(config: Mapping[str, JSONValue], flags: Mapping[str, JSONValue]) -> int:
    """The encoded size of a snapshot's config and flags, as sent."""
    return to_struct(config).ByteSize() + to_struct(flags).ByteSize()


class SnapshotSizes:
    def __init__(
        self,
        entries: Callable[[Layer], Entries],
        revision: Callable[[Layer], int],
        scopes: Callable[[], Iterable[Scope]],
        limit: int = MAX_SNAPSHOT_BYTES,
    ) -> None:
        self.entries = entries
        self.revision = revision
        self.scopes = scopes
        self.limit = limit
        self._sizes: dict[Layer, tuple[int, int]] = {}  # layer -> (its revision, its bytes)

    def _bytes(self, layer: Layer, written: Mapping[Layer, Entries]) -> int:
        if layer in written:
            return entries_bytes(written[layer])
        revision = self.revision(layer)
        cached = self._sizes.get(layer)
        if cached is None or cached[0] != revision:
            if len(self._sizes) > 10_000:
                self._sizes.clear()
            cached = self._sizes[layer] = (revision, entries_bytes(self.entries(layer)))
        return cached[1]

    def check(self, written: Mapping[Layer, Entries]) -> None:
        """Raise InvalidArgument if, with `written` (layer -> new entries), a snapshot grows too big."""
        self.verify(self.exact_checks(written))

    def verify(self, checks: list[tuple[str, list[Entries], Entries]]) -> None:
        """The exact sizes of what `exact_checks` found near the limit (pure CPU, the cost of
        encoding those snapshots: run it off the event loop)."""
        for name, layers, flags in checks:
            size = snapshot_bytes(resolve(layers), flags)
            if size > self.limit:
                raise errors.InvalidArgument(
                    f"this change would make the snapshot of {name} {size} bytes; the limit is "
                    f"{self.limit} (a client receives a snapshot as one 4 MiB gRPC message)",
                    code="snapshot_too_large",
                )

    def exact_checks(self, written: Mapping[Layer, Entries]) -> list[tuple[str, list[Entries], Entries]]:
        """The snapshots `written` touches whose size bound passes the limit, each as copies of its
        layers' entries (on the event loop: cheap; `verify` measures them)."""
        checks: list[tuple[str, list[Entries], Entries]] = []
        touched = set(written)
        envs = {layer.environment for layer in touched if layer.kind is not LayerKind.DEFAULTS}
        everywhere = any(layer.kind is LayerKind.DEFAULTS for layer in touched)
        known = set(self.scopes())
        envs_all = {scope.environment for scope in known} | envs
        candidates: list[tuple[str, Sequence[Layer], Layer]] = []
        for scope in sorted(known):
            if everywhere or scope.environment in envs:
                candidates.append((str(scope), scope.layers, scope.flag_layer))
        for env in sorted(envs_all if everywhere else envs):
            candidates.append((f"{env}/<any service>", (Layer.defaults(), Layer.env(env)), Layer.flags(env)))
        for name, layers, flag_layer in candidates:
            if not any(layer in touched for layer in (*layers, flag_layer)):
                continue
            bound = sum(self._bytes(layer, written) for layer in (*layers, flag_layer))
            if bound * STRUCT_FACTOR <= self.limit:
                continue

            def current(layer: Layer) -> Entries:
                return written[layer] if layer in written else self.entries(layer)

            checks.append((name, [current(layer) for layer in layers], current(flag_layer)))
        return checks
