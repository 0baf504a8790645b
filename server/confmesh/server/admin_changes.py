"""Change requests: propose, review, schedule, apply, cancel, read (docs/change-requests.md)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Hashable
from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.flags.model import parse_flag
from confmesh.keys import Layer, LayerKind, Scope, split_key
from confmesh.merge import loads_json, same_value
from confmesh.server.access import Caller, Grant, Role
from confmesh.server.admin_base import AdminBase, read, to_timestamp, write
from confmesh.server.change_flow import apply_change, fail_change, read_change, write_change
from confmesh.server.change_impact import impact, known_scopes
from confmesh.server.change_requests import (
    MAX_OPEN,
    MAX_OPEN_PER_AUTHOR,
    MAX_REVIEWS,
    MAX_TITLE,
    ChangeRequest,
    ChangeState,
    Review,
    RolloutStart,
    after_changes,
    check_id,
    check_text,
    new_id,
)
from confmesh.server.record_kinds import CHANGES, SCHEMAS
from confmesh.server.rollouts import Rollout
from confmesh.server.writer import check_layer, shown_in_audit, validate_changes
from confmesh.v1 import admin_pb2
from confmesh.wire import changes_from_pb, from_struct, layer_to_pb, to_struct, to_value

Context = grpc.aio.ServicerContext[Any, Any]
MAX_SCHEDULE_AHEAD = 366 * 86400
MAX_LIST = 500
STATES = {
    ChangeState.OPEN: admin_pb2.CHANGE_STATE_OPEN,
    ChangeState.APPROVED: admin_pb2.CHANGE_STATE_APPROVED,
    ChangeState.REJECTED: admin_pb2.CHANGE_STATE_REJECTED,
    ChangeState.APPLIED: admin_pb2.CHANGE_STATE_APPLIED,
    ChangeState.CANCELLED: admin_pb2.CHANGE_STATE_CANCELLED,
    ChangeState.FAILED: admin_pb2.CHANGE_STATE_FAILED,
}
FROM_PB = {v: k for k, v in STATES.items()}


def _changes_from_pb(request: admin_pb2.ProposeChangeRequest) -> list[ChangeSpec]:
    changes = changes_from_pb(request.changes)
    for c in changes:
        if c.layer.kind is LayerKind.FLAGS and not c.delete:
            split_key(c.key)
            parse_flag(c.value, key=c.key)
    # As they will be written: normalized, bounded, each value encodable.
    return [c if c.delete else ChangeSpec(c.layer, c.key, json.loads(encoded))
            for c, encoded in validate_changes(changes)]  # fmt: skip


def _rollout_from_pb(msg: admin_pb2.StartRolloutRequest) -> RolloutStart:
    scope = Scope.checked(msg.environment, msg.service)
    changes: dict[str, Any] = dict(from_struct(msg.set))
    changes.update({key: None for key in msg.delete})
    rate = msg.max_nack_rate if msg.HasField("max_nack_rate") else 0.2
    rollout = Rollout(msg.name, scope, changes, msg.percent, rate)  # validates name, percent, rate
    validate_changes(rollout.change_specs())
    return RolloutStart(rollout.name, scope, rollout.changes, rollout.percent, rollout.max_nack_rate)


IMPACT_TTL = 2.0  # seconds a computed impact (diff and blast radius) is reused for the same reader


def _check_apply_at(seconds: float) -> float:
    if seconds and not time.time() - 60 <= seconds <= time.time() + MAX_SCHEDULE_AHEAD:
        raise errors.InvalidArgument("apply_at must be from now to a year ahead", field="apply_at")
    return seconds


def _same_entries(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


def _seconds(ts: Any) -> float:
    return float(ts.ToNanoseconds()) / 1e9 if ts.seconds or ts.nanos else 0.0


class ChangeRPCs(AdminBase):
    # -- who may -------------------------------------------------------------------------------

    def _may_read(self, caller: Caller, change: ChangeRequest) -> bool:
        grant = caller.grant
        if not self.access.enforcing or grant is None:
            return not self.access.enforcing
        return all(grant.can_read_layer(layer) for layer in change.layers)

    def _readable(self, context: Context, change: ChangeRequest) -> Caller:
        caller = self.access.identify(context)
        self.access.require(
            caller,
            lambda g: all(g.can_read_layer(layer) for layer in change.layers),
            f"read change {change.id}",
        )
        return caller

    async def _load(self, change_id: str, context: Context | None = None) -> tuple[ChangeRequest, int]:
        """The record as etcd holds it; with `context`, only for a caller with some grant (so an
        unknown caller learns nothing, not even whether the id exists)."""
        if context is not None:
            self.access.require(
                self.access.identify(context), lambda g: g.can_operate(), "read change requests"
            )
        return await read_change(self.writer.etcd, self.writer.layout, check_id(change_id))

    # -- the answer ----------------------------------------------------------------------------

    async def _to_pb(
        self, caller: Caller, change: ChangeRequest, revision: int = 0, *, with_impact: bool = True
    ) -> admin_pb2.ChangeRequest:
        """The change as the API shows it; `with_impact`: with its diff and blast radius (GetChange)."""
        store = self.store
        required = max(change.required, self.access.approvals_needed(change.layers)[0])
        stale = (
            []
            if change.state.finished
            else [layer for layer in change.layers if store.layer_revision(layer) > change.base_revision]
        )
        msg = admin_pb2.ChangeRequest(
            id=change.id, title=change.title, author=change.author, reason=change.reason,
            state=STATES[change.state], created_at=to_timestamp(change.created_at),
            layers=[str(layer) for layer in change.layers], base_revision=change.base_revision,
            stale=bool(stale) and not change.state.finished, stale_layers=[str(x) for x in stale],
            approvals_required=required, approvals=len(change.approvers()),
            applied_revision=change.applied_revision or (revision if change.state == "applied" else 0),
            applied_by=change.applied_by, error=change.error,
        )  # fmt: skip
        for c in change.changes:
            shown = self._shown(c.layer, c.key, c.value)
            msg.changes.add(
                layer=layer_to_pb(c.layer),
                key=c.key,
                **({"delete": True} if c.delete else {"value": to_value(shown)}),
            )
        if change.rollout is not None:
            start = change.rollout
            schema = store.records(SCHEMAS).get(start.scope)
            shown_set = {k: schema.redact_value(k, v) if schema is not None else v
                         for k, v in start.changes.items() if v is not None}  # fmt: skip
            msg.rollout.CopyFrom(admin_pb2.StartRolloutRequest(
                name=start.name, environment=start.scope.environment, service=start.scope.service,
                set=to_struct(shown_set), delete=[k for k, v in start.changes.items() if v is None],
                percent=start.percent, max_nack_rate=start.max_nack_rate,
            ))  # fmt: skip
        for r in change.reviews:
            msg.reviews.add(identity=r.identity, approve=r.approve, comment=r.comment, at=to_timestamp(r.at))
        if change.apply_at:
            msg.apply_at.CopyFrom(to_timestamp(change.apply_at))
        if change.applied_at:
            msg.applied_at.CopyFrom(to_timestamp(change.applied_at))
        if with_impact and not change.state.finished:
            await self._fill_impact(msg, caller, change)
        elif with_impact and change.applied_audit:
            await self._fill_applied_diff(msg, change)
        return msg

    async def _fill_applied_diff(self, msg: admin_pb2.ChangeRequest, change: ChangeRequest) -> None:
        """What an applied change did, old and new, from the audit record its apply wrote (values
        redacted there as every audit record is)."""
        layout = self.writer.layout
        kv = await self.writer.etcd.get(layout.audit_root + change.applied_audit)
        try:
            record = loads_json(kv.value) if kv is not None else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            msg.error = msg.error or "its audit record is gone (pruned after the audit retention)"
            return
        for row in record.get("changes", []):
            d = msg.diff.add(layer=layer_to_pb(Layer.from_path(row["layer"])), key=row["key"], op=row["op"],
                             existed="old" in row)  # fmt: skip
            if "old" in row:
                d.old.CopyFrom(to_value(row["old"]))
            if row["op"] == "put":
                d.new.CopyFrom(to_value(row["new"]))

    def _shown(self, layer: Layer, key: str, value: Any) -> Any:
        return shown_in_audit(self.store.records(SCHEMAS), layer, key, value)

    def _impact_key(self, change: ChangeRequest) -> Hashable:
        """What a change's impact depends on besides the change: its layers (a rollout: everything)
        and the schemas."""
        store = self.store
        layers = store.revision if change.rollout else tuple(store.layer_revision(x) for x in change.layers)
        return layers, len(store.records(SCHEMAS)), max(store.revisions(SCHEMAS).values(), default=0)

    async def _fill_impact(self, msg: admin_pb2.ChangeRequest, caller: Caller, change: ChangeRequest) -> None:
        store = self.store
        # A large change's impact costs a worker thread a good part of a second: reads of the same change,
        # by the same caller, with its layers and the schemas unmoved, share one for IMPACT_TTL seconds
        # (a console page re-reads it on every live update).
        key = (change.id, caller.identity, self._impact_key(change))
        cached = self._impacts.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            start = change.rollout
            specs = list(change.changes) if start is None else start.specs(store.entries(start.layer))
            instances = Counter(r.scope for r in self.fleet.records() if r.connected)
            scopes = known_scopes([*store.layers(), *change.layers], store.records(SCHEMAS), instances)
            try:
                found = await impact(
                    store.entries, specs, scopes=scopes, schemas=store.records(SCHEMAS), instances=instances,
                    visible=self._reads(caller),
                )  # fmt: skip
            except errors.NotFound as exc:
                msg.stale = True
                msg.error = msg.error or exc.message
                return
            if len(self._impacts) >= 256:
                self._impacts.clear()
            self._impacts[key] = (now + IMPACT_TTL, found)
        for row in found.diff:
            d = msg.diff.add(layer=layer_to_pb(row.layer), key=row.key, op=row.op, existed=row.existed)
            if row.old is not None or row.existed:
                d.old.CopyFrom(to_value(row.old))
            if row.op == "put":
                d.new.CopyFrom(to_value(row.new))
        for s in found.scopes:
            msg.scopes.add(
                environment=s.scope.environment, service=s.scope.service, changed_keys=s.changed_keys,
                has_schema=s.has_schema, schema_accepts=s.schema_accepts, schema_error=s.schema_error,
                schema_field=s.schema_field, instances=s.instances,
            )  # fmt: skip
        for f in found.flags:
            msg.flags.add(environment=f.environment, changed_flags=f.changed_flags, valid=f.valid,
                          error=f.error, instances=f.instances)  # fmt: skip
        msg.scopes_not_shown = found.not_shown

    # -- RPCs ----------------------------------------------------------------------------------

    @write
    async def ProposeChange(
        self, request: admin_pb2.ProposeChangeRequest, context: Context
    ) -> admin_pb2.ChangeRequest:
        has_rollout = request.HasField("rollout")
        if has_rollout == bool(request.changes):
            raise errors.InvalidArgument("propose either changes or a rollout start", field="changes")
        title = check_text(request.title.strip(), "title", MAX_TITLE)
        reason = check_text(request.context.reason, "reason")
        changes = [] if has_rollout else _changes_from_pb(request)
        rollout = _rollout_from_pb(request.rollout) if has_rollout else None
        layers = [rollout.layer] if rollout is not None else sorted({c.layer for c in changes})
        caller = self.access.identify(context)
        self.access.require_writes(caller, layers)
        apply_at = _check_apply_at(_seconds(request.apply_at))
        # Checked against the layers as etcd holds them, at one revision: the proposal's base.
        revision, current = 0, {}
        for layer in layers:
            revision, current[layer] = await self.writer.read_layer(layer, revision)
        if rollout is None:
            after = after_changes(current, changes)
            for layer in layers:
                check_layer(layer, after[layer])
            if all(_same_entries(after[layer], current[layer]) for layer in layers):
                raise errors.InvalidArgument(
                    "nothing to change: the layers already hold this", code="nothing_to_do"
                )
        if not title:
            title = (
                reason.splitlines()[0][:MAX_TITLE]
                if reason
                else f"{len(changes) or 1} change(s) to {', '.join(map(str, layers))}"[:MAX_TITLE]
            )
        required, _ = self.access.approvals_needed(layers)
        author = self._actor(caller, request.context)
        change = ChangeRequest(
            id=new_id(), title=title, author=author, reason=reason, base_revision=revision, required=required,
            changes=tuple(changes), rollout=rollout,
            state=ChangeState.OPEN if required else ChangeState.APPROVED, apply_at=apply_at,
        )  # fmt: skip
        record = change.encode()  # size-checked before anything is stored
        if rollout is None:
            self._check_fits_one_transaction(len(record), changes, current)
        if request.dry_run:
            return await self._to_pb(caller, change)
        async with self._proposing:  # the count and the write together (on this replica)
            self._check_open_limits(author)
            at = await write_change(self.writer.etcd, self.writer.layout, change, expect=0, actor=author,
                                    reason=reason, action="ProposeChange")  # fmt: skip
            await self.source.wait_for_revision(at, 5.0)
        return await self._to_pb(caller, change, at)

    def _check_open_limits(self, author: str) -> None:
        """MAX_OPEN open requests in all, and MAX_OPEN_PER_AUTHOR of one author's: a writer who floods
        proposals fills only their own share, and other teams can still propose."""
        open_ = [c for c, _ in self.store.records(CHANGES).values() if not c.state.finished]
        mine = sum(c.author == author for c in open_)
        if mine >= MAX_OPEN_PER_AUTHOR:
            raise errors.ResourceExhausted(
                f"{author} has {mine} change requests open; the limit is {MAX_OPEN_PER_AUTHOR} per author: "
                "apply, cancel or withdraw some first",
                code="too_many_open",
            )
        if len(open_) >= MAX_OPEN:
            raise errors.ResourceExhausted(
                f"{MAX_OPEN} change requests are open; apply, reject or cancel some first",
                code="too_many_open",
            )

    def _check_fits_one_transaction(
        self, record: int, changes: list[ChangeSpec], current: dict[Layer, dict[str, Any]]
    ) -> None:
        """A change is applied as one etcd transaction: its values, its audit record (old and new values)
        and its record. One that can never fit is refused when proposed, not failed forever later."""
        size = 2 * record  # the record written back as applied, and room for the ops' own framing
        for change in changes:
            old = current.get(change.layer, {}).get(change.key)
            size += 256 + (len(json.dumps(old)) if old is not None else 0)
            if not change.delete:
                size += 2 * len(json.dumps(change.value))  # the value, and the audit record's copy
        limit = self.writer.etcd.max_request_bytes
        if size > limit:
            raise errors.InvalidArgument(
                f"applied, this change is about {size} bytes in one etcd transaction (its values, the audit "
                f"record and the change record); the limit is {limit} bytes (--etcd-max-request-bytes): "
                "split it into smaller changes",
                code="request_too_large",
                field="changes",
            )

    @read
    async def GetChange(self, request: admin_pb2.ChangeRef, context: Context) -> admin_pb2.ChangeRequest:
        """From this replica's copy of the record (etcd when it has none yet); the whole answer is
        reused for IMPACT_TTL seconds by the same reader while the record, its layers and the schemas
        stay put, so a console page that re-reads a 1,000-change request on every live update costs a
        copy, not a rebuild on the event loop."""
        self.access.require(self.access.identify(context), lambda g: g.can_operate(), "read change requests")
        known = self.store.records(CHANGES).get(check_id(request.id))
        change, revision = known if known is not None else await self._load(request.id)
        caller = self._readable(context, change)
        key = (change.id, revision, caller.identity, self._impact_key(change))
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]  # type: ignore[no-any-return]
        answer = await self._to_pb(caller, change, revision)
        if len(self._answers) >= 64:
            self._answers.clear()
        self._answers[key] = (now + IMPACT_TTL, answer)
        return answer

    @read
    async def ListChanges(
        self, request: admin_pb2.ListChangesRequest, context: Context
    ) -> admin_pb2.ListChangesResponse:
        caller = self._allow(context, Grant.can_operate, "list change requests")
        if not 0 <= request.limit <= MAX_LIST:
            raise errors.InvalidArgument(f"limit must be in [0, {MAX_LIST}]", field="limit")
        if len(request.states) > len(STATES):
            raise errors.InvalidArgument(f"name at most {len(STATES)} states", field="states")
        states = {FROM_PB[s] for s in request.states if s in FROM_PB}
        found = sorted(self.store.records(CHANGES).values(), key=lambda item: -item[0].created_at)
        resp = admin_pb2.ListChangesResponse()
        for change, revision in found:
            if states and change.state not in states:
                continue
            if not self._may_read(caller, change):
                continue
            resp.changes.append(await self._to_pb(caller, change, revision, with_impact=False))
            if len(resp.changes) >= (request.limit or 100):
                break
        return resp

    async def _writable(
        self, context: Context, request_id: str, ctx: admin_pb2.ChangeContext
    ) -> tuple[ChangeRequest, int, Caller, str]:
        change, revision = await self._load(request_id, context)
        caller = self.access.identify(context)
        self.access.require_writes(caller, change.layers)
        return change, revision, caller, self._actor(caller, ctx)

    @write
    async def ReviewChange(
        self, request: admin_pb2.ReviewChangeRequest, context: Context
    ) -> admin_pb2.ChangeRequest:
        change, revision, caller, who = await self._writable(context, request.id, request.context)
        comment = check_text(request.context.reason, "reason")
        if who == change.author:
            raise errors.PermissionDenied(
                f"{who} proposed change {change.id} and may not review it", code="own_change"
            )
        if change.state.finished:
            raise errors.FailedPrecondition(f"change {change.id} is {change.state}", code="change_finished")
        if len(change.reviews) >= MAX_REVIEWS:
            raise errors.FailedPrecondition(
                f"change {change.id} has {MAX_REVIEWS} reviews; no more", code="too_many_reviews"
            )
        reviewed = change.with_(reviews=(*change.reviews, Review(who, request.approve, comment)))
        if not request.approve:
            reviewed = reviewed.with_(
                state=ChangeState.REJECTED, error=f"rejected by {who}: {comment}".rstrip(": ")
            )
        else:
            required = max(change.required, self.access.approvals_needed(change.layers)[0])
            if len(reviewed.approvers()) >= required:
                reviewed = reviewed.with_(state=ChangeState.APPROVED)
        action = "ApproveChange" if request.approve else "RejectChange"
        at = await write_change(self.writer.etcd, self.writer.layout, reviewed, expect=revision, actor=who,
                                reason=comment, action=action)  # fmt: skip
        await self.source.wait_for_revision(at, 5.0)
        return await self._to_pb(caller, reviewed, at)

    @write
    async def ScheduleChange(
        self, request: admin_pb2.ScheduleChangeRequest, context: Context
    ) -> admin_pb2.ChangeRequest:
        change, revision, caller, who = await self._writable(context, request.id, request.context)
        if change.state.finished:
            raise errors.FailedPrecondition(f"change {change.id} is {change.state}", code="change_finished")
        scheduled = change.with_(apply_at=_check_apply_at(_seconds(request.apply_at)))
        at = await write_change(self.writer.etcd, self.writer.layout, scheduled, expect=revision, actor=who,
                                reason=request.context.reason, action="ScheduleChange")  # fmt: skip
        await self.source.wait_for_revision(at, 5.0)
        return await self._to_pb(caller, scheduled, at)

    @write
    async def ApplyChange(self, request: admin_pb2.ChangeRef, context: Context) -> admin_pb2.ChangeRequest:
        change, revision, caller, who = await self._writable(context, request.id, request.context)
        try:
            at = await apply_change(self.writer, self.store, self.access, change, revision, by=who)
        except errors.FailedPrecondition as exc:
            if exc.code == "change_stale":
                await fail_change(self.writer.etcd, self.writer.layout, change.id, exc.message, actor=who)
            raise
        await self.source.wait_for_revision(at, 5.0)
        change, revision = await self._load(change.id)
        return await self._to_pb(caller, change, revision)

    @write
    async def CancelChange(self, request: admin_pb2.ChangeRef, context: Context) -> admin_pb2.ChangeRequest:
        change, revision = await self._load(request.id, context)
        caller = self.access.identify(context)
        who = self._actor(caller, request.context)
        self.access.require(
            caller,
            lambda g: g.role is Role.ADMIN or (who == change.author and g.role is Role.WRITER),
            f"cancel change {change.id} (only its author or an admin)",
        )
        if change.state.finished:
            raise errors.FailedPrecondition(f"change {change.id} is {change.state}", code="change_finished")
        why = check_text(request.context.reason, "reason")
        cancelled = change.with_(state=ChangeState.CANCELLED, error=f"cancelled by {who}: {why}".rstrip(": "))
        at = await write_change(self.writer.etcd, self.writer.layout, cancelled, expect=revision, actor=who,
                                reason=why, action="CancelChange")  # fmt: skip
        await self.source.wait_for_revision(at, 5.0)
        return await self._to_pb(caller, cancelled, at)
