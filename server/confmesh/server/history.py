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

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import KeyLayout, Layer, LayerKind
from confmesh.merge import JSONValue, parse_json_value
from confmesh.server.etcd import Etcd, RevisionCompacted
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


async def layer_at(etcd: Etcd, layout: KeyLayout, layer: Layer, revision: int) -> dict[str, JSONValue] | None:
    """What `layer` held at `revision`, read from etcd's own history; None once etcd compacted it.

    This is exact: it includes out-of-band writes and secret values, which the
    audit log cannot restore.
    """
    root = layout.layer_root(layer)
    try:
        _, kvs = await etcd.list_prefix(root, revision)
    except RevisionCompacted:
        return None
    return {kv.key[len(root) :]: parse_json_value(kv.value, path=kv.key[len(root) :]) for kv in kvs}


def check_accounted(
    layer: Layer,
    revisions: Mapping[str, int],
    base: int,
    records: Iterable[Recorded],
    now: Mapping[str, JSONValue],
) -> None:
    """Refuse to undo from the audit log when something it does not record changed `layer` after `base`.

    `revisions`: each current key's etcd mod revision. A key modified after
    `base` by no audited change, or an audited change whose recorded result is
    not what the layer held next, means an out-of-band write came between:
    undoing the records would then restore a guess, not the past.
    """
    path = str(layer)
    audited: dict[str, set[int]] = {}
    state = dict(now)
    for rec in records:
        for change in reversed(rec.record.get("changes", ())):
            if change.get("layer") != path:
                continue
            key = change["key"]
            audited.setdefault(key, set()).add(rec.revision)
            present = key in state
            expected = change["op"] == "put"
            if present != expected or (
                expected and not contains_redacted(change["new"]) and state[key] != change["new"]
            ):
                raise _out_of_band(layer, key, rec.revision)
            if "old" in change:
                state[key] = change["old"]
            else:
                state.pop(key, None)
    for key, revision in revisions.items():
        if revision > base and revision not in audited.get(key, ()):
            raise _out_of_band(layer, key, revision)


async def check_boundary(
    etcd: Etcd,
    layout: KeyLayout,
    layer: Layer,
    base: int,
    target: Mapping[str, JSONValue],
    keys: Iterable[str],
) -> None:
    """Refuse when the undone values of `keys` are not what the audit log says they were at `base`.

    For each key, the newest audited change at or before `base` says what it
    held then; an out-of-band write between that and the first undone change
    shows as a difference. Keys older than the kept audit log are taken as
    the undone record says (nothing older can say otherwise).
    """
    path, pending = str(layer), set(keys)
    async for kv in etcd.newest_first(layout.audit_root):
        if not pending:
            return
        if kv.mod_revision > base:
            continue
        try:
            record = json.loads(kv.value)
        except ValueError:
            continue
        for change in reversed(record.get("changes", ()) if isinstance(record, dict) else ()):
            key = change.get("key")
            if change.get("layer") != path or key not in pending:
                continue
            pending.discard(key)
            if change["op"] == "put":
                held = key in target and (contains_redacted(change["new"]) or target[key] == change["new"])
            else:
                held = key not in target
            if not held:
                raise _out_of_band(layer, key, kv.mod_revision)


def touched_keys(layer: Layer, records: Iterable[Recorded]) -> set[str]:
    path = str(layer)
    return {c["key"] for r in records for c in r.record.get("changes", ()) if c.get("layer") == path}


def _out_of_band(layer: Layer, key: str, revision: int) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"{layer}:{key} was changed out of band (outside confmesh's audited writes) near revision "
        f"{revision}, and etcd no longer keeps that history: the audit log cannot restore this layer "
        "exactly; set the values you want instead",
        field=key,
        code="history_incomplete",
    )


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
        [Etcd.delete_op(layout.audit_root, range_end=cutoff.encode()),
         Etcd.put_op(pruned_key(layout), marker)],
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
