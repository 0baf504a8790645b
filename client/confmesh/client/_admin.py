"""AdminClient: writes, resolved reads and status over the AdminService."""

from __future__ import annotations

import getpass
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from confmesh.changes import ChangeSpec
from confmesh.client.interceptors import FlagChannel
from confmesh.digest import SCHEMES
from confmesh.keys import Layer, Scope
from confmesh.merge import JSONValue, normalize
from confmesh.rpc_errors import error_from_rpc
from confmesh.tls import TLSConfig, aio_channel, bearer_metadata
from confmesh.v1 import admin_pb2, admin_pb2_grpc, config_pb2, config_pb2_grpc
from confmesh.wire import (
    change_to_pb,
    from_struct,
    from_value,
    layer_from_pb,
    layer_to_pb,
    to_struct,
    to_value,
)


@dataclass(frozen=True)
class WriteResult:
    revision: int
    changed: list[str]
    # Apply: the changes that were already so (puts of the held value, deletes of absent keys).
    unchanged: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LayerValue:
    layer: Layer
    source_key: str
    value: JSONValue
    mod_revision: int


@dataclass(frozen=True)
class Explained:
    environment: str
    service: str
    version: int
    hash: str
    config: dict[str, JSONValue]
    key: str = ""
    found: bool = False
    value: JSONValue = None
    layers: list[LayerValue] = field(default_factory=list)
    # Set when nothing on the server names the environment (or the service looks like a typo of a
    # known one): what is unknown and the closest known names. environment_known tells them apart.
    notice: str = ""
    environment_known: bool = True


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


