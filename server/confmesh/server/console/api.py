"""The console's JSON API under ``/console/api``: one handler per page action, each an AdminService RPC.

Sessions are the caller's bearer token in an HttpOnly, SameSite=Strict cookie; every
state-changing request also carries ``X-CSRF-Token``, an HMAC of that token (without a
policy: a random double-submit cookie), and a same-origin ``Origin`` when the browser
sends one. Reads and writes go through ``bridge.call``, so the API's grants, approval
rules, validation and audit apply unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.flags.budget import BudgetExceeded
from confmesh.gitops import MISSING, drift, flatten
from confmesh.keys import Layer, Scope, check_name
from confmesh.merge import explain
from confmesh.server.access import Access, Caller
from confmesh.server.change_impact import known_scopes
from confmesh.server.console.bridge import call
from confmesh.server.control_work import ControlWork
from confmesh.server.fleet import FleetView
from confmesh.server.ledger import Ledger
from confmesh.server.limits import KeyedCount
from confmesh.server.ofrep import CALLER_DEFAULT, OfrepEvaluators, evaluate, nests_within
from confmesh.server.record_kinds import SCHEMAS
from confmesh.server.store import ConfigStore
from confmesh.server.writer import MAX_CHANGES
from confmesh.v1 import admin_pb2
from confmesh.wire import change_to_pb, from_struct, message_json, to_struct

SESSION, CSRF = "cm_session", "cm_csrf"
MAX_BODY = 256 * 1024
MAX_DEPTH = 64
MAX_EVENT_STREAMS = 64
ROLLOUT_HISTORY_SCAN = 300  # newest audit records the rollouts page looks through for past rollouts
ROLLOUT_HISTORY_SHOWN = 50
MAX_EVENT_STREAMS_PER_CALLER = 8
LAST_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a protobuf Timestamp holds
EVENT_POLL = 0.1
KEEPALIVE = 15.0
_KIND = {
    errors.InvalidArgument: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.FailedPrecondition: 409,
    errors.Unavailable: 503,
    errors.ResourceExhausted: 429,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"confmesh-console-csrf", hashlib.sha256).hexdigest()


def _error(status: int, code: str, message: str, field: str = "") -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "field": field}}, status=status)


def _limit(raw: str, default: int = 100, most: int = 500) -> int:
    if not raw:
        return default
    if not raw.isdigit():
        raise errors.InvalidArgument("limit must be a whole number", field="limit")
    return min(int(raw), most)


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object, nested at most MAX_DEPTH levels."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise errors.InvalidArgument(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise errors.InvalidArgument("the body must be a JSON object")
    if not nests_within(body, MAX_DEPTH):
        raise errors.InvalidArgument(f"the body nests deeper than {MAX_DEPTH} levels")
    return body


def _apply_at(body: dict[str, Any]) -> int:
    """A body's ``apply_at`` (seconds since the epoch) in nanoseconds; 0 when absent."""
    at = body.get("apply_at")
    if at is None or at == 0:
        return 0
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 < at < LAST_TIMESTAMP:
        raise errors.InvalidArgument(
            "apply_at must be a time in seconds since the epoch, from now to a year ahead", field="apply_at"
        )
    return int(at * 1e9)


def _status_of(exc: errors.ConfmeshError) -> int:
    for kind, status in _KIND.items():
        if isinstance(exc, kind):
            return status
    return 500


