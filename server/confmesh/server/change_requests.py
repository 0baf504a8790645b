"""Change requests: a proposed set of layer changes (or a rollout start), its reviews and its fate.

A record lives in etcd at ``P/meta/changes/<id>``. Every transition (a review,
a schedule, applying it) is a transaction conditioned on the record's mod
revision, so two replicas deciding at once end with one winner; applying
writes the layers, the audit entry and the record's new state in the same
transaction, which is what makes a scheduled change apply exactly once.
"""

from __future__ import annotations

import enum
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import Layer, LayerKind, Scope
from confmesh.merge import JSONValue, loads_json

MAX_TITLE = 200
MAX_TEXT = 2000
MAX_RECORD_BYTES = 1 << 20
MAX_OPEN = 500  # open or approved at once: proposals past it are refused
MAX_OPEN_PER_AUTHOR = 50  # of those, one author's: one writer cannot take the whole pool
MAX_KEPT = 2000  # finished records kept; the oldest are pruned past it
KEEP_FINISHED_SECONDS = 30 * 86400
MAX_REVIEWS = 50


class ChangeState(enum.StrEnum):
    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"
    APPLIED = "applied"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self not in (ChangeState.OPEN, ChangeState.APPROVED)


@dataclass(frozen=True)
class Review:
    identity: str
    approve: bool
    comment: str = ""
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RolloutStart:
    """A staged rollout a change request starts (see confmesh.server.rollouts)."""

    name: str
    scope: Scope
    changes: dict[str, JSONValue | None]
    percent: float
    max_nack_rate: float = 0.2

    @property
    def layer(self) -> Layer:
        return Layer.svc(self.scope.environment, self.scope.service)

    def specs(self, entries: dict[str, JSONValue]) -> list[ChangeSpec]:
        """Its changes as service-layer writes against `entries` (deletes of absent keys dropped)."""
        layer, out = self.layer, []
        for key, value in sorted(self.changes.items()):
            if value is not None:
                out.append(ChangeSpec(layer, key, value))
            elif any(k == key or k.startswith(key + ".") for k in entries):
                out.append(ChangeSpec(layer, key, delete=True))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "environment": self.scope.environment,
            "service": self.scope.service,
            "changes": self.changes,
            "percent": self.percent,
            "max_nack_rate": self.max_nack_rate,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RolloutStart:
        return cls(doc["name"], Scope.checked(doc["environment"], doc["service"]), dict(doc["changes"]),
                   float(doc["percent"]), float(doc.get("max_nack_rate", 0.2)))  # fmt: skip


def new_id() -> str:
    return secrets.token_hex(4)


def check_id(change_id: str) -> str:
    if len(change_id) != 8 or any(c not in "0123456789abcdef" for c in change_id):
        raise errors.InvalidArgument(f"{change_id[:40]!r} is not a change id (8 hex digits)", field="id")
    return change_id


def check_text(value: str, what: str, limit: int = MAX_TEXT) -> str:
    if len(value) > limit:
        raise errors.InvalidArgument(f"{what} is {len(value)} characters; the limit is {limit}", field=what)
    return value


