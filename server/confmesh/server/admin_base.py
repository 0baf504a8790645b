"""What every AdminService RPC shares: its state, the read/write wrappers, authorization and commits."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import struct_pb2, timestamp_pb2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, TracerProvider
from pydantic import ValidationError

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import Layer, Scope
from confmesh.server.access import Access, Bypass, Caller, Grant, Role
from confmesh.server.config_service import abort
from confmesh.server.fleet import FleetView
from confmesh.server.known_names import KnownNames
from confmesh.server.metrics import Metrics
from confmesh.server.plane import SnapshotPlane
from confmesh.server.relayed_fleet import RelayedFleet
from confmesh.server.serving import ServingState
from confmesh.server.store import ConfigStore
from confmesh.server.usage import FlagUsageStore
from confmesh.server.writer import (
    Also,
    Current,
    Writer,
    WriteResult,
    off_loop,
    validate_changes,
)
from confmesh.v1 import admin_pb2, admin_pb2_grpc

T = TypeVar("T")
S = TypeVar("S", bound="AdminBase")
Q = TypeVar("Q")
R = TypeVar("R")
Context = grpc.aio.ServicerContext[Any, Any]
READ_YOUR_WRITES_TIMEOUT = 5.0


def write(fn: Callable[[S, Q, Context], Awaitable[R]]) -> Callable[[S, Q, Context], Awaitable[R]]:
    """A write RPC: traced (joining the caller's trace), timed in ``confmesh_write_seconds``, and
    answered with its error's status, a denial audited."""

    @functools.wraps(fn)
    async def handler(self: S, request: Q, context: Context) -> R:
        return await self._timed(fn.__name__, context, lambda: fn(self, request, context))

    return handler


def read(fn: Callable[[S, Q, Context], Awaitable[R]]) -> Callable[[S, Q, Context], Awaitable[R]]:
    """A read RPC: answered with its error's status, a denial audited."""

    @functools.wraps(fn)
    async def handler(self: S, request: Q, context: Context) -> R:
        return await self._guard(context, lambda: fn(self, request, context), fn.__name__)

    return handler


def to_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class EncodedLayers:
    """A layer's contents as encoded for an answer, kept per (layer, version): readers that read a
    1,000-flag environment again and again cost a copy each, not an encoding on the event loop."""

    SIZE = 64
    MANY = 100  # entries: a layer with more is encoded on the write pool, not on the event loop

    def __init__(self) -> None:
        self._items: OrderedDict[Hashable, struct_pb2.Struct] = OrderedDict()

    async def get(
        self, key: Hashable, entries: Mapping[str, Any], encode: Callable[[dict[str, Any]], struct_pb2.Struct]
    ) -> struct_pb2.Struct:
        """`encode(entries)` for `key`, computed once; `entries` are copied first (the store may
        change them meanwhile; their values are never mutated)."""
        found = self._items.get(key)
        if found is None:
            copy = dict(entries)
            found = await off_loop(lambda: encode(copy)) if len(copy) > self.MANY else encode(copy)
            self._items[key] = found
            while len(self._items) > self.SIZE:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return found


class AdminBase(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        writer: Writer,
        plane: SnapshotPlane,
        fleet: FleetView,
        store: ConfigStore,
        source: ServingState,
        usage: FlagUsageStore,
        *,
        server_id: str,
        endpoints: str,
        metrics: Metrics | None = None,
        tracer_provider: TracerProvider | None = None,
        access: Access | None = None,
        relayed: RelayedFleet | None = None,
    ) -> None:
        self.access = access or Access(dict)
        self.relayed = relayed or RelayedFleet()  # relays below this replica, for status
        self.tracer = trace.get_tracer("confmesh.server", tracer_provider=tracer_provider)
        self.metrics = metrics or Metrics()
        self.usage = usage
        self.writer = writer
        self.plane = plane  # snapshots, as streams get them
        self.fleet = fleet
        self.store = store  # the read model: layers, flags, schemas, rollouts, tokens
        self.names = KnownNames(store)  # which environment and service names anything names
        self._proposing = asyncio.Lock()  # ProposeChange: counting open requests and writing one
        self._impacts: dict[Any, tuple[float, Any]] = {}  # GetChange's impacts, shortly reused
        self._answers: dict[Any, tuple[float, Any]] = {}  # GetChange's whole answers, shortly reused
        self.encoded = EncodedLayers()  # GetLayer's and GetFlags' answers, by layer version
        self._created: dict[Layer, tuple[int, list[datetime]]] = {}  # GetFlagUsage's flag ages
        self.source = source  # how fresh it is, and waiting for one's own writes
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
        also: Also | None = None,
        bypass: Bypass | None = None,
        approved: bool = False,
    ) -> admin_pb2.WriteResponse:
        """Every write: check the caller may write `layers`, then commit one audited transaction.

        Layers an approval rule covers take only writes already approved (a change request, a
        rollout started by one) or the emergencies the rule allows (`bypass`).
        """
        caller = self.access.identify(context)
        self.access.require_writes(caller, layers)
        if not approved:
            self.access.require_no_approval(layers, bypass)
        return await self._commit(
            await self.writer.transact(
                sorted(set(layers)), plan, actor=self._actor(caller, ctx), reason=ctx.reason, source=source,
                skip_unchanged=skip_unchanged, also=also,
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
