"""Writes of non-config records (bearer tokens, service schemas, rollouts): one etcd transaction
each, with the record's audit entry in the same transaction."""

from __future__ import annotations

from confmesh import errors
from confmesh.keys import KeyLayout
from confmesh.server.access import TokenRecord
from confmesh.server.audit import AuditEntry
from confmesh.server.etcd import Etcd
from confmesh.server.ledger import InstanceRecord
from confmesh.server.rollouts import Rollout, RolloutState


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
        compare.append(Etcd.created(key, exists=must_exist))
    op = Etcd.delete_op(key) if value is None else Etcd.put_op(key, value)
    resp = await etcd.txn(compare, [op, Etcd.put_op(audit.key(layout), audit.encode())])
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


async def write_rollout(
    etcd: Etcd,
    layout: KeyLayout,
    rollout: Rollout,
    *,
    actor: str,
    reason: str,
    action: str,
    must_exist: bool | None = None,
) -> int:
    audit = AuditEntry(actor, reason, f"{action} {rollout.scope} {rollout.name} ({rollout.percent:g}%)")
    return await write_record(
        etcd, layout, layout.rollout_key(rollout.scope), rollout.encode(), audit, must_exist=must_exist
    )


async def delete_rollout(etcd: Etcd, layout: KeyLayout, rollout: Rollout, *, actor: str, reason: str) -> int:
    audit = AuditEntry(actor, reason, f"EndRollout {rollout.scope} {rollout.name}")
    return await write_record(etcd, layout, layout.rollout_key(rollout.scope), None, audit, must_exist=True)


def canary_counts(rollout: Rollout, version: int, records: list[InstanceRecord]) -> tuple[int, int, int]:
    """(connected canary instances, those that ACKed `version`, those that NACKed it)."""
    canaries = [
        r for r in records if r.connected and r.scope == rollout.scope and rollout.includes(r.instance_id)
    ]
    acked = sum(r.acked_version == version for r in canaries)
    nacked = sum(r.last_nack is not None and r.last_nack.version == version for r in canaries)
    return len(canaries), acked, nacked


async def abort_rollout(etcd: Etcd, layout: KeyLayout, rollout: Rollout, *, actor: str, why: str) -> int:
    """Mark `rollout` aborted: its canary instances go forward to the base config."""
    aborted = rollout.with_(state=RolloutState.ABORTED, abort_reason=why)
    return await write_rollout(
        etcd, layout, aborted, actor=actor, reason=why, action="AbortRollout", must_exist=True
    )
