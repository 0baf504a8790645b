"""Validated writes: each request becomes one etcd transaction.

A write reads the current contents of every layer it touches at revision R,
checks the layer would still be well-formed afterwards, and commits only if
no key in those layers changed since R (optimistic concurrency, retried a few
times). The same transaction touches each layer's marker key, so deletes move
the layer's version too. Nothing is ever half-written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from etcd3aio.kv import KVService, prefix_range_end

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import KeyLayout, Layer, split_key
from confmesh.merge import MAX_VALUE_BYTES, JSONValue, find_conflicts, normalize, parse_json_value
from confmesh.server.etcd import Etcd

MAX_CHANGES = 100
CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class WriteResult:
    revision: int
    changed: list[str]


class Writer:
    def __init__(self, etcd: Etcd, layout: KeyLayout) -> None:
        self.etcd = etcd
        self.layout = layout

    def _validate(self, changes: Sequence[ChangeSpec]) -> list[tuple[ChangeSpec, bytes]]:
        if not changes:
            raise errors.InvalidArgument("no changes given", field="changes")
        if len(changes) > MAX_CHANGES:
            raise errors.InvalidArgument(
                f"{len(changes)} changes in one request; the limit is {MAX_CHANGES}", field="changes"
            )
        seen: set[tuple[Layer, str]] = set()
        out = []
        for i, change in enumerate(changes):
            split_key(change.key)
            if (change.layer, change.key) in seen:
                raise errors.InvalidArgument(
                    f"key {change.key!r} appears twice for layer {change.layer}", field=f"changes[{i}].key"
                )
            seen.add((change.layer, change.key))
            encoded = b""
            if not change.delete:
                value = normalize(change.value, path=change.key)
                encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
                if len(encoded) > MAX_VALUE_BYTES:
                    raise errors.InvalidArgument(
                        f"{change.key}: value is {len(encoded)} bytes; the limit is {MAX_VALUE_BYTES}",
                        code="value_too_large",
                        field=change.key,
                    )
            out.append((change, encoded))
        deletes = [(c.layer, c.key) for c in changes if c.delete]
        for c in changes:
            for layer, key in deletes:
                if c.layer == layer and not c.delete and (c.key == key or c.key.startswith(key + ".")):
                    raise errors.InvalidArgument(
                        f"key {c.key!r} is both written and deleted (via {key!r}) in layer {layer}",
                        field=c.key,
                    )
        return out

    async def _read_layer(self, layer: Layer, revision: int) -> tuple[int, dict[str, JSONValue]]:
        root = self.layout.layer_root(layer)
        revision, kvs = await self.etcd.list_prefix(root, revision)
        entries: dict[str, JSONValue] = {}
        for kv in kvs:
            key = kv.key[len(root) :]
            try:
                entries[key] = parse_json_value(kv.value, path=key)
            except errors.InvalidArgument:
                entries[key] = None
        return revision, entries

    async def write(self, changes: Sequence[ChangeSpec], *, actor: str, reason: str) -> WriteResult:
        validated = self._validate(changes)
        layers = sorted({c.layer for c, _ in validated})
        for _ in range(CONFLICT_RETRIES):
            revision = 0
            current: dict[Layer, dict[str, JSONValue]] = {}
            for layer in layers:
                revision, current[layer] = await self._read_layer(layer, revision)
            ops = []
            changed: list[str] = []
            for change, encoded in validated:
                entries = current[change.layer]
                etcd_key = self.layout.config_key(change.layer, change.key)
                if change.delete:
                    doomed = [k for k in entries if k == change.key or k.startswith(change.key + ".")]
                    if not doomed:
                        raise errors.NotFound(
                            f"key {change.key!r} is not set in layer {change.layer}", field=change.key
                        )
                    for k in doomed:
                        del entries[k]
                    ops.append(KVService.txn_op_delete(etcd_key))
                    ops.append(
                        KVService.txn_op_delete(etcd_key + ".", range_end=prefix_range_end(etcd_key + "."))
                    )
                    changed.extend(f"{change.layer}/{k}" for k in sorted(doomed))
                else:
                    entries[change.key] = json.loads(encoded)
                    ops.append(KVService.txn_op_put(etcd_key, encoded))
                    changed.append(f"{change.layer}/{change.key}")
            for layer in layers:
                conflicts = find_conflicts(current[layer])
                if conflicts:
                    key, ancestor = conflicts[0]
                    raise errors.InvalidArgument(
                        f"key {key!r} would sit below {ancestor!r} in layer {layer}, but {ancestor!r} "
                        "is not an object; delete one of them first",
                        code="layer_conflict",
                        field=key,
                    )
                marker = json.dumps(
                    {"actor": actor, "reason": reason, "at": time.time()}, separators=(",", ":")
                ).encode()
                ops.append(KVService.txn_op_put(self.layout.marker_key(layer), marker))
            compare = [self.etcd.unchanged_since(self.layout.layer_root(layer), revision) for layer in layers]
            resp = await self.etcd.txn(compare, ops)
            if resp.succeeded:
                return WriteResult(revision=resp.header.revision, changed=changed)
        raise errors.FailedPrecondition(
            "the layers kept changing under this write; try again", code="write_conflict"
        )
