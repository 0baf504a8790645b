"""Staged rollouts: a change to one service seen first by a stable slice of its instances.

A rollout lives in etcd at ``P/meta/rollouts/<env>/<service>`` until it is
promoted (its changes are written for real) or aborted. While active, an
instance whose ``murmur3(name:instance id)`` falls under the rollout's
percentage gets the service's config with the rollout's changes on top; the
others get the config as it is. Raising the percentage only adds instances:
the slice is stable across reconnects and restarts.

Every change to the rollout record (start, a new percentage, abort) bumps
the version of the service's snapshots, so an aborted canary goes *forward*
to the base config and no client ever sees its version go back.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import mmh3

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import Layer, Scope, check_name
from confmesh.merge import JSONValue, loads_json


class RolloutState(enum.StrEnum):
    ACTIVE = "active"
    ABORTED = "aborted"


@dataclass(frozen=True)
class Rollout:
    name: str
    scope: Scope
    # Service-layer changes: key -> new value, or None to delete the key.
    changes: dict[str, JSONValue | None]
    percent: float
    max_nack_rate: float = 0.2
    state: RolloutState = RolloutState.ACTIVE
    started_by: str = ""
    started_at: float = field(default_factory=time.time)
    reason: str = ""
    # Why it was aborted (by hand or automatically).
    abort_reason: str = ""
    # The change request that started it ("" for a direct StartRollout).
    change_id: str = ""

    def __post_init__(self) -> None:
        check_name(self.name, "rollout name")
        if not 0 < self.percent <= 100:
            raise errors.InvalidArgument("percent must be in (0, 100]", field="percent")
        if not 0 <= self.max_nack_rate <= 1:
            raise errors.InvalidArgument("max_nack_rate must be in [0, 1]", field="max_nack_rate")
        if not self.changes:
            raise errors.InvalidArgument("a rollout needs at least one change", field="changes")

    @property
    def active(self) -> bool:
        return self.state is RolloutState.ACTIVE

    @property
    def layer(self) -> Layer:
        return Layer.svc(self.scope.environment, self.scope.service)

    def includes(self, instance_id: str) -> bool:
        """Is `instance_id` in the canary slice (stable; growing with the percentage)?"""
        if not self.active:
            return False
        bucket = mmh3.hash(f"{self.name}:{instance_id}", signed=False) % 10_000
        return bucket < round(self.percent * 100)

    def change_specs(self) -> list[ChangeSpec]:
        layer = self.layer
        return [ChangeSpec(layer, k, delete=True) if v is None else ChangeSpec(layer, k, v)
                for k, v in sorted(self.changes.items())]  # fmt: skip

    def apply_to(self, entries: dict[str, JSONValue]) -> dict[str, JSONValue]:
        """The service layer's entries with the rollout's changes on top (a deleted key takes its subtree)."""
        out = dict(entries)
        for key, value in sorted(self.changes.items()):
            for k in [k for k in out if k == key or k.startswith(key + ".") or key.startswith(k + ".")]:
                del out[k]
            if value is not None:
                out[key] = value
        return out

    def with_(self, **changes: Any) -> Rollout:
        return replace(self, **changes)

    def encode(self) -> bytes:
        return json.dumps({
            "name": self.name, "environment": self.scope.environment, "service": self.scope.service,
            "changes": self.changes, "percent": self.percent, "max_nack_rate": self.max_nack_rate,
            "state": self.state.value, "started_by": self.started_by, "started_at": self.started_at,
            "reason": self.reason, "abort_reason": self.abort_reason, "change_id": self.change_id,
        }).encode()  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> Rollout:
        doc = loads_json(raw)
        return cls(
            name=doc["name"],
            scope=Scope.checked(doc["environment"], doc["service"]),
            changes=dict(doc["changes"]),
            percent=float(doc["percent"]),
            max_nack_rate=float(doc.get("max_nack_rate", 0.2)),
            state=RolloutState(doc.get("state", "active")),
            started_by=doc.get("started_by", ""),
            started_at=float(doc.get("started_at", 0)),
            reason=doc.get("reason", ""),
            abort_reason=doc.get("abort_reason", ""),
            change_id=doc.get("change_id", ""),
        )
