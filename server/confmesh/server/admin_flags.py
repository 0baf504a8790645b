"""Flag definitions, the kill switch, and flag usage."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.flags.lifecycle import percentile
from confmesh.flags.model import keyed, parse_flag, parse_flag_set
from confmesh.keys import Layer, LayerKind, check_name, split_key
from confmesh.server.access import Bypass, Grant
from confmesh.server.admin_base import (
    AdminBase,
    EncodedLayers,
    read,
    to_timestamp,
    write,
)
from confmesh.server.fleet import fleet_usage_docs
from confmesh.server.limits import Pager
from confmesh.server.usage import MAX_SERIES_SECONDS, merge_hour_docs, merge_series
from confmesh.server.writer import (
    Current,
    off_loop,
)
from confmesh.v1 import admin_pb2
from confmesh.wire import from_struct, to_struct


class FlagRPCs(AdminBase):
    @write
    async def PutFlags(
        self, request: admin_pb2.PutFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        layer = Layer.flags(request.environment)
        incoming = from_struct(request.flags)
        if not incoming and not request.replace_all:
            raise errors.InvalidArgument("no flags given", field="flags")
        flags = {k: keyed(k, v) for k, v in incoming.items()}
        for key, definition in flags.items():  # each on its own; the set is checked in the txn
            split_key(key)
            parse_flag(definition, key=key)

        def plan(current: Current) -> list[ChangeSpec]:
            changes = [ChangeSpec(layer, k, v) for k, v in flags.items()]
            if request.replace_all:
                changes += [ChangeSpec(layer, k, delete=True) for k in current[layer] if k not in flags]
            return changes

        # A flag already so is not rewritten (nor audited): with replace_all the whole set is sent.
        return await self._transact(context, [layer], plan, request.context, "PutFlags", skip_unchanged=True)

    @write
    async def DeleteFlag(
        self, request: admin_pb2.DeleteFlagRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        change = ChangeSpec(Layer.flags(request.environment), request.key, delete=True)
        return await self._write(context, [change], request.context, "DeleteFlag")

    @write
    async def SetFlagEnabled(
        self, request: admin_pb2.SetFlagEnabledRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        split_key(request.key)
        if request.environments:
            layers = [Layer.flags(env) for env in request.environments]
        else:
            layers = [
                layer
                for layer in self.store.layers()
                if layer.kind is LayerKind.FLAGS and request.key in self.store.raw_entries(layer)
            ]
            if not layers:
                raise errors.NotFound(f"flag {request.key!r} exists in no environment", field="key")

        def plan(current: Current) -> list[ChangeSpec]:
            changes = []
            for layer in layers:
                definition = current[layer].get(request.key)
                if not isinstance(definition, dict):
                    raise errors.NotFound(
                        f"flag {request.key!r} does not exist in environment {layer.environment!r}",
                        field="key",
                    )
                if not request.enabled and self.access.approvals_needed([layer])[0]:
                    check_kill_turns_off(layer, request.key, definition)
                changes.append(ChangeSpec(layer, request.key, {**definition, "enabled": request.enabled}))
            return changes

        source = "SetFlagEnabled" if request.enabled else "SetFlagEnabled(kill)"
        bypass = None if request.enabled else Bypass.KILL
        # Switching a flag to the state it has writes nothing (a kill of a killed flag moves no version
        # and leaves pending approved changes valid).
        return await self._transact(
            context, layers, plan, request.context, source, bypass=bypass, skip_unchanged=True
        )

    @read
    async def GetFlags(
        self, request: admin_pb2.GetFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetFlagsResponse:
        layer = Layer.flags(request.environment)
        self._allow(context, lambda g: g.can_read_flags(layer.environment), f"read {layer}")
        store = self.store
        version = store.layer_revision(layer)
        return admin_pb2.GetFlagsResponse(
            environment=layer.environment,
            version=version,
            flags=await self.encoded.get((layer, version), store.entries(layer), to_struct),
        )

    @read
    async def GetFlagUsage(
        self, request: admin_pb2.GetFlagUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetFlagUsageResponse:
        caller = self._allow(context, Grant.can_operate, "read flag usage")
        reads = self._reads_layer(caller)
        env = check_name(request.environment, "environment") if request.environment else ""
        if request.window_seconds < 0:
            raise errors.InvalidArgument("window_seconds must be >= 0", field="window_seconds")
        now = time.time()
        resp = admin_pb2.GetFlagUsageResponse(
            window_seconds=request.window_seconds or int(self.usage.retention)
        )
        pager = Pager(request.page_token)
        summary = self.usage.summary(env, request.window_seconds, now)
        # Other replicas' counts, published per hour (also those of replicas gone since).
        since = now - (request.window_seconds or self.usage.retention)
        others = await fleet_usage_docs(self.writer.etcd, self.writer.layout, self.server_id, since)
        summary = merge_hour_docs(summary, others, env)
        for s in summary:
            key = (s.environment, s.flag)
            if not reads(Layer.flags(s.environment)) or not pager.wants(key):
                continue
            added = resp.flags.add(
                environment=s.environment,
                flag=s.flag,
                variants=s.variants,
                first_seen=to_timestamp(s.first_seen),
                last_seen=to_timestamp(s.last_seen),
            )
            pager.added(key, added.ByteSize())
        resp.next_page_token = pager.next_token
        if request.flag:
            if not env:
                raise errors.InvalidArgument("a flag's series needs its environment", field="environment")
            split_key(request.flag)
            self.access.require(caller, lambda g: g.can_read_flags(env), f"read flag usage of {env}")
            window = min(request.window_seconds or MAX_SERIES_SECONDS, MAX_SERIES_SECONDS)
            local = self.usage.series(env, request.flag, now - window)
            for start, variants in merge_series(local, others, env, request.flag, now - window).items():
                resp.series.add(start=to_timestamp(start), variants=variants)
        ages: list[float] = []
        now_dt = datetime.now(UTC)
        for layer in self.store.layers():
            if layer.kind is LayerKind.FLAGS and (not env or layer.environment == env) and reads(layer):
                ages += [(now_dt - created).total_seconds() for created in await self._flags_created(layer)]
        resp.flag_age_p95_seconds = percentile(ages, 95)
        return resp

    async def _flags_created(self, layer: Layer) -> list[datetime]:
        """When each flag of `layer` was created (those that say), parsed once per layer version (off
        the event loop for a large layer)."""
        version = self.store.layer_revision(layer)
        hit = self._created.get(layer)
        if hit is not None and hit[0] == version:
            return hit[1]
        entries = dict(self.store.entries(layer))

        def parse() -> list[datetime]:
            try:
                flags = parse_flag_set(entries).flags.values()
            except errors.InvalidArgument:
                return []
            return [f.created for f in flags if f.created is not None]

        created = await off_loop(parse) if len(entries) > EncodedLayers.MANY else parse()
        if len(self._created) >= 1024:
            self._created.clear()
        self._created[layer] = (version, created)
        return created


def check_kill_turns_off(layer: Layer, key: str, definition: dict[str, Any]) -> None:
    """The kill bypass of an approval rule may only turn a flag off: a boolean flag killed serves false
    (its off variant) or the caller's default (none), never true. Any other value the off variant
    serves was reviewed with the definition."""
    off = definition.get("off_variant")
    served = definition.get("variants", {}).get(off) if off is not None else None
    if served is True:
        raise errors.FailedPrecondition(
            f"killing flag {key!r} in {layer.environment} would serve true (its off_variant {off!r}): the "
            "kill an approval rule allows only turns a flag off; propose this change instead",
            code="approval_required",
            field=key,
        )
