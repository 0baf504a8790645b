"""The revision-consistent in-memory copy of confmesh's etcd key space.

Pure state, no I/O: ``EtcdSource`` feeds it full lists and watch events and
it answers which layers changed. Each layer carries a revision that only
grows: the newest of its keys' and marker's mod revisions, and of the deletes
seen while watching. A scope's snapshot version is the max over its layers.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from confmesh.errors import InvalidArgument
from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.merge import JSONValue, parse_json_value
from confmesh.server.access import TokenRecord
from confmesh.server.change_requests import ChangeRequest
from confmesh.server.kv import Event, KeyValue
from confmesh.server.rollouts import Rollout
from confmesh.server.schemas import SchemaRecord, ServiceSchema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    value: JSONValue
    mod_revision: int


# The keys that changed, per layer (empty for a layer whose marker alone changed).
Changes = dict[Layer, set[str]]


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
    def __init__(
        self,
        layout: KeyLayout,
        *,
        on_tokens: Callable[[], None] | None = None,
        on_scopes: Callable[[set[Scope]], None] | None = None,
    ) -> None:
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
        # Bearer tokens by id (confmesh.server.access), and who to tell when they change.
        self.tokens: dict[str, TokenRecord] = {}
        self.on_tokens = on_tokens
        # Registered service schemas (confmesh.server.schemas) and when each last changed.
        self.schemas: dict[Scope, ServiceSchema] = {}
        self.schema_revision: dict[Scope, int] = {}
        # Scopes whose snapshots changed without a layer changing (a schema or a rollout), and
        # who to tell so they are re-resolved and pushed.
        self.on_scopes = on_scopes
        self._scopes_changed: set[Scope] = set()
        # Staged rollouts (confmesh.server.rollouts) with their record's mod revision.
        self.rollouts: dict[Scope, tuple[Rollout, int]] = {}
        # Each replica's published ledger summary: server id -> chunk -> (value, mod revision),
        # read by confmesh.server.fleet. The dict is kept (updated in place) for its readers.
        self.fleet: dict[str, dict[str, tuple[bytes, int]]] = {}
        # Change requests by id, with their record's mod revision, and who to tell when any changes.
        self.changes: dict[str, tuple[ChangeRequest, int]] = {}
        self.on_changes: list[Callable[[], None]] = []
        self._changes_moved = False

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

    def _token(self, etcd_key: str, value: bytes | None) -> bool:
        """Track a token record; True if `etcd_key` is one."""
        if not etcd_key.startswith(self.layout.token_root):
            return False
        token_id = etcd_key[len(self.layout.token_root) :]
        if value is None:
            self.tokens.pop(token_id, None)
            return True
        try:
            self.tokens[token_id] = TokenRecord.decode(token_id, value)
        except (ValueError, KeyError, TypeError) as exc:
            self.tokens.pop(token_id, None)
            self.bad_keys[etcd_key] = f"unusable token record: {exc}"
        return True

    def _schema(self, etcd_key: str, value: bytes | None, revision: int) -> bool:
        """Track a registered schema; True if `etcd_key` is one."""
        if not etcd_key.startswith(self.layout.schema_root):
            return False
        env, _, service = etcd_key[len(self.layout.schema_root) :].partition("/")
        try:
            scope = Scope.checked(env, service)
        except InvalidArgument as exc:
            self.bad_keys[etcd_key] = exc.message
            return True
        self.schema_revision[scope] = max(self.schema_revision.get(scope, 0), revision)
        self._scopes_changed.add(scope)
        if value is None:
            self.schemas.pop(scope, None)
            return True
        try:
            record = SchemaRecord.decode(value)
            self.schemas[scope] = ServiceSchema(scope, record.document, record.registered_by)
        except (ValueError, TypeError, InvalidArgument) as exc:
            self.schemas.pop(scope, None)
            self.bad_keys[etcd_key] = f"unusable schema: {exc}"
        return True

    def _rollout(self, etcd_key: str, value: bytes | None, revision: int) -> bool:
        """Track a rollout record; True if `etcd_key` is one (its scope's snapshots change)."""
        if not etcd_key.startswith(self.layout.rollout_root):
            return False
        env, _, service = etcd_key[len(self.layout.rollout_root) :].partition("/")
        try:
            scope = Scope.checked(env, service)
        except InvalidArgument as exc:
            self.bad_keys[etcd_key] = exc.message
            return True
        self._scopes_changed.add(scope)
        if value is None:
            self.rollouts.pop(scope, None)
            return True
        try:
            self.rollouts[scope] = (Rollout.decode(value), revision)
        except (ValueError, KeyError, TypeError, InvalidArgument) as exc:
            self.rollouts.pop(scope, None)
            self.bad_keys[etcd_key] = f"unusable rollout: {exc}"
        return True

    def _change(self, etcd_key: str, value: bytes | None, revision: int) -> bool:
        """Track a change request; True if `etcd_key` is one."""
        if not etcd_key.startswith(self.layout.change_root):
            return False
        change_id = etcd_key[len(self.layout.change_root) :]
        self._changes_moved = True
        if value is None:
            self.changes.pop(change_id, None)
            return True
        try:
            self.changes[change_id] = (ChangeRequest.decode(value), revision)
        except (ValueError, KeyError, TypeError, InvalidArgument) as exc:
            self.changes.pop(change_id, None)
            self.bad_keys[etcd_key] = f"unusable change request: {exc}"
        return True

    def _report_changes(self) -> None:
        if self._changes_moved:
            self._changes_moved = False
            for callback in self.on_changes:
                callback()

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

    def _fleet(self, etcd_key: str, value: bytes | None, revision: int) -> bool:
        """Track a replica's fleet summary chunk; True if `etcd_key` is one."""
        if not etcd_key.startswith(self.layout.fleet_root):
            return False
        server_id, _, chunk = etcd_key[len(self.layout.fleet_root) :].partition("/")
        if value is None:
            chunks = self.fleet.get(server_id)
            if chunks is not None:
                chunks.pop(chunk, None)
                if not chunks:
                    del self.fleet[server_id]
        else:
            self.fleet.setdefault(server_id, {})[chunk] = (value, revision)
        return True

    def _report_scopes(self) -> None:
        changed, self._scopes_changed = self._scopes_changed, set()
        if changed and self.on_scopes is not None:
            self.on_scopes(changed)

    def _tokens_changed(self) -> None:
        if self.on_tokens is not None:
            self.on_tokens()

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

    def replace(self, kvs: Iterable[KeyValue], revision: int) -> Changes:
        """Load a full list taken at `revision`; return what changed."""
        before = self._layers
        self._layers = {}
        self._sorted = {}
        self.bad_keys = {}
        tokens_before, self.tokens = self.tokens, {}
        schemas_before, self.schemas = self.schemas, {}
        rollouts_before, self.rollouts = self.rollouts, {}
        self.changes = {}
        self._changes_moved = True
        self.fleet.clear()
        for kv in kvs:
            if (
                self._unusable_name(kv.key)
                or self._fleet(kv.key, kv.value, kv.mod_revision)
                or self._token(kv.key, kv.value)
                or self._schema(kv.key, kv.value, kv.mod_revision)
                or self._rollout(kv.key, kv.value, kv.mod_revision)
                or self._change(kv.key, kv.value, kv.mod_revision)
            ):
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
        changed: Changes = {}
        for layer in before.keys() | self._layers.keys():
            old, new = before.get(layer, {}), self._layers.get(layer, {})
            if old != new:
                changed[layer] = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        if self.synced:
            # Changes missed while not watching (deletes leave no revision behind)
            # are dated at the list revision, so versions never go backwards.
            for layer in changed:
                self._bump(layer, revision)
        self.revision = max(self.revision, revision)
        self.synced = True
        if self.tokens != tokens_before:
            self._tokens_changed()
        for scope in rollouts_before.keys() ^ self.rollouts.keys():
            self._scopes_changed.add(scope)
        for scope in schemas_before.keys() ^ self.schemas.keys():
            self.schema_revision[scope] = max(self.schema_revision.get(scope, 0), revision)
            self._scopes_changed.add(scope)
        self._report_scopes()
        self._report_changes()
        return changed

    def apply(self, events: Iterable[Event]) -> Changes:
        """Apply watch events in order; return what changed."""
        changed: Changes = {}
        tokens = False
        for ev in events:
            self.revision = max(self.revision, ev.mod_revision)
            if self._unusable_name(ev.key):
                if ev.deleted:
                    self.bad_keys.pop(ev.key, None)
                continue
            if self._fleet(ev.key, None if ev.deleted else ev.value, ev.mod_revision):
                continue
            if self._token(ev.key, None if ev.deleted else ev.value):
                tokens = True
                continue
            value = None if ev.deleted else ev.value
            if (
                self._schema(ev.key, value, ev.mod_revision)
                or self._rollout(ev.key, value, ev.mod_revision)
                or self._change(ev.key, value, ev.mod_revision)
            ):
                continue
            parsed = self._parse(ev.key, None if ev.deleted else ev.value)
            if parsed is None:
                continue
            layer, key, value = parsed
            self._bump(layer, ev.mod_revision)
            keys = changed.setdefault(layer, set())
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
                entries[key] = Entry(value, ev.mod_revision)
        if tokens:
            self._tokens_changed()
        self._report_scopes()
        self._report_changes()
        return changed
