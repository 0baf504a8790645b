"""Change requests in etcd: reading, guarded transitions, applying, and the scheduler.

Applying is one transaction: the layer writes (or the rollout record), the
audit entry and the change record's `applied` state, conditioned on the
record being as it was decided on and on no touched layer having changed
since the proposal. Whichever replica commits it first wins; any other
attempt fails its guard, so a scheduled change applies exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from confmesh import errors
from confmesh.keys import KeyLayout, Layer
from confmesh.merge import resolve
from confmesh.server.access import Access
from confmesh.server.audit import AuditEntry
from confmesh.server.change_requests import (
    KEEP_FINISHED_SECONDS,
    MAX_KEPT,
    ChangeRequest,
    ChangeState,
)
from confmesh.server.etcd import Etcd
from confmesh.server.limits import Throttled
from confmesh.server.record_kinds import CHANGES, SCHEMAS
from confmesh.server.records import read_rollout, record_guard, rollout_guard, write_guarded
from confmesh.server.rollouts import Rollout
from confmesh.server.store import ConfigStore
from confmesh.server.writer import Writer, check_schemas, validate_changes
from confmesh.tracing import current_traceparent

log = logging.getLogger(__name__)


async def read_change(etcd: Etcd, layout: KeyLayout, change_id: str) -> tuple[ChangeRequest, int]:
    """The change request as etcd holds it now, with its mod revision; NotFound if there is none."""
    kv = await etcd.get(layout.change_key(change_id))
    if kv is None:
        raise errors.NotFound(f"no change request {change_id!r}", field="id")
    return ChangeRequest.decode(kv.value), kv.mod_revision


def change_guard(layout: KeyLayout, change_id: str, revision: int) -> list[Any]:
    return record_guard(layout.change_key(change_id), revision)


def changed_meanwhile(change_id: str, action: str) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"change {change_id} changed while {action} was decided (another review or replica won); "
        "look at it again",
        code="change_conflict",
    )


async def write_change(
    etcd: Etcd, layout: KeyLayout, change: ChangeRequest, *, expect: int, actor: str, reason: str, action: str
) -> int:
    """Put the record if it is still at revision `expect` (0: if there is none), audited."""
    audit = AuditEntry(actor, reason, f"{action} {change.id}: {change.title}", trace=current_traceparent())
    key = layout.change_key(change.id)
    revision = await write_guarded(etcd, layout, key, change.encode(), audit, expect=expect)
    if revision is None:
        raise changed_meanwhile(change.id, action)
    return revision


async def stale_layers(etcd: Etcd, layout: KeyLayout, layers: list[Layer], base: int) -> list[Layer]:
    """The layers written after revision `base` (every write touches its layer's marker)."""
    stale = []
    for layer in layers:
        kv = await etcd.get(layout.marker_key(layer))
        if kv is not None and kv.mod_revision > base:
            stale.append(layer)
    return stale


def approvals_short(access: Access, change: ChangeRequest) -> tuple[int, int]:
    """(approvals needed now, approvals it has): the policy may have tightened since the proposal, and
    only approvers who may still write every layer of the change count."""
    required = max(change.required, access.approvals_needed(change.layers)[0])
    if not access.enforcing:
        return required, len(change.approvers())
    valid = [a for a in change.approvers() if (g := access.grant_of(a)) is not None
             and all(g.can_write(layer) for layer in change.layers)]  # fmt: skip
    return required, len(valid)


def check_applicable(access: Access, change: ChangeRequest) -> None:
    """Whether `change` may take effect now: grants and rules as they are now, not as they were when it
    was proposed, approved or scheduled (a revoked author's scheduled change does not apply, and an
    approval whose approver lost the right to write its layers no longer counts)."""
    if access.enforcing:
        author = access.grant_of(change.author)
        if author is None or not all(author.can_write(layer) for layer in change.layers):
            raise errors.PermissionDenied(
                f"change {change.id}'s author {change.author} may no longer write "
                f"{', '.join(map(str, change.layers))} (revoked, or the grant narrowed)",
                code="author_revoked",
            )
    if change.state is not ChangeState.APPROVED:
        required, have = approvals_short(access, change)
        if change.state is ChangeState.OPEN:
            raise errors.FailedPrecondition(
                f"change {change.id} needs {required} approval(s) from someone other than its author "
                f"and has {have}",
                code="not_approved",
            )
        raise errors.FailedPrecondition(f"change {change.id} is {change.state}", code="change_finished")
    required, have = approvals_short(access, change)
    if have < required:
        raise errors.FailedPrecondition(
            f"change {change.id} needs {required} approval(s) under the current policy and has {have}",
            code="not_approved",
        )


async def apply_change(
    writer: Writer, store: ConfigStore, access: Access, change: ChangeRequest, revision: int, *, by: str
) -> int:
    """Apply `change` (its record at `revision`) as one transaction; returns the etcd revision.

    FailedPrecondition `change_stale` when a touched layer changed since the proposal.
    """
    check_applicable(access, change)
    etcd, layout = writer.etcd, writer.layout
    layers = change.layers
    audit_id = AuditEntry.new_id()
    applied = change.with_(
        state=ChangeState.APPLIED, applied_at=time.time(), applied_by=by,
        applied_audit=audit_id if change.rollout is None else "",
    )  # fmt: skip
    approvers = ", ".join(change.approvers()) or "nobody: none needed"
    note = f"ChangeRequest {change.id}: {change.title} (approved by {approvers})"

    async def still_as_proposed() -> tuple[list[Any], list[Any]]:
        now = await read_change(etcd, layout, change.id)
        if now[1] != revision:
            raise changed_meanwhile(change.id, "ApplyChange")
        stale = await stale_layers(etcd, layout, layers, change.base_revision)
        if stale:
            raise errors.FailedPrecondition(
                f"{', '.join(map(str, stale))} changed since change {change.id} was proposed "
                f"(at revision {change.base_revision}); propose it again",
                code="change_stale",
                field=str(stale[0]),
            )
        guards = [
            Etcd.unchanged_since(layout.marker_key(layer), change.base_revision, exact=True)
            for layer in layers
        ]
        return change_guard(layout, change.id, revision) + guards, [
            Etcd.put_op(layout.change_key(change.id), applied.encode())
        ]

    if change.rollout is None:
        result = await writer.transact(
            layers, lambda _: list(change.changes), actor=change.author, reason=change.reason or change.title,
            source=note, also=still_as_proposed, audit_key=layout.audit_root + audit_id,
        )  # fmt: skip
        return result.revision
    return await _start_rollout(writer, store, change, note, still_as_proposed)


async def _start_rollout(
    writer: Writer,
    store: ConfigStore,
    change: ChangeRequest,
    note: str,
    still_as_proposed: Callable[[], Any],
) -> int:
    start = change.rollout
    assert start is not None
    etcd, layout = writer.etcd, writer.layout
    rollout = Rollout(start.name, start.scope, dict(start.changes), start.percent, start.max_nack_rate,
                      started_by=change.author, reason=change.reason or change.title,
                      change_id=change.id)  # fmt: skip
    validate_changes(rollout.change_specs())
    existing = await read_rollout(etcd, layout, start.scope)
    if existing is not None and existing[0].active:
        raise errors.FailedPrecondition(
            f"rollout {existing[0].name!r} is active for {start.scope}; promote or abort it first",
            code="rollout_active",
        )
    schema = store.records(SCHEMAS).get(start.scope)
    if schema is not None:
        entries = [store.entries(x) for x in start.scope.layers]
        entries[-1] = rollout.apply_to(entries[-1])
        await check_schemas([(schema, resolve(entries), False)], f"rollout {rollout.name!r}")
    compares, ops = await still_as_proposed()
    compares += rollout_guard(layout, start.scope, existing[1] if existing is not None else 0)
    audit = AuditEntry(change.author, change.reason or change.title,
                       f"{note}: StartRollout {start.scope} {start.name} ({start.percent:g}%)",
                       trace=current_traceparent())  # fmt: skip
    ops += [
        Etcd.put_op(layout.rollout_key(start.scope), rollout.encode()),
        Etcd.put_op(audit.key(layout), audit.encode()),
    ]
    resp = await etcd.txn(compares, ops)
    if not resp.succeeded:
        raise changed_meanwhile(change.id, "ApplyChange")
    audit.committed(resp.header.revision)
    return int(resp.header.revision)


async def fail_change(etcd: Etcd, layout: KeyLayout, change_id: str, why: str, *, actor: str) -> None:
    """Mark a change that could not apply as failed (if nothing else decided on it meanwhile)."""
    try:
        change, revision = await read_change(etcd, layout, change_id)
        if change.state.finished:
            return
        failed = change.with_(state=ChangeState.FAILED, error=why[:2000])
        await write_change(
            etcd, layout, failed, expect=revision, actor=actor, reason=why[:2000], action="FailChange"
        )
    except errors.ConfmeshError as exc:
        log.warning("could not mark change %s failed: %s", change_id, exc.message)


PER_AUTHOR_PER_TICK = 10


class ChangeScheduler:
    """Applies approved changes whose time has come; runs on every replica (etcd picks one winner)."""

    def __init__(
        self, writer: Writer, store: ConfigStore, access: Access, *, server_id: str, interval: float = 0.25
    ) -> None:
        self.writer = writer
        self.store = store
        self.access = access
        self.server_id = server_id
        self.interval = interval
        self._last_prune = 0.0
        self._log = Throttled(log)

    def due(self, now: float) -> list[tuple[ChangeRequest, int]]:
        """The changes to apply this tick, fairly: one of each author's in turn (each author's in time
        order), at most PER_AUTHOR_PER_TICK of one author's, so one author's hundreds of due changes
        cannot hold back another team's one (the rest wait for the next tick, which looks again)."""
        by_author: dict[str, list[tuple[ChangeRequest, int]]] = {}
        for c, rev in sorted(self.store.records(CHANGES).values(), key=lambda item: item[0].apply_at):
            if c.state is ChangeState.APPROVED and c.apply_at and c.apply_at <= now:
                by_author.setdefault(c.author, []).append((c, rev))
        queues = sorted(by_author.values(), key=lambda q: q[0][0].apply_at)
        out: list[tuple[ChangeRequest, int]] = []
        for turn in range(min(PER_AUTHOR_PER_TICK, max((len(q) for q in queues), default=0))):
            out.extend(q[turn] for q in queues if turn < len(q))
        return out

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("change scheduler tick failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        if not self.store.synced:
            return
        now = time.time()
        for change, revision in self.due(now):
            await self.apply_due(change, revision)
        if now - self._last_prune > 3600:
            self._last_prune = now
            await self.prune(now)

    async def apply_due(self, change: ChangeRequest, revision: int) -> None:
        by = f"schedule ({self.server_id})"
        try:
            applied_at = await apply_change(self.writer, self.store, self.access, change, revision, by=by)
            log.info("applied scheduled change %s at revision %d", change.id, applied_at)
        except errors.FailedPrecondition as exc:
            if exc.code == "change_conflict":
                return  # another replica (or a review) got there first
            await fail_change(self.writer.etcd, self.writer.layout, change.id, exc.message, actor=by)
        except (errors.InvalidArgument, errors.PermissionDenied) as exc:  # its author was revoked, too
            await fail_change(self.writer.etcd, self.writer.layout, change.id, exc.message, actor=by)
        except errors.ConfmeshError as exc:  # e.g. etcd unreachable: tried again on the next tick
            self._log.log(logging.WARNING, change.id, "scheduled change %s not applied yet: %s", change.id,
                          exc.message)  # fmt: skip

    async def prune(self, now: float) -> None:
        """Delete finished records past their keep time, or the oldest past MAX_KEPT."""
        finished = sorted(
            (c for c, _ in self.store.records(CHANGES).values() if c.state.finished),
            key=lambda c: c.finished_at or c.created_at,
        )
        doomed = [c for c in finished if (c.finished_at or c.created_at) < now - KEEP_FINISHED_SECONDS]
        doomed += finished[len(doomed) : max(len(doomed), len(finished) - MAX_KEPT)]
        for change in doomed:
            try:
                await self.writer.etcd.txn([], [Etcd.delete_op(self.writer.layout.change_key(change.id))])
            except errors.ConfmeshError as exc:
                log.warning("could not prune change %s: %s", change.id, exc.message)
                return