@dataclass(frozen=True)
class ChangeRequest:
    id: str
    title: str
    author: str
    reason: str
    base_revision: int
    required: int
    changes: tuple[ChangeSpec, ...] = ()
    rollout: RolloutStart | None = None
    state: ChangeState = ChangeState.OPEN
    created_at: float = field(default_factory=time.time)
    reviews: tuple[Review, ...] = ()
    apply_at: float = 0.0
    applied_revision: int = 0
    applied_at: float = 0.0
    applied_by: str = ""
    # The audit record its apply wrote (its id under the audit root): what it changed, old and new.
    applied_audit: str = ""
    error: str = ""
    # When it reached a finished state (for pruning).
    finished_at: float = 0.0

    def __post_init__(self) -> None:
        if bool(self.changes) == (self.rollout is not None):
            raise errors.InvalidArgument(
                "a change request holds either changes or a rollout start", field="changes"
            )

    @property
    def layers(self) -> list[Layer]:
        if self.rollout is not None:
            return [self.rollout.layer]
        return sorted({c.layer for c in self.changes})

    def approvers(self) -> list[str]:
        """Identities whose latest review approves (the author never counts)."""
        latest: dict[str, Review] = {}
        for review in self.reviews:
            latest[review.identity] = review
        return sorted(i for i, r in latest.items() if r.approve and i != self.author)

    def with_(self, **changes: Any) -> ChangeRequest:
        if "state" in changes and ChangeState(changes["state"]).finished and not self.finished_at:
            changes.setdefault("finished_at", time.time())
        return replace(self, **changes)

    def encode(self) -> bytes:
        doc = {
            "id": self.id, "title": self.title, "author": self.author, "reason": self.reason,
            "base_revision": self.base_revision, "required": self.required,
            "changes": [_change_doc(c) for c in self.changes],
            "rollout": None if self.rollout is None else self.rollout.as_dict(),
            "state": self.state.value, "created_at": self.created_at,
            "reviews": [{"identity": r.identity, "approve": r.approve, "comment": r.comment, "at": r.at}
                        for r in self.reviews],
            "apply_at": self.apply_at, "applied_revision": self.applied_revision,
            "applied_at": self.applied_at, "applied_by": self.applied_by,
            "applied_audit": self.applied_audit, "error": self.error,
            "finished_at": self.finished_at,
        }  # fmt: skip
        raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        if len(raw) > MAX_RECORD_BYTES:
            raise errors.InvalidArgument(
                f"the change request is {len(raw)} bytes; the limit is {MAX_RECORD_BYTES}: split it",
                code="change_too_large",
                field="changes",
            )
        return raw

    @classmethod
    def decode(cls, raw: bytes) -> ChangeRequest:
        doc = loads_json(raw)
        rollout = doc.get("rollout")
        return cls(
            id=doc["id"],
            title=doc.get("title", ""),
            author=doc["author"],
            reason=doc.get("reason", ""),
            base_revision=int(doc["base_revision"]),
            required=int(doc.get("required", 0)),
            changes=tuple(_change_spec(c) for c in doc.get("changes", ())),
            rollout=None if rollout is None else RolloutStart.from_dict(rollout),
            state=ChangeState(doc["state"]),
            created_at=float(doc.get("created_at", 0)),
            reviews=tuple(
                Review(r["identity"], bool(r["approve"]), r.get("comment", ""), float(r["at"]))
                for r in doc.get("reviews", ())
            ),
            apply_at=float(doc.get("apply_at", 0)),
            applied_revision=int(doc.get("applied_revision", 0)),
            applied_at=float(doc.get("applied_at", 0)),
            applied_by=doc.get("applied_by", ""),
            applied_audit=doc.get("applied_audit", ""),
            error=doc.get("error", ""),
            finished_at=float(doc.get("finished_at", 0)),
        )


def _change_doc(change: ChangeSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"layer": change.layer.path, "key": change.key}
    if change.delete:
        doc["delete"] = True
    else:
        doc["value"] = change.value
    return doc


def _change_spec(doc: dict[str, Any]) -> ChangeSpec:
    layer = Layer.from_path(doc["layer"])
    if doc.get("delete"):
        return ChangeSpec(layer, doc["key"], delete=True)
    return ChangeSpec(layer, doc["key"], doc.get("value"))


def after_changes(
    current: dict[Layer, dict[str, JSONValue]], changes: Sequence[ChangeSpec]
) -> dict[Layer, dict[str, JSONValue]]:
    """Each touched layer's entries once `changes` apply in order (a config delete takes its subtree).

    Raises NotFound for a delete of a key that is not there, as the write itself would.
    """
    out = {layer: dict(current.get(layer, {})) for layer in {c.layer for c in changes}}
    for change in changes:
        entries = out[change.layer]
        if change.delete:
            nested = change.layer.kind is not LayerKind.FLAGS
            doomed = [k for k in entries if k == change.key or (nested and k.startswith(change.key + "."))]
            if not doomed:
                raise errors.NotFound(
                    f"key {change.key!r} is not set in layer {change.layer}", field=change.key
                )
            for k in doomed:
                del entries[k]
        else:
            entries[change.key] = change.value
    return out
