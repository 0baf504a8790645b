"""Writes of non-config records (bearer tokens, service schemas, rollouts): one etcd transaction
each, with the record's audit entry in the same transaction."""

from __future__ import annotations

from typing import Any

from confmesh import errors
from confmesh.keys import KeyLayout, Scope
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


async def read_rollout(etcd: Etcd, layout: KeyLayout, scope: Scope) -> tuple[Rollout, int] | None:
    """The scope's rollout record as etcd holds it now, with its mod revision.

    Transitions are decided on this, not on a replica's cache, and committed conditioned on
    that revision (`rollout_guard`), so two transitions decided at once end with one winner.
    """
    kv = await etcd.get(layout.rollout_key(scope))
    return None if kv is None else (Rollout.decode(kv.value), kv.mod_revision)


def record_guard(key: str, revision: int) -> list[Any]:
    """Txn compares: the record at `key` exists and is unchanged since `revision`; none exists (0)."""
    if revision == 0:
        return [Etcd.created(key, exists=False)]
    return [Etcd.created(key, exists=True), Etcd.unchanged_since(key, revision, exact=True)]


async def write_guarded(
    etcd: Etcd, layout: KeyLayout, key: str, value: bytes, audit: AuditEntry, *, expect: int
) -> int | None:
    """Put one record, with its audit entry, if it is still at revision `expect` (0: if there is
    none); the revision, or None when another transition got there first."""
    put = Etcd.put_op(key, value)
    resp = await etcd.txn(record_guard(key, expect), [put, Etcd.put_op(audit.key(layout), audit.encode())])
    if not resp.succeeded:
        return None
    audit.committed(resp.header.revision)
    return int(resp.header.revision)


def rollout_guard(layout: KeyLayout, scope: Scope, revision: int) -> list[Any]:
    return record_guard(layout.rollout_key(scope), revision)


def rollout_conflict(scope: Scope, action: str) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"the rollout of {scope} changed while {action} was decided (another transition won); "
        "look at it again (confmesh rollout status)",
        code="rollout_conflict",
    )


async def write_rollout(
    etcd: Etcd, layout: KeyLayout, rollout: Rollout, *, actor: str, reason: str, action: str, expect: int
) -> int:
    """Put the rollout record if it is still at revision `expect` (0: if there is none)."""
    audit = AuditEntry(actor, reason, f"{action} {rollout.scope} {rollout.name} ({rollout.percent:g}%)")
    key = layout.rollout_key(rollout.scope)
    revision = await write_guarded(etcd, layout, key, rollout.encode(), audit, expect=expect)
    if revision is None:
        raise rollout_conflict(rollout.scope, action)
    return revision


def canary_counts(rollout: Rollout, version: int, records: list[InstanceRecord]) -> tuple[int, int, int]:
    """(connected canary instances, those that ACKed `version`, those that NACKed it)."""
    canaries = [
        r for r in records if r.connected and r.scope == rollout.scope and rollout.includes(r.instance_id)
    ]
    acked = sum(r.acked_version == version for r in canaries)
    nacked = sum(r.last_nack is not None and r.last_nack.version == version for r in canaries)
    return len(canaries), acked, nacked


async def abort_rollout(
    etcd: Etcd, layout: KeyLayout, rollout: Rollout, revision: int, *, actor: str, why: str
) -> int:
    """Mark `rollout` (its record at `revision`) aborted: its canary instances go forward to the
    base config."""
    aborted = rollout.with_(state=RolloutState.ABORTED, abort_reason=why)
    return await write_rollout(
        etcd, layout, aborted, actor=actor, reason=why, action="AbortRollout", expect=revision
    )
