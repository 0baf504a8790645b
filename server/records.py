"""Writes of non-config records (bearer tokens, service schemas): one etcd transaction each,
with the record's audit entry in the same transaction."""

from __future__ import annotations

from etcd3aio._protobuf import rpc_pb2  # type: ignore[attr-defined]
from etcd3aio.kv import KVService

from confmesh import errors
from confmesh.keys import KeyLayout
from confmesh.server.access import TokenRecord
from confmesh.server.audit import AuditEntry
from confmesh.server.etcd import Etcd


def _created(key: str, result: int) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(result=result, target=rpc_pb2.Compare.CREATE, key=key.encode(), create_revision=0)


async def write_record(
    etcd: Etcd,
    layout: KeyLayout,
    key: str,
    value: bytes | None,
    audit: AuditEntry,
    *,
    must_exist: bool | None,
) -> int:
    """Put (or delete, `value` None) one record; `must_exist` True/False guards on its presence."""
    compare = []
    if must_exist is not None:
        compare.append(_created(key, rpc_pb2.Compare.GREATER if must_exist else rpc_pb2.Compare.EQUAL))
    op = KVService.txn_op_delete(key) if value is None else KVService.txn_op_put(key, value)
    resp = await etcd.txn(compare, [op, KVService.txn_op_put(audit.key(layout), audit.encode())])
    if not resp.succeeded:
        raise errors.FailedPrecondition(
            f"{key} {'does not exist' if must_exist else 'already exists'}", code="record_conflict"
        )
    audit.committed(resp.header.revision)
    return int(resp.header.revision)


async def store_token(etcd: Etcd, layout: KeyLayout, record: TokenRecord, *, actor: str, reason: str) -> int:
    """Write a new token record (its id must be unused); returns the revision."""
    audit = AuditEntry(actor, reason, f"CreateToken {record.name}: {record.grant.describe()}")
    return await write_record(
        etcd, layout, layout.token_root + record.id, record.encode(), audit, must_exist=False
    )


async def delete_token(etcd: Etcd, layout: KeyLayout, record: TokenRecord, *, actor: str, reason: str) -> int:
    audit = AuditEntry(actor, reason, f"RevokeToken {record.name}")
    return await write_record(etcd, layout, layout.token_root + record.id, None, audit, must_exist=True)
