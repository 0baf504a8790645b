"""The audit log: one record per change, written in the change's own etcd transaction.

A record lives at ``P/audit/<time-ns>-<random>`` (so key order is time
order) and holds the actor, the reason, the API call and every key's old and
new value; its mod_revision is the change's revision. Each committed record
is also logged as one JSON line on the ``confmesh.audit`` logger.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confmesh.keys import KeyLayout, Layer
from confmesh.merge import JSONValue
from confmesh.server.etcd import Etcd

log = logging.getLogger("confmesh.audit")


@dataclass
class AuditEntry:
    actor: str
    reason: str
    source: str
    at: float = field(default_factory=time.time)
    changes: list[dict[str, Any]] = field(default_factory=list)
    # W3C traceparent of the write's span ("" when untraced).
    trace: str = ""

    def put(self, layer: Layer, key: str, old: JSONValue | None, new: JSONValue, existed: bool) -> None:
        change: dict[str, Any] = {"layer": str(layer), "key": key, "op": "put", "new": new}
        if existed:
            change["old"] = old
        self.changes.append(change)

    def delete(self, layer: Layer, key: str, old: JSONValue) -> None:
        self.changes.append({"layer": str(layer), "key": key, "op": "delete", "old": old})

    @staticmethod
    def new_id() -> str:
        """A new record's id (its key under the audit root): time-ordered, then random."""
        return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"

    def key(self, layout: KeyLayout) -> str:
        return layout.audit_root + self.new_id()

    def encode(self) -> bytes:
        return json.dumps(self.as_dict(), ensure_ascii=False).encode()

    def as_dict(self) -> dict[str, Any]:
        record = {"actor": self.actor, "reason": self.reason, "source": self.source, "at": self.at,
                  "changes": self.changes}  # fmt: skip
        if self.trace:
            record["trace"] = self.trace
        return record

    def committed(self, revision: int) -> None:
        log.info(json.dumps({"revision": revision, **self.as_dict()}, ensure_ascii=False))


@dataclass(frozen=True)
class AuditFilter:
    """Empty fields match anything. A record matches when any of its changes does."""

    environment: str = ""
    service: str = ""
    key_prefix: str = ""
    actor: str = ""

    def matches(self, entry: dict[str, Any]) -> bool:
        if self.actor and entry.get("actor") != self.actor:
            return False
        if not (self.environment or self.service or self.key_prefix):
            return True  # records without changes (denials, tokens) match only unfiltered
        for change in entry.get("changes", []):
            layer = Layer.from_path(change["layer"])
            if self.environment and layer.environment not in (self.environment, ""):  # defaults: every env
                continue
            if self.service and layer.service not in (self.service, ""):  # env layers: every service
                continue
            if self.key_prefix and not change["key"].startswith(self.key_prefix):
                continue
            return True
        return False


async def read_audit(
    etcd: Etcd,
    layout: KeyLayout,
    which: AuditFilter,
    limit: int,
    *,
    visible: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda entry: entry,
) -> list[tuple[str, int, dict[str, Any]]]:
    """(id, revision, record) of the newest `limit` matching records, newest first.

    `visible` gives each record as the caller may see it (None: not at all).
    """
    out: list[tuple[str, int, dict[str, Any]]] = []
    async for kv in etcd.newest_first(layout.audit_root):
        try:
            entry = json.loads(kv.value)
        except ValueError:
            continue
        entry = visible(entry) if isinstance(entry, dict) else None
        if entry is not None and which.matches(entry):
            out.append((kv.key[len(layout.audit_root) :], kv.mod_revision, entry))
            if len(out) >= limit:
                break
    return out


async def record_denial(etcd: Etcd, layout: KeyLayout, identity: str, method: str, message: str) -> None:
    """An audit record for a refused call: who, which call, and why (no changes)."""
    entry = AuditEntry(identity, message, f"denied:{method}")
    resp = await etcd.txn([], [Etcd.put_op(entry.key(layout), entry.encode())])
    entry.committed(resp.header.revision)
