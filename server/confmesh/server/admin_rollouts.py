"""Staged rollouts: start, widen, promote, abort, list."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import Layer, Scope
from confmesh.merge import resolve
from confmesh.server.access import Grant
from confmesh.server.admin_base import (
    AdminBase,
    read,
    write,
)
from confmesh.server.etcd import Etcd
from confmesh.server.record_kinds import ROLLOUTS, SCHEMAS
from confmesh.server.records import (
    abort_rollout,
    canary_counts,
    read_rollout,
    rollout_conflict,
    rollout_guard,
    write_rollout,
)
from confmesh.server.rollouts import Rollout
from confmesh.server.writer import (
    Current,
    check_schemas,
    validate_changes,
)
from confmesh.v1 import admin_pb2
from confmesh.wire import from_struct, to_struct


class RolloutRPCs(AdminBase):
    async def _rollout(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        environment: str,
        service: str,
    ) -> tuple[Rollout, int]:
        """The scope's active rollout and its record's revision, as etcd holds it now, for a
        caller who may write the scope's layer (checked first, so the answer says nothing of
        other scopes' rollouts)."""
        scope = Scope.checked(environment, service)
        self.access.require_writes(
            self.access.identify(context), [Layer.svc(scope.environment, scope.service)]
        )
        found = await read_rollout(self.writer.etcd, self.writer.layout, scope)
        if found is None or not found[0].active:
            raise errors.NotFound(f"no active rollout for {scope}")
        return found

    def _require_reviewed(self, rollout: Rollout) -> None:
        """Widening or promoting changes what a scope resolves to: under an approval rule it needs a
        rollout that a change request started. One started directly before the rule covered its layer
        is refused (abort it, and propose the rollout)."""
        if not rollout.change_id:
            self.access.require_no_approval([rollout.layer])

    @write
    async def StartRollout(
        self, request: admin_pb2.StartRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        scope = Scope.checked(request.environment, request.service)
        layer = Layer.svc(scope.environment, scope.service)
        caller = self.access.identify(context)
        self.access.require_writes(caller, [layer])
        self.access.require_no_approval([layer])
        changes: dict[str, Any] = dict(from_struct(request.set))
        changes.update({key: None for key in request.delete})
        rollout = Rollout(
            request.name,
            scope,
            changes,
            request.percent,
            request.max_nack_rate if request.HasField("max_nack_rate") else 0.2,
            started_by=self._actor(caller, request.context),
            reason=request.context.reason,
        )
        validate_changes(rollout.change_specs())
        existing = await read_rollout(self.writer.etcd, self.writer.layout, scope)
        if existing is not None and existing[0].active:
            raise errors.FailedPrecondition(
                f"rollout {existing[0].name!r} is active for {scope}; promote or abort it first",
                code="rollout_active",
            )
        schema = self.store.records(SCHEMAS).get(scope)
        if schema is not None:
            entries = [self.store.entries(x) for x in scope.layers]
            entries[-1] = rollout.apply_to(entries[-1])
            await check_schemas([(schema, resolve(entries), False)], f"rollout {rollout.name!r}")
        revision = await write_rollout(
            self.writer.etcd,
            self.writer.layout,
            rollout,
            actor=rollout.started_by,
            reason=request.context.reason,
            action="StartRollout",
            expect=existing[1] if existing is not None else 0,
        )
        return await self._settled(revision, f"rollout/{scope}")

    @write
    async def UpdateRollout(
        self, request: admin_pb2.UpdateRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        rollout, at = await self._rollout(context, request.environment, request.service)
        caller = self.access.identify(context)
        self._require_reviewed(rollout)
        revision = await write_rollout(
            self.writer.etcd,
            self.writer.layout,
            rollout.with_(percent=request.percent),
            actor=self._actor(caller, request.context),
            reason=request.context.reason,
            action="UpdateRollout",
            expect=at,
        )
        return await self._settled(revision, f"rollout/{rollout.scope}")

    @write
    async def PromoteRollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        """The rollout's changes written for real and its record deleted, in one transaction
        conditioned on the record being as it was decided on: a crash leaves all or nothing,
        and an abort that wins the race leaves the value as it was."""
        rollout, at = await self._rollout(context, request.environment, request.service)
        self._require_reviewed(rollout)
        layer, etcd, layout = rollout.layer, self.writer.etcd, self.writer.layout

        def plan(current: Current) -> list[ChangeSpec]:
            return [c for c in rollout.change_specs() if not c.delete or c.key in current[layer]]

        async def still_as_decided() -> tuple[list[Any], list[Any]]:
            now = await read_rollout(etcd, layout, rollout.scope)
            if now is None or now[1] != at:
                raise rollout_conflict(rollout.scope, "PromoteRollout")
            return rollout_guard(layout, rollout.scope, at), [
                Etcd.delete_op(layout.rollout_key(rollout.scope))
            ]

        ctx = admin_pb2.ChangeContext(
            actor=request.context.actor,
            reason=request.context.reason or f"promote rollout {rollout.name}",
        )
        return await self._transact(
            context,
            [layer],
            plan,
            ctx,
            f"PromoteRollout {rollout.scope} {rollout.name}",
            also=still_as_decided,
            approved=True,  # a rollout under an approval rule was started by a change request
        )

    @write
    async def AbortRollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        rollout, at = await self._rollout(context, request.environment, request.service)
        caller = self.access.identify(context)
        actor = self._actor(caller, request.context)
        why = request.context.reason or f"aborted by {actor}"
        revision = await abort_rollout(
            self.writer.etcd, self.writer.layout, rollout, at, actor=actor, why=why
        )
        return await self._settled(revision, f"rollout/{rollout.scope}")

    @read
    async def ListRollouts(
        self, request: admin_pb2.ListRolloutsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListRolloutsResponse:
        visible = self._reads(self._allow(context, Grant.can_operate, "list rollouts"))
        resp = admin_pb2.ListRolloutsResponse()
        records = self.fleet.records()
        for scope, (rollout, _) in sorted(self.store.records(ROLLOUTS).items()):
            if not visible(scope):
                continue
            schema = self.store.records(SCHEMAS).get(scope)
            shown = {
                k: schema.redact_value(k, v) if schema is not None else v
                for k, v in rollout.changes.items()
                if v is not None
            }
            version = self.plane.current(scope).version
            if rollout.active:
                version = self.plane.canary(scope).version
            n, acked, nacked = canary_counts(rollout, version, records)
            info = resp.rollouts.add(
                name=rollout.name,
                environment=scope.environment,
                service=scope.service,
                percent=rollout.percent,
                state=rollout.state.value,
                max_nack_rate=rollout.max_nack_rate,
                version=version,
                canary_instances=n,
                canary_acked=acked,
                canary_nacked=nacked,
                abort_reason=rollout.abort_reason,
                set=to_struct(shown),
            )
            info.delete.extend(k for k, v in rollout.changes.items() if v is None)
        return resp
