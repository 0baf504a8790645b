"""Storing and revoking bearer tokens: one etcd transaction each, audited in the same transaction."""

from __future__ import annotations

from etcd3aio._protobuf import rpc_pb2  # type: ignore[attr-defined]
from etcd3aio.kv import KVService

from confmesh import errors
from confmesh.keys import KeyLayout
from confmesh.server.access import TokenRecord
from confmesh.server.audit import AuditEntry
from confmesh.server.etcd import Etcd


def _absent(key: str) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(
        result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.CREATE, key=key.encode(), create_revision=0
    )


async def store_token(etcd: Etcd, layout: KeyLayout, record: TokenRecord, *, actor: str, reason: str) -> int:
    """Write a new token record (its id must be unused); returns the revision."""
    key = layout.token_root + record.id
    audit = AuditEntry(actor, reason, f"CreateToken {record.name}: {record.grant.describe()}")
    resp = await etcd.txn(
        [_absent(key)],
        [KVService.txn_op_put(key, record.encode()), KVService.txn_op_put(audit.key(layout), audit.encode())],
    )
    if not resp.succeeded:
        raise errors.FailedPrecondition("token id collision; try again", code="write_conflict")
    audit.committed(resp.header.revision)
    return int(resp.header.revision)


async def delete_token(etcd: Etcd, layout: KeyLayout, record: TokenRecord, *, actor: str, reason: str) -> int:
    key = layout.token_root + record.id
    audit = AuditEntry(actor, reason, f"RevokeToken {record.name}")
    resp = await etcd.txn(
        [_exists(key)],
        [KVService.txn_op_delete(key), KVService.txn_op_put(audit.key(layout), audit.encode())],
    )
    if not resp.succeeded:
        raise errors.NotFound(f"token {record.name!r} is already revoked", field="name")
    audit.committed(resp.header.revision)
    return int(resp.header.revision)


def _exists(key: str) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(
        result=rpc_pb2.Compare.GREATER, target=rpc_pb2.Compare.CREATE, key=key.encode(), create_revision=0
    )