class AdminClient:
    """``async with AdminClient("127.0.0.1:7070") as admin: await admin.put("a.b", 1)``."""

    def __init__(
        self,
        target: str,
        *,
        actor: str | None = None,
        timeout: float = 10.0,
        tls: TLSConfig | None = None,
        token: str | None = None,
    ) -> None:
        """`token`: a bearer token from ``confmesh token create`` (default: env CONFMESH_TOKEN)."""
        self.target = target
        self._metadata = bearer_metadata(token)
        self.actor = actor or default_actor()
        self.timeout = timeout
        # Traced writes carry their trace context, so the change trace starts at the caller.
        self._channel = FlagChannel(aio_channel(target, tls))
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._config = config_pb2_grpc.ConfigServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.target) from None

    def _context(self, reason: str) -> admin_pb2.ChangeContext:
        return admin_pb2.ChangeContext(actor=self.actor, reason=reason)

    async def put(
        self,
        key: str,
        value: JSONValue,
        *,
        env: str | None = None,
        service: str | None = None,
        reason: str = "",
    ) -> WriteResult:
        value = normalize(value, path=key, depth=key.count("."))
        req = admin_pb2.PutRequest(
            layer=layer_to_pb(Layer.of(env, service)),
            key=key,
            value=to_value(value),
            context=self._context(reason),
        )
        resp = await self._call(self._admin.Put, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def delete(
        self, key: str, *, env: str | None = None, service: str | None = None, reason: str = ""
    ) -> WriteResult:
        req = admin_pb2.DeleteRequest(
            layer=layer_to_pb(Layer.of(env, service)), key=key, context=self._context(reason)
        )
        resp = await self._call(self._admin.Delete, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def apply(self, changes: Sequence[ChangeSpec], *, reason: str = "") -> WriteResult:
        req = admin_pb2.ApplyRequest(context=self._context(reason))
        req.changes.extend(change_to_pb(ch) for ch in changes)
        resp = await self._call(self._admin.Apply, req)
        return WriteResult(resp.revision, list(resp.changed), list(resp.unchanged))

    async def resolve(self, env: str, service: str, key: str = "") -> Explained:
        scope = Scope.checked(env, service)
        req = admin_pb2.ResolveRequest(environment=scope.environment, service=scope.service, key=key)
        resp = await self._call(self._admin.Resolve, req)
        layers = []
        for expl in resp.explanations:
            layers = [
                LayerValue(layer_from_pb(lv.layer), lv.source_key, from_value(lv.value), lv.mod_revision)
                for lv in expl.layers
            ]
        return Explained(
            environment=resp.environment,
            service=resp.service,
            version=resp.version,
            hash=resp.hash,
            config=from_struct(resp.config),
            key=key,
            found=resp.found,
            value=from_value(resp.value) if resp.found else None,
            layers=layers,
            notice=resp.notice.message,
            environment_known=resp.notice.environment_known or not resp.HasField("notice"),
        )

    async def snapshot(self, env: str, service: str) -> config_pb2.Snapshot:
        scope = Scope.checked(env, service)
        req = config_pb2.GetSnapshotRequest(
            environment=scope.environment, service=scope.service, hash_schemes=SCHEMES
        )
        snapshot: config_pb2.Snapshot = await self._call(self._config.GetSnapshot, req)
        return snapshot

    async def status(self, *, local: bool = False) -> admin_pb2.GetStatusResponse:
        """The server's status with every page of instances (the server pages at about 1 MiB):
        the whole fleet's instances, whichever replica answers, or with `local` its own only."""
        status: admin_pb2.GetStatusResponse = await self._call(
            self._admin.GetStatus, admin_pb2.GetStatusRequest(local=local)
        )
        token = status.next_page_token
        while token:
            page = await self._call(
                self._admin.GetStatus, admin_pb2.GetStatusRequest(page_token=token, local=local)
            )
            status.instances.extend(page.instances)
            token = page.next_page_token
        status.next_page_token = ""
        return status

    async def scope_status(
        self, env: str, service: str, version: int = 0
    ) -> admin_pb2.GetScopeStatusResponse:
        """Which instances of one scope run which version, fleet-wide, and why the others rejected it."""
        req = admin_pb2.GetScopeStatusRequest(environment=env, service=service, version=version)
        resp: admin_pb2.GetScopeStatusResponse = await self._call(self._admin.GetScopeStatus, req)
        return resp

    # -- feature flags ------------------------------------------------------------

    async def put_flags(
        self, env: str, flags: Mapping[str, Any], *, replace_all: bool = False, reason: str = ""
    ) -> WriteResult:
        """Create or replace flag definitions in one environment, atomically."""
        req = admin_pb2.PutFlagsRequest(
            environment=env,
            flags=to_struct(dict(flags)),
            replace_all=replace_all,
            context=self._context(reason),
        )
        resp = await self._call(self._admin.PutFlags, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def delete_flag(self, env: str, key: str, *, reason: str = "") -> WriteResult:
        req = admin_pb2.DeleteFlagRequest(environment=env, key=key, context=self._context(reason))
        resp = await self._call(self._admin.DeleteFlag, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def set_flag_enabled(
        self, key: str, enabled: bool, *, envs: Sequence[str] = (), reason: str = ""
    ) -> WriteResult:
        """Turn a flag on or off in `envs` (none given: every environment that has it)."""
        req = admin_pb2.SetFlagEnabledRequest(
            environments=list(envs), key=key, enabled=enabled, context=self._context(reason)
        )
        resp = await self._call(self._admin.SetFlagEnabled, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def get_flags(self, env: str) -> tuple[int, dict[str, Any]]:
        """(version, flag key -> definition) of one environment."""
        resp = await self._call(self._admin.GetFlags, admin_pb2.GetFlagsRequest(environment=env))
        return resp.version, from_struct(resp.flags)

    async def flag_usage(
        self, env: str = "", window_seconds: int = 0, *, flag: str = ""
    ) -> admin_pb2.GetFlagUsageResponse:
        """Flag usage with every page (the server pages at about 1 MiB); with `flag` (and `env`), also
        that flag's evaluations per minute, fleet-wide, in ``series``."""
        req = admin_pb2.GetFlagUsageRequest(environment=env, window_seconds=window_seconds, flag=flag)
        usage: admin_pb2.GetFlagUsageResponse = await self._call(self._admin.GetFlagUsage, req)
        while usage.next_page_token:
            req.page_token = usage.next_page_token
            page = await self._call(self._admin.GetFlagUsage, req)
            usage.flags.extend(page.flags)
            usage.next_page_token = page.next_page_token
        return usage

    async def audit(
        self, *, env: str = "", service: str = "", key_prefix: str = "", actor: str = "", limit: int = 100
    ) -> admin_pb2.ListAuditResponse:
        """Audit records, newest first, filtered by scope, key prefix and actor."""
        req = admin_pb2.ListAuditRequest(
            environment=env, service=service, key_prefix=key_prefix, actor=actor, limit=limit
        )
        resp: admin_pb2.ListAuditResponse = await self._call(self._admin.ListAudit, req)
        return resp

    # -- tokens (admins only) -----------------------------------------------------------

    async def create_token(
        self,
        name: str,
        role: str,
        *,
        env: str = "",
        service: str = "",
        scopes: Sequence[str] = (),
        flags: Sequence[str] = (),
        reason: str = "",
    ) -> str:
        """Issue a bearer token; the returned string is shown once and stored nowhere."""
        grant = admin_pb2.Grant(
            role=role, environment=env, service=service, scopes=list(scopes), flags=list(flags)
        )
        req = admin_pb2.CreateTokenRequest(name=name, grant=grant, context=self._context(reason))
        resp: admin_pb2.CreateTokenResponse = await self._call(self._admin.CreateToken, req)
        return resp.token

    async def list_tokens(self) -> list[admin_pb2.TokenInfo]:
        resp: admin_pb2.ListTokensResponse = await self._call(
            self._admin.ListTokens, admin_pb2.ListTokensRequest()
        )
        return list(resp.tokens)

    async def revoke_token(self, name: str, *, reason: str = "") -> WriteResult:
        req = admin_pb2.RevokeTokenRequest(name=name, context=self._context(reason))
        resp = await self._call(self._admin.RevokeToken, req)
        return WriteResult(resp.revision, list(resp.changed))

    # -- schemas ---------------------------------------------------------------------------

    async def put_schema(
        self, env: str, service: str, schema: Mapping[str, Any], *, reason: str = ""
    ) -> WriteResult:
        """Register the JSON Schema the resolved config of (env, service) must satisfy from now on."""
        req = admin_pb2.PutSchemaRequest(
            environment=env, service=service, schema=to_struct(dict(schema)), context=self._context(reason)
        )
        resp = await self._call(self._admin.PutSchema, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def get_schema(self, env: str, service: str) -> dict[str, Any]:
        resp = await self._call(
            self._admin.GetSchema, admin_pb2.GetSchemaRequest(environment=env, service=service)
        )
        return from_struct(resp.schema)

    async def delete_schema(self, env: str, service: str, *, reason: str = "") -> WriteResult:
        req = admin_pb2.DeleteSchemaRequest(environment=env, service=service, context=self._context(reason))
        resp = await self._call(self._admin.DeleteSchema, req)
        return WriteResult(resp.revision, list(resp.changed))

    # -- history ---------------------------------------------------------------------------

    async def rollback(
        self, to_version: int, *, env: str | None = None, service: str | None = None, reason: str = ""
    ) -> WriteResult:
        """Restore one layer (defaults, env or env/service) as it was at `to_version`, as a new change."""
        req = admin_pb2.RollbackRequest(
            layer=layer_to_pb(Layer.of(env, service)), to_version=to_version, context=self._context(reason)
        )
        resp = await self._call(self._admin.Rollback, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def revert(self, env: str, since_seconds: int, *, reason: str = "") -> WriteResult:
        """Undo every config and flag change to `env`'s layers in the last `since_seconds`, as one change."""
        req = admin_pb2.RevertRequest(
            environment=env, since_seconds=since_seconds, context=self._context(reason)
        )
        resp = await self._call(self._admin.Revert, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def get_layer(self, layer: Layer) -> tuple[int, dict[str, Any]]:
        """(revision, entries) of one layer, unmerged."""
        resp = await self._call(self._admin.GetLayer, admin_pb2.GetLayerRequest(layer=layer_to_pb(layer)))
        return resp.revision, from_struct(resp.entries)

    # -- staged rollouts -------------------------------------------------------------------

    async def start_rollout(
        self,
        name: str,
        env: str,
        service: str,
        *,
        set: Mapping[str, Any] | None = None,
        delete: Sequence[str] = (),
        percent: float,
        max_nack_rate: float | None = None,
        reason: str = "",
    ) -> WriteResult:
        """Show a change to (env, service) to `percent`% of its instances (a stable slice) first."""
        req = admin_pb2.StartRolloutRequest(
            name=name,
            environment=env,
            service=service,
            set=to_struct(dict(set or {})),
            delete=list(delete),
            percent=percent,
            context=self._context(reason),
        )
        if max_nack_rate is not None:
            req.max_nack_rate = max_nack_rate
        resp = await self._call(self._admin.StartRollout, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def update_rollout(
        self, env: str, service: str, percent: float, *, reason: str = ""
    ) -> WriteResult:
        req = admin_pb2.UpdateRolloutRequest(
            environment=env, service=service, percent=percent, context=self._context(reason)
        )
        resp = await self._call(self._admin.UpdateRollout, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def promote_rollout(self, env: str, service: str, *, reason: str = "") -> WriteResult:
        req = admin_pb2.RolloutRequest(environment=env, service=service, context=self._context(reason))
        resp = await self._call(self._admin.PromoteRollout, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def abort_rollout(self, env: str, service: str, *, reason: str = "") -> WriteResult:
        req = admin_pb2.RolloutRequest(environment=env, service=service, context=self._context(reason))
        resp = await self._call(self._admin.AbortRollout, req)
        return WriteResult(resp.revision, list(resp.changed))

    async def rollouts(self) -> list[admin_pb2.RolloutInfo]:
        resp = await self._call(self._admin.ListRollouts, admin_pb2.ListRolloutsRequest())
        return list(resp.rollouts)

    # -- change requests ---------------------------------------------------------------------

    async def propose_change(
        self,
        changes: Sequence[ChangeSpec] = (),
        *,
        title: str = "",
        reason: str = "",
        rollout: Mapping[str, Any] | None = None,
        apply_at: float | None = None,
        dry_run: bool = False,
    ) -> admin_pb2.ChangeRequest:
        """Propose config and flag-layer changes, or (``rollout``: name, env, service, set, delete,
        percent, max_nack_rate) a rollout start, for review; ``apply_at``: epoch seconds."""
        req = admin_pb2.ProposeChangeRequest(title=title, context=self._context(reason), dry_run=dry_run)
        req.changes.extend(change_to_pb(ch) for ch in changes)
        if rollout is not None:
            start = req.rollout
            start.name, start.environment = rollout["name"], rollout["env"]
            start.service, start.percent = rollout["service"], float(rollout["percent"])
            start.set.CopyFrom(to_struct(dict(rollout.get("set") or {})))
            start.delete.extend(rollout.get("delete") or ())
            if rollout.get("max_nack_rate") is not None:
                start.max_nack_rate = float(rollout["max_nack_rate"])
        if apply_at:
            req.apply_at.FromNanoseconds(int(apply_at * 1e9))
        return await self._call(self._admin.ProposeChange, req)  # type: ignore[no-any-return]

    async def change(self, change_id: str) -> admin_pb2.ChangeRequest:
        """One change request with its diff and blast radius, as the layers are now."""
        return await self._call(self._admin.GetChange, admin_pb2.ChangeRef(id=change_id))  # type: ignore[no-any-return]

    async def changes(self, *, states: Sequence[str] = (), limit: int = 0) -> list[admin_pb2.ChangeRequest]:
        """Change requests the caller may read, newest first; ``states``: open, approved, applied, ..."""
        wanted = [f"CHANGE_STATE_{s.upper()}" for s in states]
        resp = await self._call(
            self._admin.ListChanges, admin_pb2.ListChangesRequest(states=wanted, limit=limit)
        )
        return list(resp.changes)

    async def review_change(
        self, change_id: str, *, approve: bool, comment: str = ""
    ) -> admin_pb2.ChangeRequest:
        req = admin_pb2.ReviewChangeRequest(id=change_id, approve=approve, context=self._context(comment))
        return await self._call(self._admin.ReviewChange, req)  # type: ignore[no-any-return]

    async def schedule_change(
        self, change_id: str, apply_at: float | None, *, reason: str = ""
    ) -> admin_pb2.ChangeRequest:
        """Apply at `apply_at` (epoch seconds) once approved; None clears the schedule."""
        req = admin_pb2.ScheduleChangeRequest(id=change_id, context=self._context(reason))
        if apply_at:
            req.apply_at.FromNanoseconds(int(apply_at * 1e9))
        return await self._call(self._admin.ScheduleChange, req)  # type: ignore[no-any-return]

    async def apply_change(self, change_id: str, *, reason: str = "") -> admin_pb2.ChangeRequest:
        req = admin_pb2.ChangeRef(id=change_id, context=self._context(reason))
        return await self._call(self._admin.ApplyChange, req)  # type: ignore[no-any-return]

    async def cancel_change(self, change_id: str, *, reason: str = "") -> admin_pb2.ChangeRequest:
        req = admin_pb2.ChangeRef(id=change_id, context=self._context(reason))
        return await self._call(self._admin.CancelChange, req)  # type: ignore[no-any-return]
