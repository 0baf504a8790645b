"""The record kinds a server keeps beside its config layers, registered with its store.

Each is a ``RecordKind``: where its records live, how one is named and decoded, and which scope's
snapshots it changes. The store keeps them all the same way (``store.records(SCHEMAS)``), so adding
a kind is a declaration here, not a tracker in the store.
"""

from __future__ import annotations

from confmesh.keys import KeyLayout, Scope
from confmesh.server.access import TokenRecord
from confmesh.server.change_requests import ChangeRequest
from confmesh.server.rollouts import Rollout
from confmesh.server.schemas import SchemaRecord, ServiceSchema
from confmesh.server.store import ConfigStore, RecordKind


def _scope(suffix: str) -> Scope:
    env, _, service = suffix.partition("/")
    return Scope.checked(env, service)


def _schema(scope: Scope, raw: bytes, revision: int) -> ServiceSchema:
    record = SchemaRecord.decode(raw)
    return ServiceSchema(scope, record.document, record.registered_by)


def _fleet_chunk(suffix: str) -> tuple[str, str]:
    server_id, _, chunk = suffix.partition("/")
    return server_id, chunk


# Bearer tokens by id (confmesh.server.access).
TOKENS: RecordKind[str, TokenRecord] = RecordKind(
    "token record",
    lambda layout: layout.token_root,
    key=str,
    decode=lambda token_id, raw, _: TokenRecord.decode(token_id, raw),
)
# Registered service schemas: a scope's snapshots are checked against its schema.
SCHEMAS: RecordKind[Scope, ServiceSchema] = RecordKind(
    "schema", lambda layout: layout.schema_root, key=_scope, decode=_schema, scope=lambda scope: scope
)
# Staged rollouts, with their record's mod revision: a rollout's step is a new snapshot version.
ROLLOUTS: RecordKind[Scope, tuple[Rollout, int]] = RecordKind(
    "rollout",
    lambda layout: layout.rollout_root,
    key=_scope,
    decode=lambda _, raw, revision: (Rollout.decode(raw), revision),
    scope=lambda scope: scope,
)
# Change requests by id, with their record's mod revision.
CHANGES: RecordKind[str, tuple[ChangeRequest, int]] = RecordKind(
    "change request",
    lambda layout: layout.change_root,
    key=str,
    decode=lambda _, raw, revision: (ChangeRequest.decode(raw), revision),
)
# Each replica's published ledger summary, (server id, chunk) -> (value, mod revision), read by
# confmesh.server.fleet.
FLEET: RecordKind[tuple[str, str], tuple[bytes, int]] = RecordKind(
    "fleet summary",
    lambda layout: layout.fleet_root,
    key=_fleet_chunk,
    decode=lambda _, raw, revision: (raw, revision),
)

STANDARD = (TOKENS, SCHEMAS, ROLLOUTS, CHANGES, FLEET)


def server_store(layout: KeyLayout) -> ConfigStore:
    """A store that keeps every kind a server reads."""
    return ConfigStore(layout, STANDARD)


__all__ = ["CHANGES", "FLEET", "ROLLOUTS", "SCHEMAS", "STANDARD", "TOKENS", "server_store"]
