"""Resolve, GetStatus and GetLayer: resolved config with its layers, the fleet ledger, raw layers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio

from confmesh import errors
from confmesh.keys import Scope, split_key
from confmesh.merge import explain
from confmesh.server.access import Grant
from confmesh.server.admin_base import (
    AdminBase,
    read,
    to_timestamp,
)
from confmesh.server.fleet import scope_status
from confmesh.server.ledger import InstanceRecord
from confmesh.server.limits import Pager
from confmesh.server.record_kinds import SCHEMAS
from confmesh.server.schemas import redact_config
from confmesh.server.writer import (
    off_loop,
    shown_in_audit,
)
from confmesh.v1 import admin_pb2
from confmesh.version import __version__
from confmesh.wire import layer_from_pb, layer_to_pb, to_struct, to_value


class ReadRPCs(AdminBase):
    @read
    async def Resolve(
        self, request: admin_pb2.ResolveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ResolveResponse:
        scope = Scope.checked(request.environment, request.service)
        self._allow(context, lambda g: g.can_read(scope), f"read {scope}")
        if not self.store.synced:
            raise errors.Unavailable(f"server has not synced with etcd yet: {self.source.stale_reason}")
        snap = self.plane.current(scope)
        schema = self.store.records(SCHEMAS).get(scope)
        resp = admin_pb2.ResolveResponse(
            environment=scope.environment,
            service=scope.service,
            version=snap.version,
            hash=snap.hash,
            config=to_struct(redact_config(snap.config, schema)),
            notice=self.names.check(scope.environment, scope.service).to_pb(),
        )
        if request.key:
            split_key(request.key)
            store = self.store
            layer_entries = [store.entries(layer) for layer in scope.layers]
            hits, found, value = explain(layer_entries, request.key)
            if schema is not None:
                value = schema.redact_value(request.key, value)
                hits = [replace(hit, value=schema.redact_value(hit.source_key, hit.value)) for hit in hits]
            resp.found = found
            if found:
                resp.value.CopyFrom(to_value(value))
            expl = resp.explanations.add(key=request.key)
            if found:
                expl.resolved.CopyFrom(to_value(value))
            for hit in hits:
                layer = scope.layers[hit.layer_index]
                entry = store.raw_entries(layer).get(hit.source_key)
                expl.layers.add(
                    layer=layer_to_pb(layer),
                    source_key=hit.source_key,
                    value=to_value(hit.value),
                    mod_revision=entry.mod_revision if entry else store.layer_revision(layer),
                )
        return resp

    @read
    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetStatusResponse:
        caller = self._allow(context, Grant.can_operate, "read the server status")
        pager = Pager(request.page_token)
        visible = self._reads(caller)
        resp = admin_pb2.GetStatusResponse(
            server_id=self.server_id,
            server_version=__version__,
            revision=self.store.revision,
            stale=self.source.stale,
            stale_reason=self.source.stale_reason,
            etcd_endpoints=self.endpoints,
            prefix=self.store.layout.prefix,
        )
        plane = self.plane
        for scope in list(self.store.records(SCHEMAS)):
            plane.current(scope)  # evaluates (and caches) whether the scope's config is valid
        for scope, message in sorted(plane.violations.items()):
            if visible(scope):
                resp.schema_violations.add(
                    environment=scope.environment, service=scope.service, message=message
                )
        resp.replicas.extend([self.server_id] if request.local else self.fleet.replicas())
        for state, connected, reported_at in sorted(self.relayed.relays(), key=lambda r: r[0].path):
            info = resp.relays.add(
                path=state.path, connected=connected, stale_reason=state.stale_reason, revision=state.revision
            )
            info.reported_at.CopyFrom(to_timestamp(reported_at))
            if state.lost_at:
                info.lost_at.CopyFrom(to_timestamp(state.lost_at))
        joined = self.fleet.joined(local=request.local)
        scopes = {r.scope for r in self.fleet.gather(local=request.local)}
        notices = {s: self.names.check(s.environment, s.service).message for s in scopes if visible(s)}
        # Joining, sorting and encoding 10,000s of instances runs on the write thread, not on the loop.
        resp.instances.extend(await off_loop(lambda: _status_page(joined(), pager, visible, notices)))
        resp.next_page_token = pager.next_token
        return resp

    @read
    async def GetScopeStatus(
        self, request: admin_pb2.GetScopeStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetScopeStatusResponse:
        scope = Scope.checked(request.environment, request.service)
        self._allow(context, lambda g: g.can_read(scope), f"read {scope}")
        if request.version < 0:
            raise errors.InvalidArgument("version must be >= 0", field="version")
        current = self.plane.current(scope).version
        return scope_status(self.fleet.records(), scope, request.version, current, self.fleet.replicas())

    @read
    async def GetLayer(
        self, request: admin_pb2.GetLayerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetLayerResponse:
        layer = layer_from_pb(request.layer)
        self._allow(context, lambda g: g.can_read_layer(layer), f"read {layer}")
        store = self.store
        revision = store.layer_revision(layer)
        schemas = store.revisions(SCHEMAS)  # redaction follows the schemas' secret marks

        shown = dict(store.records(SCHEMAS))

        def encode(entries: dict[str, Any]) -> Any:
            return to_struct({k: shown_in_audit(shown, layer, k, v) for k, v in entries.items()})

        key = (layer, revision, len(schemas), max(schemas.values(), default=0))
        entries = await self.encoded.get(key, store.entries(layer), encode)
        return admin_pb2.GetLayerResponse(entries=entries, revision=revision)


def _status_page(
    records: list[InstanceRecord], pager: Pager, visible: Callable[[Scope], bool], notices: dict[Scope, str]
) -> list[admin_pb2.InstanceStatus]:
    """One page of GetStatus's instances (pure: run it off the event loop)."""
    page = []
    for rec in records:
        key = rec.sort_key()
        if not visible(rec.scope) or not pager.wants(key):
            continue
        inst = admin_pb2.InstanceStatus(
            instance_id=rec.instance_id,
            environment=rec.scope.environment,
            service=rec.scope.service,
            peer=rec.peer,
            connected=rec.connected,
            acked_version=rec.acked_version,
            acked_hash=rec.acked_hash,
            sent_version=rec.sent_version,
            connected_at=to_timestamp(rec.connected_at),
            last_seen=to_timestamp(rec.last_seen),
            labels=rec.labels,
            server_id=rec.server_id,
            scope_notice=notices.get(rec.scope, ""),
            relay_path=rec.via,
        )
        if rec.last_nack is not None:
            n = rec.last_nack
            inst.last_nack.CopyFrom(
                admin_pb2.NackRecord(
                    version=n.version,
                    hash=n.hash,
                    error=n.error,
                    field_paths=n.field_paths,
                    at=to_timestamp(n.at),
                )
            )
        page.append(inst)
        pager.added(key, inst.ByteSize())
    return page
