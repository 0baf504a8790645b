"""AdminService: validated writes, resolved reads with explanations, status."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, TracerProvider
from pydantic import ValidationError

from confmesh import __version__, errors
from confmesh.changes import ChangeSpec
from confmesh.flags.lifecycle import flag_ages, percentile
from confmesh.flags.model import parse_flag, parse_flag_set
from confmesh.keys import Layer, LayerKind, Scope, check_name, split_key
from confmesh.merge import explain, resolve
from confmesh.server.access import Access, Caller, Grant, Role, new_token
from confmesh.server.audit import AuditEntry, AuditFilter, read_audit
from confmesh.server.config_service import abort
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
from confmesh.server.hub import Hub
from confmesh.server.ledger import Ledger
from confmesh.server.limits import Pager
from confmesh.server.metrics import Metrics
from confmesh.server.records import (
    abort_rollout,
    canary_counts,
    delete_rollout,
    delete_token,
    store_token,
    write_record,
    write_rollout,
)
from confmesh.server.rollouts import Rollout
from confmesh.server.schemas import SchemaRecord, ServiceSchema, redact_config
from confmesh.server.source import EtcdSource
from confmesh.server.usage import FlagUsageStore
from confmesh.server.writer import (
    Current,
    Writer,
    WriteResult,
    check_schemas,
    shown_in_audit,
    validate_changes,
)
from confmesh.v1 import admin_pb2, admin_pb2_grpc
from confmesh.wire import from_struct, from_value, layer_from_pb, layer_to_pb, to_struct, to_value

T = TypeVar("T")
READ_YOUR_WRITES_TIMEOUT = 5.0


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        writer: Writer,
        hub: Hub,
        ledger: Ledger,
        source: EtcdSource,
        usage: FlagUsageStore,
        *,
        server_id: str,
        endpoints: str,
        metrics: Metrics | None = None,
        tracer_provider: TracerProvider | None = None,
        access: Access | None = None,
    ) -> None:
        self.access = access or Access(dict)
        self.tracer = trace.get_tracer("confmesh.server", tracer_provider=tracer_provider)
        self.metrics = metrics or Metrics()
        self.usage = usage
        self.writer = writer
        self.hub = hub
        self.ledger = ledger
        self.source = source
        self.server_id = server_id
        self.endpoints = endpoints

    async def _guard(
        self, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]], method: str = ""
    ) -> T:
        try:
            return await call()
        except errors.ConfmeshError as exc:
            await self.access.audit_denial(exc, context, method)
            await abort(context, exc)
            raise

    def _allow(
        self, context: grpc.aio.ServicerContext[Any, Any], allowed: Callable[[Grant], bool], what: str
    ) -> Caller:
        caller = self.access.identify(context)
        self.access.require(caller, allowed, what)
        return caller

    def _reads(self, caller: Caller) -> Callable[[Scope], bool]:
        """Which scopes' entries a filtered answer (status, rollouts) may show `caller`."""
        if not self.access.enforcing:
            return lambda scope: True
        grant = caller.grant
        return (lambda scope: True) if grant is None else grant.can_read

    def _reads_layer(self, caller: Caller) -> Callable[[Layer], bool]:
        if not self.access.enforcing:
            return lambda layer: True
        grant = caller.grant
        return (lambda layer: True) if grant is None else grant.can_read_layer

    def _audit_view(self, caller: Caller) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
        """An audit record as `caller` may see it: only the changes to layers it may read.

        Records without changes (denials, tokens, schemas, rollouts) name other
        identities and scopes; only admins see those.
        """
        grant = caller.grant
        if not self.access.enforcing or grant is None or grant.role is Role.ADMIN:
            return lambda entry: entry

        def view(entry: dict[str, Any]) -> dict[str, Any] | None:
            changes = [
                ch for ch in entry.get("changes", ()) if grant.can_read_layer(Layer.from_path(ch["layer"]))
            ]
            return {**entry, "changes": changes} if changes else None

        return view

    @staticmethod
    def _actor(caller: Caller, ctx: admin_pb2.ChangeContext) -> str:
        """The authenticated identity when there is one, else the actor the client declared."""
        return caller.identity if caller.authenticated else (ctx.actor or "anonymous")

    async def _transact(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        layers: Sequence[Layer],
        plan: Callable[[Current], Sequence[ChangeSpec]],
        ctx: admin_pb2.ChangeContext,
        source: str,
        *,
        skip_unchanged: bool = False,
    ) -> admin_pb2.WriteResponse:
        """Every write: check the caller may write `layers`, then commit one audited transaction."""
        caller = self.access.identify(context)
        self.access.require_writes(caller, layers)
        return await self._commit(
            await self.writer.transact(
                sorted(set(layers)), plan, actor=self._actor(caller, ctx), reason=ctx.reason, source=source,
                skip_unchanged=skip_unchanged,
            )
        )  # fmt: skip

    async def _write(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        changes: list[ChangeSpec],
        ctx: admin_pb2.ChangeContext,
        source: str,
    ) -> admin_pb2.WriteResponse:
        validate_changes(changes)
        return await self._transact(context, [c.layer for c in changes], lambda _: changes, ctx, source,
                                    skip_unchanged=source == "Apply")  # fmt: skip

    async def Put(
        self, request: admin_pb2.PutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            if not request.HasField("value"):
                raise errors.InvalidArgument("value is required", field="value")
            change = ChangeSpec(layer_from_pb(request.layer), request.key, from_value(request.value))
            return await self._write(context, [change], request.context, "Put")

        return await self._timed("Put", context, run)

    async def Delete(
        self, request: admin_pb2.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            change = ChangeSpec(layer_from_pb(request.layer), request.key, delete=True)
            return await self._write(context, [change], request.context, "Delete")

        return await self._timed("Delete", context, run)

    async def Apply(
        self, request: admin_pb2.ApplyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            changes = []
            for i, ch in enumerate(request.changes):
                op = ch.WhichOneof("op")
                if op is None:
                    raise errors.InvalidArgument(
                        f"changes[{i}]: set either value or delete", field=f"changes[{i}]"
                    )
                layer = layer_from_pb(ch.layer)
                if op == "delete":
                    changes.append(ChangeSpec(layer, ch.key, delete=True))
                else:
                    changes.append(ChangeSpec(layer, ch.key, from_value(ch.value)))
            return await self._write(context, changes, request.context, "Apply")

        return await self._timed("Apply", context, run)

    async def Resolve(
        self, request: admin_pb2.ResolveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ResolveResponse:
        async def run() -> admin_pb2.ResolveResponse:
            scope = Scope.checked(request.environment, request.service)
            self._allow(context, lambda g: g.can_read(scope), f"read {scope}")
            if not self.source.store.synced:
                raise errors.Unavailable(f"server has not synced with etcd yet: {self.source.stale_reason}")
            snap = self.hub.resolver.snapshot(scope)
            schema = self.source.store.schemas.get(scope)
            resp = admin_pb2.ResolveResponse(
                environment=scope.environment,
                service=scope.service,
                version=snap.version,
                hash=snap.hash,
                config=to_struct(redact_config(snap.config, schema)),
            )
            if request.key:
                split_key(request.key)
                store = self.source.store
                layer_entries = [store.entries(layer) for layer in scope.layers]
                hits, found, value = explain(layer_entries, request.key)
                if schema is not None:
                    value = schema.redact_value(request.key, value)
                    hits = [
                        replace(hit, value=schema.redact_value(hit.source_key, hit.value)) for hit in hits
                    ]
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

        return await self._guard(context, run, "Resolve")

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetStatusResponse:
        async def allowed() -> tuple[Caller, Pager]:
            return self._allow(context, Grant.can_operate, "read the server status"), Pager(
                request.page_token
            )

        caller, pager = await self._guard(context, allowed, "GetStatus")
        visible = self._reads(caller)
        resp = admin_pb2.GetStatusResponse(
            server_id=self.server_id,
            server_version=__version__,
            revision=self.source.store.revision,
            stale=self.source.stale,
            stale_reason=self.source.stale_reason,
            etcd_endpoints=self.endpoints,
            prefix=self.source.store.layout.prefix,
        )
        resolver = self.hub.resolver
        for scope in list(self.source.store.schemas):
            resolver.snapshot(scope)  # evaluates (and caches) whether the scope's config is valid
        for scope, message in sorted(resolver.violations.items()):
            if visible(scope):
                resp.schema_violations.add(
                    environment=scope.environment, service=scope.service, message=message
                )
        for rec in self.ledger.records():
            key = rec.sort_key()
            if not visible(rec.scope) or not pager.wants(key):
                continue
            inst = resp.instances.add(
                instance_id=rec.instance_id,
                environment=rec.scope.environment,
                service=rec.scope.service,
                peer=rec.peer,
                connected=rec.connected,
                acked_version=rec.acked_version,
                acked_hash=rec.acked_hash,
                sent_version=rec.sent_version,
                connected_at=_ts(rec.connected_at),
                last_seen=_ts(rec.last_seen),
                labels=rec.labels,
            )
            if rec.last_nack is not None:
                n = rec.last_nack
                inst.last_nack.CopyFrom(
                    admin_pb2.NackRecord(
                        version=n.version, hash=n.hash, error=n.error, field_paths=n.field_paths, at=_ts(n.at)
                    )
                )
            pager.added(key, inst.ByteSize())
        resp.next_page_token = pager.next_token
        return resp

    # -- feature flags ------------------------------------------------------------

    async def _timed(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]
    ) -> T:
        started = time.perf_counter()
        ok = False
        parent = propagate.extract(
            {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        )
        with self.tracer.start_as_current_span(
            f"confmesh.admin/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "confmesh.v1.AdminService",
                "rpc.method": method,
            },
        ):
            try:
                result = await self._guard(context, call, method)
                ok = True
                return result
            finally:
                self.metrics.observe_write(method, started, ok)

    async def _settled(self, revision: int, changed: str) -> admin_pb2.WriteResponse:
        """Answer a record write once this replica's cache has it (read your writes)."""
        await self.source.wait_for_revision(revision, READ_YOUR_WRITES_TIMEOUT)
        return admin_pb2.WriteResponse(revision=revision, changed=[changed])

    async def _commit(self, result: WriteResult) -> admin_pb2.WriteResponse:
        """Read-your-writes: answer once this server's cache includes the write."""
        await self.source.wait_for_revision(result.revision, READ_YOUR_WRITES_TIMEOUT)
        return admin_pb2.WriteResponse(
            revision=result.revision, changed=result.changed, unchanged=result.unchanged
        )

    async def PutFlags(
        self, request: admin_pb2.PutFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            layer = Layer.flags(request.environment)
            incoming = from_struct(request.flags)
            if not incoming and not request.replace_all:
                raise errors.InvalidArgument("no flags given", field="flags")
            flags = {
                k: ({**v, "key": k} if isinstance(v, dict) and "key" not in v else v)
                for k, v in incoming.items()
            }
            for key, definition in flags.items():  # each on its own; the set is checked in the txn
                split_key(key)
                parse_flag(definition, key=key)

            def plan(current: Current) -> list[ChangeSpec]:
                changes = [ChangeSpec(layer, k, v) for k, v in flags.items()]
                if request.replace_all:
                    changes += [ChangeSpec(layer, k, delete=True) for k in current[layer] if k not in flags]
                return changes

            return await self._transact(context, [layer], plan, request.context, "PutFlags")

        return await self._timed("PutFlags", context, run)

    async def DeleteFlag(
        self, request: admin_pb2.DeleteFlagRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            change = ChangeSpec(Layer.flags(request.environment), request.key, delete=True)
            return await self._write(context, [change], request.context, "DeleteFlag")

        return await self._timed("DeleteFlag", context, run)

    async def SetFlagEnabled(
        self, request: admin_pb2.SetFlagEnabledRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            split_key(request.key)
            if request.environments:
                layers = [Layer.flags(env) for env in request.environments]
            else:
                layers = [
                    layer
                    for layer in self.source.store.layers()
                    if layer.kind is LayerKind.FLAGS and request.key in self.source.store.raw_entries(layer)
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
                    changes.append(ChangeSpec(layer, request.key, {**definition, "enabled": request.enabled}))
                return changes

            source = "SetFlagEnabled" if request.enabled else "SetFlagEnabled(kill)"
            return await self._transact(context, layers, plan, request.context, source)

        return await self._timed("SetFlagEnabled", context, run)

    async def GetFlags(
        self, request: admin_pb2.GetFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetFlagsResponse:
        async def run() -> admin_pb2.GetFlagsResponse:
            layer = Layer.flags(request.environment)
            self._allow(context, lambda g: g.can_read_flags(layer.environment), f"read {layer}")
            store = self.source.store
            return admin_pb2.GetFlagsResponse(
                environment=layer.environment,
                version=store.layer_revision(layer),
                flags=to_struct(store.entries(layer)),
            )

        return await self._guard(context, run, "GetFlags")

    async def GetFlagUsage(
        self, request: admin_pb2.GetFlagUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetFlagUsageResponse:
        async def run() -> admin_pb2.GetFlagUsageResponse:
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
            for s in self.usage.summary(env, request.window_seconds, now):
                key = (s.environment, s.flag)
                if not reads(Layer.flags(s.environment)) or not pager.wants(key):
                    continue
                added = resp.flags.add(
                    environment=s.environment,
                    flag=s.flag,
                    variants=s.variants,
                    first_seen=_ts(s.first_seen),
                    last_seen=_ts(s.last_seen),
                )
                pager.added(key, added.ByteSize())
            resp.next_page_token = pager.next_token
            ages: list[float] = []
            store = self.source.store
            for layer in store.layers():
                if layer.kind is LayerKind.FLAGS and (not env or layer.environment == env) and reads(layer):
                    try:
                        flag_set = parse_flag_set(store.entries(layer))
                    except errors.InvalidArgument:
                        continue
                    ages += flag_ages(flag_set.flags.values(), datetime.now(UTC))
            resp.flag_age_p95_seconds = percentile(ages, 95)
            return resp

        return await self._guard(context, run, "GetFlagUsage")

    # -- audit ----------------------------------------------------------------------

    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListAuditResponse:
        async def run() -> admin_pb2.ListAuditResponse:
            caller = self._allow(context, Grant.can_operate, "read the audit log")
            if request.environment:
                check_name(request.environment, "environment")
            if request.service:
                check_name(request.service, "service")
            limit = request.limit or 100
            if not 0 < limit <= 1000:
                raise errors.InvalidArgument("limit must be 1-1000", field="limit")
            which = AuditFilter(request.environment, request.service, request.key_prefix, request.actor)
            records = await read_audit(
                self.writer.etcd, self.writer.layout, which, limit, visible=self._audit_view(caller)
            )
            resp = admin_pb2.ListAuditResponse()
            for audit_id, revision, entry in records:
                rec = resp.records.add(
                    id=audit_id,
                    revision=revision,
                    at=_ts(entry["at"]),
                    actor=entry["actor"],
                    reason=entry["reason"],
                    source=entry.get("source", ""),
                    trace_parent=entry.get("trace", ""),
                )
                for ch in entry["changes"]:
                    msg = rec.changes.add(
                        layer=layer_to_pb(Layer.from_path(ch["layer"])), key=ch["key"], op=ch["op"]
                    )
                    if "old" in ch:
                        msg.old_value.CopyFrom(to_value(ch["old"]))
                    if "new" in ch:
                        msg.new_value.CopyFrom(to_value(ch["new"]))
            return resp

        return await self._guard(context, run, "ListAudit")

    # -- tokens ------------------------------------------------------------------------

    async def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.CreateTokenResponse:
        async def run() -> admin_pb2.CreateTokenResponse:
            caller = self._allow(context, lambda g: g.role is Role.ADMIN, "create tokens")
            grant = grant_from_pb(request.grant)
            if any(t.name == request.name for t in self.source.store.tokens.values()):
                raise errors.FailedPrecondition(
                    f"a token named {request.name!r} exists; revoke it first", field="name", code="exists"
                )
            record, token = new_token(request.name, grant, caller.identity)
            revision = await store_token(
                self.writer.etcd,
                self.writer.layout,
                record,
                actor=self._actor(caller, request.context),
                reason=request.context.reason,
            )
            await self.source.wait_for_revision(revision, READ_YOUR_WRITES_TIMEOUT)
            return admin_pb2.CreateTokenResponse(token=token, id=record.id, revision=revision)

        return await self._guard(context, run, "CreateToken")

    async def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListTokensResponse:
        async def run() -> admin_pb2.ListTokensResponse:
            self._allow(context, lambda g: g.role is Role.ADMIN, "list tokens")
            resp = admin_pb2.ListTokensResponse()
            for t in sorted(self.source.store.tokens.values(), key=lambda t: t.name):
                resp.tokens.add(
                    id=t.id,
                    name=t.name,
                    grant=grant_to_pb(t.grant),
                    created_at=_ts(t.created_at),
                    created_by=t.created_by,
                )
            return resp

        return await self._guard(context, run, "ListTokens")

    async def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            caller = self._allow(context, lambda g: g.role is Role.ADMIN, "revoke tokens")
            record = next((t for t in self.source.store.tokens.values() if t.name == request.name), None)
            if record is None:
                raise errors.NotFound(f"no token named {request.name!r}", field="name")
            revision = await delete_token(
                self.writer.etcd,
                self.writer.layout,
                record,
                actor=self._actor(caller, request.context),
                reason=request.context.reason,
            )
            return await self._settled(revision, f"token/{record.name}")

        return await self._guard(context, run, "RevokeToken")

    # -- schemas -------------------------------------------------------------------------

    async def _schema_record(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        environment: str,
        service: str,
        ctx: admin_pb2.ChangeContext,
        document: dict[str, Any] | None,
    ) -> admin_pb2.WriteResponse:
        """Register (`document`) or remove (None) a service's schema, audited in the same transaction."""
        scope = Scope.checked(environment, service)
        verb = "register" if document is not None else "remove"
        layer = Layer.svc(scope.environment, scope.service)
        caller = self._allow(context, lambda g: g.can_write(layer), f"{verb} the schema of {scope}")
        encoded = None
        if document is not None:
            registrant = self._actor(caller, ctx)
            schema = ServiceSchema(scope, document, registrant)
            config = resolve(self.source.store.entries(x) for x in scope.layers)
            await check_schemas(
                [(schema, config, False)], f"registering this schema (the current config of {scope})"
            )
            encoded = SchemaRecord(document, registrant).encode()
        source = f"{'PutSchema' if document is not None else 'DeleteSchema'} {scope}"
        audit = AuditEntry(self._actor(caller, ctx), ctx.reason, source)
        layout = self.writer.layout
        revision = await write_record(
            self.writer.etcd,
            layout,
            layout.schema_key(scope),
            encoded,
            audit,
            must_exist=None if document is not None else True,
        )
        return await self._settled(revision, f"schema/{scope}")

    async def PutSchema(
        self, request: admin_pb2.PutSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            return await self._schema_record(
                context, request.environment, request.service, request.context, from_struct(request.schema)
            )

        return await self._timed("PutSchema", context, run)

    async def GetSchema(
        self, request: admin_pb2.GetSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetSchemaResponse:
        async def run() -> admin_pb2.GetSchemaResponse:
            scope = Scope.checked(request.environment, request.service)
            self._allow(context, lambda g: g.can_read(scope), f"read the schema of {scope}")
            schema = self.source.store.schemas.get(scope)
            if schema is None:
                raise errors.NotFound(f"no schema registered for {scope}")
            return admin_pb2.GetSchemaResponse(
                schema=to_struct(schema.document), revision=self.source.store.schema_revision.get(scope, 0)
            )

        return await self._guard(context, run, "GetSchema")

    async def DeleteSchema(
        self, request: admin_pb2.DeleteSchemaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            return await self._schema_record(
                context, request.environment, request.service, request.context, None
            )

        return await self._timed("DeleteSchema", context, run)

    # -- history -------------------------------------------------------------------------

    async def _restore(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        layers: list[Layer],
        records: Callable[[int], Awaitable[list[Recorded]]],
        ctx: admin_pb2.ChangeContext,
        source: str,
        *,
        at: int = 0,
    ) -> admin_pb2.WriteResponse:
        """Restore `layers`, as one new audited change: to what they held at revision `at`, else by
        undoing the audited changes `records(read revision)` returns.

        What etcd still keeps of revision `at` is read back exactly. Past that,
        the audit log is undone, and only when it accounts for every change
        since: an out-of-band write in between is refused, never guessed over.
        """
        caller = self.access.identify(context)
        self.access.require_writes(caller, layers)
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

        return await self._transact(context, layers, plan, ctx, source)

    async def Rollback(
        self, request: admin_pb2.RollbackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
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
                context, [layer], records, request.context, source, at=request.to_version
            )

        return await self._timed("Rollback", context, run)

    async def Revert(
        self, request: admin_pb2.RevertRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            env = check_name(request.environment, "environment")
            if request.since_seconds <= 0:
                raise errors.InvalidArgument("since_seconds must be positive", field="since_seconds")
            store = self.source.store
            services = {
                layer
                for layer in store.layers()
                if layer.kind is LayerKind.SERVICE and layer.environment == env
            }
            layers = sorted({Layer.env(env), Layer.flags(env)} | services)
            since = time.time() - request.since_seconds

            async def records(upto: int) -> list[Recorded]:
                return await changes_after(self.writer.etcd, self.writer.layout, layers, since=since)

            source = f"Revert {env} last {request.since_seconds}s"
            return await self._restore(context, layers, records, request.context, source)

        return await self._timed("Revert", context, run)

    async def GetLayer(
        self, request: admin_pb2.GetLayerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetLayerResponse:
        async def run() -> admin_pb2.GetLayerResponse:
            layer = layer_from_pb(request.layer)
            self._allow(context, lambda g: g.can_read_layer(layer), f"read {layer}")
            store = self.source.store
            entries = {k: shown_in_audit(store.schemas, layer, k, v) for k, v in store.entries(layer).items()}
            return admin_pb2.GetLayerResponse(
                entries=to_struct(entries), revision=store.layer_revision(layer)
            )

        return await self._guard(context, run, "GetLayer")

    # -- staged rollouts ---------------------------------------------------------------------

    def _rollout(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        environment: str,
        service: str,
        *,
        active: bool = True,
    ) -> Rollout:
        """The scope's rollout, for a caller who may write the scope's layer (checked first, so
        the answer says nothing of other scopes' rollouts)."""
        scope = Scope.checked(environment, service)
        self.access.require_writes(
            self.access.identify(context), [Layer.svc(scope.environment, scope.service)]
        )
        entry = self.source.store.rollouts.get(scope)
        if entry is None or (active and not entry[0].active):
            raise errors.NotFound(f"no active rollout for {scope}")
        return entry[0]

    async def StartRollout(
        self, request: admin_pb2.StartRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            scope = Scope.checked(request.environment, request.service)
            layer = Layer.svc(scope.environment, scope.service)
            caller = self.access.identify(context)
            self.access.require_writes(caller, [layer])
            existing = self.source.store.rollouts.get(scope)
            if existing is not None and existing[0].active:
                raise errors.FailedPrecondition(
                    f"rollout {existing[0].name!r} is active for {scope}; promote or abort it first",
                    code="rollout_active",
                )
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
            schema = self.source.store.schemas.get(scope)
            if schema is not None:
                entries = [self.source.store.entries(x) for x in scope.layers]
                entries[-1] = rollout.apply_to(entries[-1])
                await check_schemas([(schema, resolve(entries), False)], f"rollout {rollout.name!r}")
            revision = await write_rollout(
                self.writer.etcd,
                self.writer.layout,
                rollout,
                actor=rollout.started_by,
                reason=request.context.reason,
                action="StartRollout",
            )
            return await self._settled(revision, f"rollout/{scope}")

        return await self._timed("StartRollout", context, run)

    async def UpdateRollout(
        self, request: admin_pb2.UpdateRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            rollout = self._rollout(context, request.environment, request.service)
            caller = self.access.identify(context)
            self.access.require_writes(caller, [rollout.layer])
            updated = rollout.with_(percent=request.percent)
            revision = await write_rollout(
                self.writer.etcd,
                self.writer.layout,
                updated,
                actor=self._actor(caller, request.context),
                reason=request.context.reason,
                action="UpdateRollout",
            )
            return await self._settled(revision, f"rollout/{rollout.scope}")

        return await self._timed("UpdateRollout", context, run)

    async def PromoteRollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            rollout = self._rollout(context, request.environment, request.service)
            layer = rollout.layer

            def plan(current: Current) -> list[ChangeSpec]:
                return [c for c in rollout.change_specs() if not c.delete or c.key in current[layer]]

            ctx = admin_pb2.ChangeContext(
                actor=request.context.actor,
                reason=request.context.reason or f"promote rollout {rollout.name}",
            )
            written = await self._transact(context, [layer], plan, ctx, f"PromoteRollout {rollout.name}")
            caller = self.access.identify(context)
            await delete_rollout(
                self.writer.etcd,
                self.writer.layout,
                rollout,
                actor=self._actor(caller, request.context),
                reason="promoted",
            )
            return written

        return await self._timed("PromoteRollout", context, run)

    async def AbortRollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.WriteResponse:
        async def run() -> admin_pb2.WriteResponse:
            rollout = self._rollout(context, request.environment, request.service)
            caller = self.access.identify(context)
            self.access.require_writes(caller, [rollout.layer])
            actor = self._actor(caller, request.context)
            why = request.context.reason or f"aborted by {actor}"
            revision = await abort_rollout(
                self.writer.etcd, self.writer.layout, rollout, actor=actor, why=why
            )
            return await self._settled(revision, f"rollout/{rollout.scope}")

        return await self._timed("AbortRollout", context, run)

    async def ListRollouts(
        self, request: admin_pb2.ListRolloutsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListRolloutsResponse:
        async def run() -> admin_pb2.ListRolloutsResponse:
            visible = self._reads(self._allow(context, Grant.can_operate, "list rollouts"))
            resp = admin_pb2.ListRolloutsResponse()
            records = self.ledger.records()
            for scope, (rollout, _) in sorted(self.source.store.rollouts.items()):
                if not visible(scope):
                    continue
                schema = self.source.store.schemas.get(scope)
                shown = {
                    k: schema.redact_value(k, v) if schema is not None else v
                    for k, v in rollout.changes.items()
                    if v is not None
                }
                version = self.hub.resolver.for_instance(scope, "").version
                if rollout.active:
                    version = self.hub.resolver.canary(scope).version
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

        return await self._guard(context, run, "ListRollouts")


def grant_from_pb(msg: admin_pb2.Grant) -> Grant:
    try:
        return Grant.model_validate(
            {
                "role": msg.role,
                "environment": msg.environment,
                "service": msg.service,
                "scopes": tuple(msg.scopes),
                "flags": tuple(msg.flags),
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "grant"
        raise errors.InvalidArgument(f"grant: {where}: {first['msg']}", field="grant") from exc


def grant_to_pb(grant: Grant) -> admin_pb2.Grant:
    return admin_pb2.Grant(
        role=grant.role.value,
        environment=grant.environment,
        service=grant.service,
        scopes=list(grant.scopes),
        flags=list(grant.flags),
    )
