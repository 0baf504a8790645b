"""History from the audit log: what a layer held at a past version, and undoing recent changes.

Every change through the API is recorded in the audit log with each key's
old and new value, in the change's own transaction (``confmesh.server.audit``).
Walking those records newest-first and applying each change backwards turns
the current layer contents into the contents at any earlier revision. The
audit records are ordinary keys, so this works after etcd has compacted its
own history; it is bounded by the audit retention (``prune_audit``).

What it cannot restore, it refuses to guess: values written out of band
(they have no audit record) and secret values (recorded redacted).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from etcd3aio.kv import KVService

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import KeyLayout, Layer, LayerKind
from confmesh.merge import JSONValue
from confmesh.server.etcd import Etcd
from confmesh.server.schemas import contains_redacted
from confmesh.server.writer import ancestors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    revision: int
    record: dict[str, Any]


def pruned_key(layout: KeyLayout) -> str:
    return f"{layout.prefix}/meta/history/pruned"


async def pruned_before(etcd: Etcd, layout: KeyLayout) -> int:
    """The newest revision whose audit record retention removed (0: none removed)."""
    _, kvs = await etcd.list_prefix(pruned_key(layout))
    for kv in kvs:
        if kv.key == pruned_key(layout):
            try:
                return int(json.loads(kv.value)["revision"])
            except (ValueError, KeyError, TypeError):
                return 0
    return 0


async def changes_after(
    etcd: Etcd, layout: KeyLayout, layers: Iterable[Layer], *, revision: int = 0, since: float = 0.0
) -> list[Recorded]:
    """Audit records touching `layers` newer than `revision` (or made at/after time `since`), newest first."""
    wanted = {str(layer) for layer in layers}
    out: list[Recorded] = []
    async for kv in etcd.newest_first(layout.audit_root):
        if kv.mod_revision <= revision:
            break
        try:
            record = json.loads(kv.value)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if since and float(record.get("at", 0)) < since:
            break
        if any(change.get("layer") in wanted for change in record.get("changes", ())):
            out.append(Recorded(kv.mod_revision, record))
    return out


def undo(
    current: Mapping[Layer, Mapping[str, JSONValue]], records: Iterable[Recorded]
) -> dict[Layer, dict[str, JSONValue]]:
    """Layer contents before `records` (newest first) were applied to `current`."""
    target = {layer: dict(entries) for layer, entries in current.items()}
    by_path = {str(layer): layer for layer in target}
    for rec in records:
        for change in reversed(rec.record.get("changes", ())):
            layer = by_path.get(change.get("layer", ""))
            if layer is None:
                continue
            entries, key = target[layer], change["key"]
            if "old" in change:
                if contains_redacted(change["old"]):
                    raise errors.FailedPrecondition(
                        f"{layer}:{key} was a secret value at revision {rec.revision - 1} and the history "
                        "keeps it redacted; set it again (or use a secret reference) instead",
                        field=key, code="redacted_in_history",
                    )  # fmt: skip
                entries[key] = change["old"]
            else:
                entries.pop(key, None)
    return target


async def prune_audit(etcd: Etcd, layout: KeyLayout, retention_seconds: float) -> int:
    """Delete audit records older than the retention (keys sort by time); returns the newest
    revision removed (0: nothing to remove)."""
    cutoff = f"{layout.audit_root}{int((time.time() - retention_seconds) * 1e9):020d}"
    newest = await etcd.newest_mod_revision(layout.audit_root, end=cutoff)
    if not newest:
        return 0
    marker = json.dumps({"revision": newest, "at": time.time()}).encode()
    await etcd.txn(
        [],
        [KVService.txn_op_delete(layout.audit_root, range_end=cutoff.encode()),
         KVService.txn_op_put(pruned_key(layout), marker)],
    )  # fmt: skip
    log.info("audit retention: removed the records up to revision %d", newest)
    return newest


def changes_towards(
    layer: Layer, current: Mapping[str, JSONValue], target: Mapping[str, JSONValue]
) -> list[ChangeSpec]:
    """Deletes then puts that turn `current` into `target` (a deleted config key takes its subtree along)."""
    gone = sorted(k for k in current if k not in target)
    if layer.kind is not LayerKind.FLAGS:
        dropped = set(gone)
        gone = [k for k in gone if not any(a in dropped for a in ancestors(k))]
    puts = [ChangeSpec(layer, k, v) for k, v in sorted(target.items()) if k not in current or current[k] != v]
    return [ChangeSpec(layer, k, delete=True) for k in gone] + puts
