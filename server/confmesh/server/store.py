"""The revision-consistent in-memory copy of confmesh's key space.

Pure state, no I/O: a source (``confmesh.server.source``) feeds it full lists
and watch events, and each returns one ``StoreChange`` saying what moved.
Config layers are its own business: each layer carries a revision that only
grows (the newest of its keys' and marker's mod revisions, and of the deletes
seen while watching); a scope's snapshot version is the max over its layers.
Everything else under the prefix is a *record kind* registered with the
store (tokens, schemas, rollouts, change requests, fleet summaries:
``confmesh.server.record_kinds``): one mechanism decodes, keeps and reports
them all, and the store knows none of their types.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from confmesh.errors import InvalidArgument
from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.merge import JSONValue, parse_json_value
from confmesh.server.journal import KeyJournal
from confmesh.server.kv import Event, KeyValue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    value: JSONValue
    mod_revision: int


# The keys that changed, per layer (empty for a layer whose marker alone changed).
Changes = dict[Layer, set[str]]

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, eq=False)
class RecordKind(Generic[K, V]):
    """A kind of record kept under one root of the key space (stateless: the store holds the records).

    ``key`` names a record from its etcd key below ``root`` (InvalidArgument: not a usable name);
    ``decode`` reads its value (any of ValueError, KeyError, TypeError, InvalidArgument: unusable);
    ``scope``: the scope whose snapshots a record of this kind changes (schemas, rollouts), if any.
    """

    name: str
    root: Callable[[KeyLayout], str]
    key: Callable[[str], K]
    decode: Callable[[K, bytes, int], V]
    scope: Callable[[K], Scope] | None = None


@dataclass
class _Kept(Generic[K, V]):
    records: dict[K, V] = field(default_factory=dict)
    # Per record, the newest mod revision seen, deletes included.
    revisions: dict[K, int] = field(default_factory=dict)


@dataclass
class StoreChange:
    """What one list or batch of events changed: the one shape a source hands on.

    ``layers``: config keys per layer; ``scopes``: scopes whose snapshots changed with no layer
    changing (a schema or a rollout); ``kinds``: the record kinds that changed.
    """

    revision: int
    layers: Changes = field(default_factory=dict)
    scopes: set[Scope] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.layers or self.scopes or self.kinds)


class LayerEntries(Mapping[str, JSONValue]):
    """One layer's current values, with prefix queries over a sorted key index (a delta.LayerView)."""

    def __init__(self, store: ConfigStore, layer: Layer) -> None:
        self._entries = store.raw_entries(layer)
        self._keys = store.sorted_keys(layer)

    def __getitem__(self, key: str) -> JSONValue:
        return self._entries[key].value

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def under(self, key: str) -> dict[str, JSONValue]:
        keys = self._keys
        found = {key: self._entries[key].value} if key in self._entries else {}
        # "/" sorts right after ".", so [key + ".", key + "/") holds exactly the keys below `key`.
        start, end = bisect.bisect_left(keys, key + "."), bisect.bisect_left(keys, key + "/")
        for k in keys[start:end]:
            found[k] = self._entries[k].value
        return found


