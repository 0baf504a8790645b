"""Rollback and Revert: undoing changes, exactly or not at all."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import Layer, LayerKind, check_name
from confmesh.server.access import Bypass
from confmesh.server.admin_base import (
    AdminBase,
    write,
)
from confmesh.server.history import (
    Recorded,
    changes_after,
    changes_towards,
    check_accounted,
    check_boundary,
    layer_at,
    pruned_before,
    touched_keys,
    undo,
)
from confmesh.server.writer import (
    Current,
)
from confmesh.v1 import admin_pb2
from confmesh.wire import layer_from_pb


class HistoryRPCs(AdminBase):
    async def _restore(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        layers: list[Layer],
        records: Callable[[int], Awaitable[list[Recorded]]],
        ctx: admin_pb2.ChangeContext,
        source: str,
        *,
        at: int = 0,
        bypass: Bypass,
    ) -> admin_pb2.WriteResponse:
        """Restore `layers`, as one new audited change: to what they held at revision `at`, else by
        undoing the audited changes `records(read revision)` returns.

        What etcd still keeps of revision `at` is read back exactly. Past that,
        the audit log is undone, and only when it accounts for every change
        since: an out-of-band write in between is refused, never guessed over.
        """
        caller = self.access.identify(context)
        self.access.require_writes(caller, layers)
        self.access.require_no_approval(layers, bypass)
        revision, base, revisions = 0, {}, {}
        for layer in layers:
            revision, base[layer], revisions[layer] = await self.writer.read_layer_revisions(layer, revision)
        found = [r for r in await records(revision) if r.revision <= revision]
        etcd, layout = self.writer.etcd, self.writer.layout
        exact = {layer: await layer_at(etcd, layout, layer, at) for layer in layers} if at else {}
        target = {}
        for layer in layers:
            kept = exact.get(layer)
            if kept is None:
                since = at or min((r.revision for r in found), default=revision + 1) - 1
                check_accounted(layer, revisions[layer], since, found, base[layer])
                kept = undo({layer: base[layer]}, found)[layer]
                await check_boundary(etcd, layout, layer, since, kept, touched_keys(layer, found))
            target[layer] = kept
        changes = [c for layer in layers for c in changes_towards(layer, base[layer], target[layer])]
        if not changes:
            raise errors.FailedPrecondition(
                "nothing to undo: the layers already hold that content", code="nothing_to_do"
            )

        def plan(current: Current) -> list[ChangeSpec]:
            if any(current[layer] != base[layer] for layer in layers):
                raise errors.FailedPrecondition(
                    "the layers changed while this was prepared; try again", code="write_conflict"
                )
            return changes

        return await self._transact(context, layers, plan, ctx, source, bypass=bypass)

    @write
    async def Rollback(
        self, request: admin_pb2.RollbackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        layer = layer_from_pb(request.layer)
        if request.to_version <= 0:
            raise errors.InvalidArgument("to_version must be a positive version", field="to_version")
        pruned = await pruned_before(self.writer.etcd, self.writer.layout)
        if request.to_version < pruned:
            raise errors.FailedPrecondition(
                f"version {request.to_version} is older than the kept history (audit records up to "
                f"revision {pruned} were removed by retention)",
                field="to_version",
                code="history_pruned",
            )

        async def records(upto: int) -> list[Recorded]:
            if request.to_version > upto:
                raise errors.InvalidArgument(
                    f"version {request.to_version} is in the future (now {upto})", field="to_version"
                )
            return await changes_after(
                self.writer.etcd, self.writer.layout, [layer], revision=request.to_version
            )

        source = f"Rollback {layer} to {request.to_version}"
        return await self._restore(
            context, [layer], records, request.context, source, at=request.to_version, bypass=Bypass.ROLLBACK
        )

    @write
    async def Revert(
        self, request: admin_pb2.RevertRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        env = check_name(request.environment, "environment")
        if request.since_seconds <= 0:
            raise errors.InvalidArgument("since_seconds must be positive", field="since_seconds")
        store = self.store
        services = {
            layer for layer in store.layers() if layer.kind is LayerKind.SERVICE and layer.environment == env
        }
        layers = sorted({Layer.env(env), Layer.flags(env)} | services)
        since = time.time() - request.since_seconds

        async def records(upto: int) -> list[Recorded]:
            return await changes_after(self.writer.etcd, self.writer.layout, layers, since=since)

        source = f"Revert {env} last {request.since_seconds}s"
        return await self._restore(context, layers, records, request.context, source, bypass=Bypass.REVERT)