class Console:
    """The console's API handlers, bound to the server's state and its AdminService."""

    def __init__(
        self,
        admin: Any,
        access: Access,
        store: ConfigStore,
        fleet: FleetView,
        ledger: Ledger,
        work: ControlWork,
        evaluators: OfrepEvaluators,
        *,
        secure_cookies: bool,
        allow_anonymous: bool = True,
    ) -> None:
        self.admin = admin
        self.access = access
        self.work = work
        self.evaluators = evaluators
        self.store = store
        self.fleet = fleet
        self.ledger = ledger
        self.secure = secure_cookies
        # Without a policy every caller may do everything: only on a loopback listener.
        self.allow_anonymous = allow_anonymous
        self.streams = KeyedCount()  # live pages open, per identity
        self.closed = False

    def close(self) -> None:
        """End every live stream (on shutdown): they finish within one poll interval."""
        self.closed = True

    # -- sessions ------------------------------------------------------------------------------

    def _token(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(SESSION, "")

    def caller(self, request: web.Request) -> Caller:
        token = self._token(request)
        if token:
            return self.access.identify_bearer(f"Bearer {token}")
        if self.access.enforcing:
            raise errors.Unauthenticated("log in with a token", code="no_identity")
        if not self.allow_anonymous:
            raise errors.PermissionDenied(
                "without a policy (--policy) the console serves only a loopback --http-listen",
                code="no_policy",
            )
        return Caller("anonymous", None)

    def _check_csrf(self, request: web.Request) -> None:
        """Refuse a state-changing request that a page of another origin could have sent."""
        if request.headers.get("Authorization", "").lower().startswith("bearer "):
            return  # browsers never attach this header by themselves
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            raise errors.PermissionDenied(f"cross-origin request from {origin[:100]} refused", code="csrf")
        token = request.cookies.get(SESSION, "")
        expected = csrf_for(token) if token else request.cookies.get(CSRF, "")
        sent = request.headers.get("X-CSRF-Token", "")
        if len(expected) < 32 or not hmac.compare_digest(sent, expected):
            raise errors.PermissionDenied("missing or wrong X-CSRF-Token", code="csrf")

    def _cookie(self, response: web.StreamResponse, name: str, value: str, *, http_only: bool) -> None:
        response.set_cookie(
            name,
            value,
            path="/console",
            httponly=http_only,
            samesite="Strict",
            secure=self.secure,
            max_age=12 * 3600,
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            raise errors.InvalidArgument('send the token as JSON: {"token": "cmt_..."}')
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            raise errors.PermissionDenied("cross-origin login refused", code="csrf")
        body = await self._json(request)
        token = str(body.get("token", "")).strip()
        caller = self.access.identify_bearer(f"Bearer {token}")
        response = web.json_response(self._me(caller))
        self._cookie(response, SESSION, token, http_only=True)
        self._cookie(response, CSRF, csrf_for(token), http_only=False)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        response = web.json_response({"ok": True})
        response.del_cookie(SESSION, path="/console")
        response.del_cookie(CSRF, path="/console")
        return response

    def _me(self, caller: Caller) -> dict[str, Any]:
        grant = caller.grant
        return {
            "identity": caller.identity,
            "grant": grant.describe()
            if grant
            else ("no policy: everything allowed" if not self.access.enforcing else "none"),
            "role": grant.role.value if grant else ("admin" if not self.access.enforcing else ""),
            "enforcing": self.access.enforcing,
        }

    async def me(self, request: web.Request) -> web.StreamResponse:
        response = web.json_response(self._me(self.caller(request)))
        if not request.cookies.get(SESSION) and len(request.cookies.get(CSRF, "")) < 32:
            self._cookie(response, CSRF, secrets.token_hex(32), http_only=False)
        return response

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        return parse_body(await request.read())

    async def rpc(self, request: web.Request, name: str, message: Any) -> Any:
        peer = f"console:{request.remote or ''}"
        try:
            return await call(getattr(self.admin, name), message, self._token(request), peer)
        except errors.PermissionDenied as exc:
            exc.audited = True  # type: ignore[attr-defined]  # the servicer recorded it: not twice
            raise

    def _may_write(self, caller: Caller, layer: Layer) -> bool:
        if not self.access.enforcing:
            return True
        return caller.grant is not None and caller.grant.can_write(layer)

    def _needs_approval(self, layer: Layer) -> int:
        return self.access.approvals_needed([layer])[0]

    @staticmethod
    def _query(request: web.Request, name: str, *, required: bool = True) -> str:
        value = request.query.get(name, "")
        if required and not value:
            raise errors.InvalidArgument(f"query parameter {name!r} is required", field=name)
        return value[:256]

    @staticmethod
    def _ctx(body: dict[str, Any]) -> admin_pb2.ChangeContext:
        return admin_pb2.ChangeContext(reason=str(body.get("reason", ""))[:2000])

    # -- pages ---------------------------------------------------------------------------------

    async def scopes(self, request: web.Request) -> web.StreamResponse:
        caller = self.caller(request)
        reads = (lambda s: True) if caller.grant is None else caller.grant.can_read
        flag_reads = (lambda e: True) if caller.grant is None else caller.grant.can_read_flags
        instances = Counter(r.scope for r in self.fleet.records() if r.connected)
        known = known_scopes(self.store.layers(), self.store.records(SCHEMAS), instances)
        envs = {s.environment for s in known} | {x.environment for x in self.store.layers() if x.environment}
        services = [
            {
                "environment": s.environment,
                "service": s.service,
                "instances": instances.get(s, 0),
                "version": self.store.scope_version(s),
                "schema": s in self.store.records(SCHEMAS),
            }
            for s in sorted(known)
            if reads(s)
        ]
        return web.json_response(
            {
                "environments": sorted(
                    e for e in envs if flag_reads(e) or any(x["environment"] == e for x in services)
                ),
                "services": services,
            }
        )

    async def config(self, request: web.Request) -> web.StreamResponse:
        env, service = self._query(request, "env"), self._query(request, "service")
        resp = await self.rpc(request, "Resolve", admin_pb2.ResolveRequest(environment=env, service=service))
        caller = self.caller(request)
        scope = Scope.checked(env, service)
        layers = [self.store.entries(layer) for layer in scope.layers]
        config = from_struct(resp.config)
        rows = []
        for key, value in sorted(flatten(config).items()):
            hits, _, _ = explain(layers, key)
            source = scope.layers[hits[-1].layer_index] if hits else None
            rows.append({"key": key, "value": value, "layer": str(source) if source else ""})
        schema = None
        if scope in self.store.records(SCHEMAS):
            schema = message_json(
                await self.rpc(
                    request, "GetSchema", admin_pb2.GetSchemaRequest(environment=env, service=service)
                )
            )["schema"]
        layer = Layer.svc(env, service)
        return web.json_response(
            {
                "environment": env,
                "service": service,
                "version": resp.version,
                "hash": resp.hash,
                "config": config,
                "rows": rows,
                "schema": schema,
                "writable": self._may_write(caller, layer),
                "approvals": self._needs_approval(layer),
                "notice": resp.notice.message,
            }
        )

    def _config_changes(self, body: dict[str, Any]) -> list[ChangeSpec]:
        env, service = str(body.get("env", "")), str(body.get("service", ""))
        layers = {
            "service": lambda: Layer.svc(check_name(env, "environment"), check_name(service, "service")),
            "env": lambda: Layer.env(check_name(env, "environment")),
            "defaults": Layer.defaults,
        }
        which = str(body.get("layer", "service"))
        if which not in layers:
            raise errors.InvalidArgument("layer is one of service, env, defaults", field="layer")
        layer = layers[which]()
        edits = body.get("set", {})
        deletes = body.get("delete", [])
        if not isinstance(edits, dict) or not isinstance(deletes, list):
            raise errors.InvalidArgument("send {set: {key: value}, delete: [key]}")
        return [ChangeSpec(layer, str(k), v) for k, v in edits.items()] + [
            ChangeSpec(layer, str(k), delete=True) for k in deletes
        ]

    def _propose_request(self, changes: list[ChangeSpec], body: dict[str, Any], *, dry_run: bool) -> Any:
        req = admin_pb2.ProposeChangeRequest(
            title=str(body.get("title", ""))[:200], context=self._ctx(body), dry_run=dry_run
        )
        req.changes.extend(change_to_pb(ch) for ch in changes)
        at = _apply_at(body)
        if at:
            req.apply_at.FromNanoseconds(at)
        return req

    async def config_edit(self, request: web.Request) -> web.StreamResponse:
        """Check an edit against the service's schema (a dry-run proposal), then write or propose it.

        ``mode``: ``check`` (nothing written), ``write`` (a direct Apply), or ``propose``.
        """
        body = await self._json(request)
        changes = self._config_changes(body)
        mode = body.get("mode", "check")
        check = message_json(
            await self.rpc(request, "ProposeChange", self._propose_request(changes, body, dry_run=True))
        )
        refused = [s for s in check["scopes"] if s["has_schema"] and not s["schema_accepts"]]
        if refused:
            first = refused[0]
            return _error(400, "schema_violation", first["schema_error"], first["schema_field"])
        if mode == "check":
            return web.json_response({"ok": True, "change": check})
        if mode == "propose":
            proposed = await self.rpc(
                request, "ProposeChange", self._propose_request(changes, body, dry_run=False)
            )
            return web.json_response({"ok": True, "change": message_json(proposed)})
        req = admin_pb2.ApplyRequest(context=self._ctx(body))
        req.changes.extend(change_to_pb(ch) for ch in changes)
        written = await self.rpc(request, "Apply", req)
        return web.json_response({"ok": True, "revision": written.revision, "changed": list(written.changed)})

    async def flags(self, request: web.Request) -> web.StreamResponse:
        env = self._query(request, "env")
        resp = message_json(await self.rpc(request, "GetFlags", admin_pb2.GetFlagsRequest(environment=env)))
        caller = self.caller(request)
        layer = Layer.flags(env)
        rows = []
        for key, definition in sorted(resp["flags"].items()):
            d = definition if isinstance(definition, dict) else {}
            rows.append(
                {
                    "key": key,
                    "enabled": d.get("enabled", True),
                    "kind": d.get("kind", "release"),
                    "owner": d.get("owner", ""),
                    "expires": d.get("expires"),
                    "description": d.get("description", ""),
                    "default_variant": d.get("default_variant"),
                    "definition": definition,
                }
            )
        return web.json_response(
            {
                "environment": env,
                "version": resp["version"],
                "flags": rows,
                "writable": self._may_write(caller, layer),
                "approvals": self._needs_approval(layer),
            }
        )

    async def flag_usage(self, request: web.Request) -> web.StreamResponse:
        """One flag's evaluations per minute and variant over the last `minutes` (default 60, at
        most a day), fleet-wide, for the flag page's chart."""
        env, key = self._query(request, "env"), self._query(request, "key")
        try:
            minutes = int(request.query.get("minutes", "60"))
        except ValueError:
            raise errors.InvalidArgument("minutes is a whole number", field="minutes") from None
        if not 1 <= minutes <= 24 * 60:
            raise errors.InvalidArgument("minutes is between 1 and 1440", field="minutes")
        req = admin_pb2.GetFlagUsageRequest(environment=env, flag=key, window_seconds=minutes * 60)
        resp = await self.rpc(request, "GetFlagUsage", req)
        series = [{"t": b.start.ToSeconds(), "variants": dict(b.variants)} for b in resp.series]
        return web.json_response({"environment": env, "flag": key, "minutes": minutes, "series": series,
                                  "now": time.time()})  # fmt: skip

    async def flag_kill(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        if body.get("confirm") is not True:
            raise errors.InvalidArgument("confirm the kill switch", field="confirm")
        reason = str(body.get("reason", "")).strip()
        if not reason:
            raise errors.InvalidArgument("a kill switch needs a reason", field="reason")
        enabled = bool(body.get("enabled", False))
        req = admin_pb2.SetFlagEnabledRequest(
            key=str(body.get("key", "")),
            enabled=enabled,
            environments=[str(body.get("env", ""))],
            context=self._ctx(body),
        )
        written = await self.rpc(request, "SetFlagEnabled", req)
        return web.json_response({"ok": True, "revision": written.revision})

    async def flag_save(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        env, key, definition = str(body.get("env", "")), str(body.get("key", "")), body.get("definition")
        if not isinstance(definition, dict):
            raise errors.InvalidArgument("definition must be a JSON object", field="definition")
        if body.get("mode") == "propose":
            change = ChangeSpec(Layer.flags(env), key, definition)
            proposed = await self.rpc(
                request, "ProposeChange", self._propose_request([change], body, dry_run=False)
            )
            return web.json_response({"ok": True, "change": message_json(proposed)})
        req = admin_pb2.PutFlagsRequest(
            environment=env, flags=to_struct({key: definition}), context=self._ctx(body)
        )
        written = await self.rpc(request, "PutFlags", req)
        return web.json_response({"ok": True, "revision": written.revision})

    async def flag_explain(self, request: web.Request) -> web.StreamResponse:
        """Evaluate a flag definition (saved or being edited) for a test context, with the trace.

        Admitted before its body is read; the body is parsed, and the flag evaluated, on the
        control-work thread under its budget, from the environment's cached evaluator with only an
        edited flag parsed and compiled anew.
        """
        caller = self.caller(request)
        with self.work.slot(caller.identity, "explain"):
            raw = await request.read()
            try:
                body = await self.work.execute(lambda: parse_body(raw))
                env, key = str(body.get("env", "")), str(body.get("key", ""))
                layer = Layer.flags(check_name(env, "environment"))
                self.access.require(caller, lambda g: g.can_read_flags(layer.environment), f"read {layer}")
                context = body.get("context", {})
                if not isinstance(context, dict):
                    raise errors.InvalidArgument("context must be a JSON object", field="context")
                definition = body.get("definition")
                revision, flags = self.evaluators.inputs(layer.environment)

                def explain() -> dict[str, Any]:
                    if isinstance(definition, dict):
                        evaluator = self.evaluators.with_flag(
                            layer.environment, revision, flags, key, definition
                        )
                    else:
                        evaluator = self.evaluators.evaluator(layer.environment, revision, flags)
                    details = evaluate(evaluator, key, context)
                    return {
                        "value": None if details.value is CALLER_DEFAULT else details.value,
                        "variant": details.variant,
                        "reason": str(details.reason),
                        "error": details.error_message or "",
                        "trace": evaluator.explain(key, context),
                    }

                answer = await self.work.execute(explain)
            except BudgetExceeded as exc:
                raise errors.InvalidArgument(f"explain refused: {exc}", code="budget_exceeded") from None
        return web.json_response(answer)

    async def changes(self, request: web.Request) -> web.StreamResponse:
        resp = await self.rpc(request, "ListChanges", admin_pb2.ListChangesRequest(limit=200))
        return web.json_response({"changes": [message_json(c) for c in resp.changes]})

    async def change(self, request: web.Request) -> web.StreamResponse:
        resp = await self.rpc(request, "GetChange", admin_pb2.ChangeRef(id=request.match_info["id"]))
        caller = self.caller(request)
        layers = [Layer.from_path(x) for x in resp.layers]
        me = caller.identity
        return web.json_response(
            {
                "change": message_json(resp),
                "may_review": all(self._may_write(caller, x) for x in layers) and me != resp.author,
                "may_apply": all(self._may_write(caller, x) for x in layers),
            }
        )

    async def change_action(self, request: web.Request) -> web.StreamResponse:
        cid, action = request.match_info["id"], request.match_info["action"]
        body = await self._json(request)
        ctx = self._ctx(body)
        if action in ("approve", "reject"):
            msg = admin_pb2.ReviewChangeRequest(id=cid, approve=action == "approve", context=ctx)
            resp = await self.rpc(request, "ReviewChange", msg)
        elif action == "apply":
            resp = await self.rpc(request, "ApplyChange", admin_pb2.ChangeRef(id=cid, context=ctx))
        elif action == "cancel":
            resp = await self.rpc(request, "CancelChange", admin_pb2.ChangeRef(id=cid, context=ctx))
        elif action == "schedule":
            sched = admin_pb2.ScheduleChangeRequest(id=cid, context=ctx)
            at = _apply_at(body)
            if at:
                sched.apply_at.FromNanoseconds(at)
            resp = await self.rpc(request, "ScheduleChange", sched)
        else:
            raise errors.NotFound(f"no change action {action!r}")
        return web.json_response({"change": message_json(resp)})

    async def rollouts(self, request: web.Request) -> web.StreamResponse:
        resp = await self.rpc(request, "ListRollouts", admin_pb2.ListRolloutsRequest())
        out = []
        for r in resp.rollouts:
            status = await self.rpc(
                request,
                "GetScopeStatus",
                admin_pb2.GetScopeStatusRequest(environment=r.environment, service=r.service),
            )
            out.append({"rollout": message_json(r), "status": message_json(status)})
        return web.json_response({"rollouts": out, "history": await self._rollout_history(request)})

    async def _rollout_history(self, request: web.Request) -> list[dict[str, Any]]:
        """Every rollout step (start, percent, promote, abort) among the newest audit records, newest
        first: a scope holds one rollout record, so past rollouts live only in the audit log (whose
        records without layer changes only admins read)."""
        resp = await self.rpc(request, "ListAudit", admin_pb2.ListAuditRequest(limit=ROLLOUT_HISTORY_SCAN))
        steps = []
        for r in resp.records:
            action, _, what = r.source.partition(" ")
            if action in {"StartRollout", "UpdateRollout", "PromoteRollout", "AbortRollout"}:
                steps.append({"action": action.removesuffix("Rollout").lower(), "what": what,
                              "actor": r.actor, "reason": r.reason, "at": r.at.ToJsonString()})  # fmt: skip
        return steps[:ROLLOUT_HISTORY_SHOWN]

    async def rollout_action(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        env, service, action = (
            str(body.get("env", "")),
            str(body.get("service", "")),
            request.match_info["action"],
        )
        ctx = self._ctx(body)
        if action == "percent":
            percent = body.get("percent")
            if not isinstance(percent, (int, float)):
                raise errors.InvalidArgument("percent must be a number", field="percent")
            msg = admin_pb2.UpdateRolloutRequest(
                environment=env, service=service, percent=float(percent), context=ctx
            )
            resp = await self.rpc(request, "UpdateRollout", msg)
        elif action in ("promote", "abort"):
            rpc = "PromoteRollout" if action == "promote" else "AbortRollout"
            resp = await self.rpc(
                request, rpc, admin_pb2.RolloutRequest(environment=env, service=service, context=ctx)
            )
        else:
            raise errors.NotFound(f"no rollout action {action!r}")
        return web.json_response({"ok": True, "revision": resp.revision})

    async def fleet_page(self, request: web.Request) -> web.StreamResponse:
        env, service = self._query(request, "env"), self._query(request, "service")
        status = await self.rpc(
            request, "GetScopeStatus", admin_pb2.GetScopeStatusRequest(environment=env, service=service)
        )
        scope = Scope.checked(env, service)
        instances = [
            {
                "instance_id": r.instance_id,
                "server_id": r.server_id,
                "relay_path": r.via,
                "acked_version": r.acked_version,
                "sent_version": r.sent_version,
                "peer": r.peer,
                "nack": None
                if r.last_nack is None
                else {
                    "version": r.last_nack.version,
                    "error": r.last_nack.error,
                    "field_paths": list(r.last_nack.field_paths),
                },
            }
            for r in self.fleet.records()
            if r.connected and r.scope == scope
        ][:500]
        return web.json_response({"status": message_json(status), "instances": instances})

    async def audit(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        msg = admin_pb2.ListAuditRequest(
            environment=q.get("env", "")[:64],
            service=q.get("service", "")[:64],
            key_prefix=q.get("key", "")[:256],
            actor=q.get("actor", "")[:256],
            limit=_limit(q.get("limit", "")),
        )
        resp = await self.rpc(request, "ListAudit", msg)
        return web.json_response({"records": [message_json(r) for r in resp.records]})

    async def drift(self, request: web.Request) -> web.StreamResponse:
        a, b, service = self._query(request, "a"), self._query(request, "b"), self._query(request, "service")
        ra = await self.rpc(request, "Resolve", admin_pb2.ResolveRequest(environment=a, service=service))
        rb = await self.rpc(request, "Resolve", admin_pb2.ResolveRequest(environment=b, service=service))
        rows = [
            {"key": key, "a": None if va is MISSING else va, "b": None if vb is MISSING else vb,
             "only": "a" if vb is MISSING else "b" if va is MISSING else ""}
            for key, va, vb, _ in drift(from_struct(ra.config), from_struct(rb.config), [])
        ]  # fmt: skip
        return web.json_response({"a": a, "b": b, "service": service, "rows": rows})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one `update` whenever config, flags, changes or the fleet's answers move.

        At most MAX_EVENT_STREAMS per replica and MAX_EVENT_STREAMS_PER_CALLER per identity (so one
        identity cannot take every slot). The caller's grant is checked again on every poll: a revoked
        token's stream ends at once with a `denied` event, as Watch and flagd sync streams do.
        """
        caller = self.caller(request)
        mine = self.streams.of(caller.identity)
        if mine >= MAX_EVENT_STREAMS_PER_CALLER:
            raise errors.ResourceExhausted(
                f"{caller.identity} has {mine} live pages open; the limit is {MAX_EVENT_STREAMS_PER_CALLER}"
            )
        if self.streams.total >= MAX_EVENT_STREAMS:
            raise errors.Unavailable(
                f"{MAX_EVENT_STREAMS} live pages are open on this replica; try again later"
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        self.streams.take(caller.identity)
        try:
            last: tuple[int, int] = (-1, -1)
            quiet = time.monotonic()
            while not self.closed and request.transport is not None and not request.transport.is_closing():
                if self.access.enforcing and self.access.still_valid(caller) is None:
                    await response.write(b"event: denied\ndata: {}\n\n")
                    break
                now = (self.store.revision, self.ledger.generation)
                if now != last:
                    last = now
                    quiet = time.monotonic()
                    data = json.dumps({"revision": now[0], "fleet": now[1]})
                    await response.write(f"event: update\ndata: {data}\n\n".encode())
                elif time.monotonic() - quiet > KEEPALIVE:
                    quiet = time.monotonic()
                    await response.write(b": keepalive\n\n")
                await asyncio.sleep(EVENT_POLL)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.streams.release(caller.identity)
        return response

    # -- wiring --------------------------------------------------------------------------------

    def guarded(self, handler: Handler, *, write: bool) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                if write:
                    self._check_csrf(request)
                return await handler(request)
            except errors.ConfmeshError as exc:
                if isinstance(exc, errors.ResourceExhausted):
                    await self.work.refuse()
                denied = isinstance(exc, errors.PermissionDenied) and exc.code != "csrf"
                if denied and not getattr(exc, "audited", False):
                    with contextlib.suppress(errors.ConfmeshError):
                        caller = self.caller(request)
                        # Throttled per caller (one record per 10 s), not per path a caller may vary.
                        await self.access.audit_caller_denial(exc, caller, "console")
                return _error(_status_of(exc), exc.code, exc.message, exc.field)

        return run

    def add_routes(self, app: web.Application) -> None:
        def g(handler: Handler) -> Handler:
            return self.guarded(handler, write=False)

        def w(handler: Handler) -> Handler:
            return self.guarded(handler, write=True)

        p = "/console/api"
        app.router.add_post(f"{p}/login", self.guarded(self.login, write=False))
        app.router.add_post(f"{p}/logout", w(self.logout))
        app.router.add_get(f"{p}/me", g(self.me))
        app.router.add_get(f"{p}/scopes", g(self.scopes))
        app.router.add_get(f"{p}/config", g(self.config))
        app.router.add_post(f"{p}/config", w(self.config_edit))
        app.router.add_get(f"{p}/flags", g(self.flags))
        app.router.add_get(f"{p}/flags/usage", g(self.flag_usage))
        app.router.add_post(f"{p}/flags/kill", w(self.flag_kill))
        app.router.add_post(f"{p}/flags/save", w(self.flag_save))
        app.router.add_post(f"{p}/flags/explain", w(self.flag_explain))
        app.router.add_get(f"{p}/changes", g(self.changes))
        app.router.add_get(f"{p}/changes/{{id}}", g(self.change))
        app.router.add_post(f"{p}/changes/{{id}}/{{action}}", w(self.change_action))
        app.router.add_post(f"{p}/propose", w(self.propose))
        app.router.add_get(f"{p}/rollouts", g(self.rollouts))
        app.router.add_post(f"{p}/rollouts/{{action}}", w(self.rollout_action))
        app.router.add_get(f"{p}/fleet", g(self.fleet_page))
        app.router.add_get(f"{p}/audit", g(self.audit))
        app.router.add_get(f"{p}/drift", g(self.drift))
        app.router.add_get(f"{p}/events", g(self.events))

    async def propose(self, request: web.Request) -> web.StreamResponse:
        """Propose raw changes ({layer, key, value | delete}), e.g. an edit refused for approval."""
        body = await self._json(request)
        items = body.get("changes", [])
        if not isinstance(items, list):
            raise errors.InvalidArgument("changes must be a list", field="changes")
        if len(items) > MAX_CHANGES:  # refused whole, never cut: the gRPC API refuses the same
            raise errors.InvalidArgument(
                f"{len(items)} changes in one request; the limit is {MAX_CHANGES}", field="changes"
            )
        changes = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise errors.InvalidArgument(f"changes[{i}] must be an object", field=f"changes[{i}]")
            layer = Layer.from_path(str(item.get("layer", "")))
            if item.get("delete"):
                changes.append(ChangeSpec(layer, str(item.get("key", "")), delete=True))
            else:
                changes.append(ChangeSpec(layer, str(item.get("key", "")), item.get("value")))
        proposed = await self.rpc(
            request, "ProposeChange", self._propose_request(changes, body, dry_run=False)
        )
        return web.json_response({"change": message_json(proposed)})