class ConfigStore:
    def __init__(self, layout: KeyLayout, kinds: Iterable[RecordKind[Any, Any]] = ()) -> None:
        self.layout = layout
        self.revision = 0
        self.synced = False
        self._layers: dict[Layer, dict[str, Entry]] = {}
        # Per layer, its keys in sorted order (built on first use, then kept up to date).
        self._sorted: dict[Layer, list[str]] = {}
        self._layer_revision: dict[Layer, int] = {}
        # Per layer: (revision, traceparent) of the newest traced write, from its marker.
        self._layer_trace: dict[Layer, tuple[int, str]] = {}
        # etcd keys under the prefix whose content is unusable, with the reason.
        self.bad_keys: dict[str, str] = {}
        self._kinds: list[tuple[str, RecordKind[Any, Any]]] = []
        self._kept: dict[str, _Kept[Any, Any]] = {}
        # Told of every list and batch applied, as raw keys (a server that relays set one).
        self.journal: KeyJournal | None = None
        for kind in kinds:
            self.register(kind)

    def register(self, kind: RecordKind[K, V]) -> None:
        if kind.name in self._kept:
            raise ValueError(f"record kind {kind.name!r} is registered already")
        self._kinds.append((kind.root(self.layout), kind))
        self._kept[kind.name] = _Kept()

    def records(self, kind: RecordKind[K, V]) -> dict[K, V]:
        """The records of `kind` by key (the same dict, updated in place, for the store's life)."""
        return self._kept[kind.name].records  # type: ignore[no-any-return]

    def revisions(self, kind: RecordKind[K, V]) -> dict[K, int]:
        """Per record of `kind`, the newest mod revision seen (deletes included)."""
        return self._kept[kind.name].revisions  # type: ignore[no-any-return]

    def entries(self, layer: Layer) -> dict[str, JSONValue]:
        return {k: e.value for k, e in self._layers.get(layer, {}).items()}

    def raw_entries(self, layer: Layer) -> Mapping[str, Entry]:
        return self._layers.get(layer, {})

    def sorted_keys(self, layer: Layer) -> list[str]:
        keys = self._sorted.get(layer)
        if keys is None:
            keys = self._sorted[layer] = sorted(self._layers.get(layer, {}))
        return keys

    def view(self, layer: Layer) -> LayerEntries:
        return LayerEntries(self, layer)

    def layer_revision(self, layer: Layer) -> int:
        return self._layer_revision.get(layer, 0)

    def layer_revisions(self) -> dict[Layer, int]:
        """Every layer's version, layers whose keys were all deleted included."""
        return dict(self._layer_revision)

    def adopt_layer_revisions(self, revisions: Mapping[Layer, int]) -> None:
        """Take an upstream's layer versions as they are (a relay after a full list): a list
        carries no deletes, so it alone cannot reproduce the versions they made."""
        self._layer_revision = dict(revisions)

    def scope_version(self, scope: Scope) -> int:
        return max(self.layer_revision(layer) for layer in (*scope.layers, scope.flag_layer))

    def scope_trace(self, scope: Scope, version: int) -> str:
        """The traceparent of the write that made `version` of `scope` ("" if untraced)."""
        for layer in (*scope.layers, scope.flag_layer):
            revision, trace = self._layer_trace.get(layer, (0, ""))
            if revision == version:
                return trace
        return ""

    def _note_marker(self, layer: Layer, value: bytes | None, revision: int) -> None:
        try:
            trace = json.loads(value or b"{}").get("trace", "")
        except (ValueError, AttributeError):
            trace = ""
        if isinstance(trace, str) and trace:
            self._layer_trace[layer] = (revision, trace[:128])

    def layers(self) -> list[Layer]:
        return sorted(self._layers)

    def _bump(self, layer: Layer, revision: int) -> None:
        if revision > self._layer_revision.get(layer, 0):
            self._layer_revision[layer] = revision

    def _record(self, etcd_key: str, value: bytes | None, revision: int, change: StoreChange) -> bool:
        """Keep or drop a record of a registered kind; True if `etcd_key` is one."""
        for root, kind in self._kinds:
            if not etcd_key.startswith(root):
                continue
            try:
                key = kind.key(etcd_key[len(root) :])
            except InvalidArgument as exc:
                self.bad_keys[etcd_key] = exc.message
                return True
            kept = self._kept[kind.name]
            kept.revisions[key] = max(kept.revisions.get(key, 0), revision)
            change.kinds.add(kind.name)
            if kind.scope is not None:
                change.scopes.add(kind.scope(key))
            if value is None:
                kept.records.pop(key, None)
                return True
            try:
                kept.records[key] = kind.decode(key, value, revision)
            except (ValueError, KeyError, TypeError, InvalidArgument) as exc:
                kept.records.pop(key, None)
                self.bad_keys[etcd_key] = f"unusable {kind.name}: {exc}"
            else:
                self.bad_keys.pop(etcd_key, None)
            return True
        return False

    def _unusable_name(self, etcd_key: str) -> bool:
        """True (and logged) for a key that is not UTF-8: the etcd adapter decodes keys losslessly
        (surrogateescape), so such a key can be skipped here and its delete matched later."""
        if etcd_key.isascii():
            return False
        try:
            etcd_key.encode()
        except UnicodeEncodeError:
            shown = etcd_key.encode(errors="backslashreplace").decode()
            if etcd_key not in self.bad_keys:
                log.warning("ignoring unusable etcd key %s: not UTF-8", shown)
            self.bad_keys[etcd_key] = "the key is not UTF-8"
            return True
        return False

    def _parse(self, etcd_key: str, value: bytes | None) -> tuple[Layer, str | None, JSONValue] | None:
        try:
            parsed = self.layout.parse(etcd_key)
            if parsed is None:
                return None
            layer, key = parsed
            decoded = parse_json_value(value, path=key) if (key is not None and value is not None) else None
        except InvalidArgument as exc:
            if value is not None:
                self.bad_keys[etcd_key] = exc.message
                log.warning("ignoring unusable etcd key %s: %s", etcd_key, exc.message)
            return None
        self.bad_keys.pop(etcd_key, None)
        return layer, key, decoded

    def replace(self, kvs: Iterable[KeyValue], revision: int) -> StoreChange:
        """Load a full list taken at `revision`; return what changed."""
        if self.journal is not None:
            kvs = list(kvs)
        change = StoreChange(revision)
        before = self._layers
        self._layers = {}
        self._sorted = {}
        self.bad_keys = {}
        before_records = {name: dict(kept.records) for name, kept in self._kept.items()}
        for kept in self._kept.values():
            kept.records.clear()  # in place: readers hold these dicts
        for kv in kvs:
            if self._unusable_name(kv.key) or self._record(kv.key, kv.value, kv.mod_revision, change):
                continue
            parsed = self._parse(kv.key, kv.value)
            if parsed is None:
                continue
            layer, key, value = parsed
            self._layers.setdefault(layer, {})
            self._bump(layer, kv.mod_revision)
            if key is not None:
                self._layers[layer][key] = Entry(value, kv.mod_revision)
            else:
                self._note_marker(layer, kv.value, kv.mod_revision)
        for layer in before.keys() | self._layers.keys():
            old, new = before.get(layer, {}), self._layers.get(layer, {})
            if old != new:
                change.layers[layer] = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        if self.synced:
            # Changes missed while not watching (deletes leave no revision behind)
            # are dated at the list revision, so versions never go backwards.
            for layer in change.layers:
                self._bump(layer, revision)
        # A kind is reported changed when its records differ from before the list; records gone
        # while not watching are dated at the list revision.
        change.kinds = set()
        for _, kind in self._kinds:
            kept, old_records = self._kept[kind.name], before_records[kind.name]
            if kept.records == old_records:
                continue
            change.kinds.add(kind.name)
            for key in old_records.keys() ^ kept.records.keys():
                kept.revisions[key] = max(kept.revisions.get(key, 0), revision)
                if kind.scope is not None:
                    change.scopes.add(kind.scope(key))
        self.revision = max(self.revision, revision)
        self.synced = True
        if self.journal is not None:
            self.journal.listed(kvs, revision)
        return change

    def apply(self, events: Iterable[Event]) -> StoreChange:
        """Apply watch events in order; return what changed."""
        if self.journal is not None:
            events = list(events)
        change = StoreChange(self.revision)
        for ev in events:
            self.revision = max(self.revision, ev.mod_revision)
            if self._unusable_name(ev.key):
                if ev.deleted:
                    self.bad_keys.pop(ev.key, None)
                continue
            value = None if ev.deleted else ev.value
            if self._record(ev.key, value, ev.mod_revision, change):
                continue
            parsed = self._parse(ev.key, value)
            if parsed is None:
                continue
            layer, key, decoded = parsed
            self._bump(layer, ev.mod_revision)
            keys = change.layers.setdefault(layer, set())
            if key is None:
                if not ev.deleted:
                    self._note_marker(layer, ev.value, ev.mod_revision)
                continue
            keys.add(key)
            entries = self._layers.setdefault(layer, {})
            index = self._sorted.get(layer)
            if ev.deleted:
                if entries.pop(key, None) is not None and index is not None:
                    del index[bisect.bisect_left(index, key)]
            else:
                if key not in entries and index is not None:
                    bisect.insort(index, key)
                entries[key] = Entry(decoded, ev.mod_revision)
        change.revision = self.revision
        if self.journal is not None:
            self.journal.applied(events)
        return change
