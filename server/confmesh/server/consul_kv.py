"""The Consul KV HTTP API, as the clients written for it use it (py-consul, the `consul` npm package,
consul-template, envconsul), on `serve --http-listen`: services written for Consul KV read and
write confmesh unchanged (docs/migration.md).

**Mapping.** Consul key ``<root>/<env>/global/<a>/<b>`` is key ``a.b`` of environment layer
``<env>``; ``<root>/<env>/<service>/<a>/<b>`` is key ``a.b`` of service layer ``<env>/<service>``
(``root`` is ``config`` unless ``--consul-root`` says otherwise). These are the raw layers, not the
resolved view: what a Consul client writes is what it reads back. A string value is its text; any
other value its JSON. A body written with PUT is taken as JSON when it parses as JSON, else as text.

**The resolved view**, read-only: ``resolved/<env>/<service>/<a>/<b>`` is key ``a.b`` of what the
service resolves to, at its snapshot version; its blocking queries wake on a change to any layer
(or schema or rollout) of the scope.

**Writes** become AdminService calls (``Put``, ``Delete``) in process, as the console's do: the
same grants, validation, schemas, approval rules and audit. ``cas`` is checked against the key's
ModifyIndex (its etcd mod revision) just before the write.

**Blocking queries** (``index`` + ``wait``) wait on a future each, woken only by a change to a key
they read: thousands cost nothing while nothing changes, and an unrelated change wakes none. The
index of a read is the newest mod revision among the keys it covers, or of the newest delete in
their layer (deletes leave no key behind), so it never goes backwards.

Tokens: ``X-Consul-Token`` or ``?token=`` (or ``Authorization: Bearer``) carry a confmesh token. A
read of a layer the caller may not read is Consul's 403; a listing across layers shows only the
layers the caller reads. Values a schema marks secret are redacted as GetLayer redacts them, except
for the service itself.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import json
import random
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from confmesh import errors
from confmesh.errors import StartupError
from confmesh.keys import Layer, LayerKind, Scope
from confmesh.merge import JSONValue, loads_json
from confmesh.server.access import ANONYMOUS, Access, Caller, Role
from confmesh.server.admin_service import AdminService
from confmesh.server.console.bridge import call
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import SCHEMAS
from confmesh.server.resolver import affects
from confmesh.server.schemas import redact_config
from confmesh.server.serving import ServingState
from confmesh.server.store import ConfigStore, StoreChange
from confmesh.v1 import admin_pb2
from confmesh.wire import layer_to_pb, to_value

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_BODY = 512 * 1024
# Each caller's share of answer bytes (ReadBudget): 8 MiB a second, 16 MiB at once.
READ_BYTES_PER_SECOND = 8 * 1024 * 1024
READ_BURST_BYTES = 16 * 1024 * 1024
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_wait(text: str) -> float:
    """Consul's `wait` (``10s``, ``5m``, a bare number of seconds): default 5 min, at most 10."""
    if not text:
        return DEFAULT_WAIT
    found = _DURATION.match(text.strip())
    if found is None:
        raise errors.InvalidArgument(f"wait {text!r} is not a duration like 10s or 5m", field="wait")
    return min(MAX_WAIT, float(found[1]) * _UNITS[found[2]])


def encode_value(value: JSONValue) -> bytes:
    """What a Consul client reads for a config value: a string's text, anything else's JSON."""
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def decode_value(body: bytes) -> JSONValue:
    """A PUT body as a config value: JSON when it parses as JSON, else its UTF-8 text."""
    if not body:
        return ""
    try:
        return loads_json(body)
    except (ValueError, RecursionError, errors.InvalidArgument):
        pass
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise errors.InvalidArgument(
            "a value must be JSON or UTF-8 text (binary values are not config)"
        ) from None


@dataclass(frozen=True)
class Mapping:
    """Consul key paths ↔ (layer, dotted key)."""

    root: str = "config"

    def locate(self, path: str) -> tuple[Layer, str]:
        """The layer and dotted key of a full Consul key (InvalidArgument: outside the mapping)."""
        parts = path.split("/")
        if len(parts) < 4 or parts[0] != self.root or not all(parts[1:]):
            raise errors.InvalidArgument(
                f"{path!r} is not a key this server maps: use {self.root}/<env>/global/<key> or "
                f"{self.root}/<env>/<service>/<key>",
                field="key",
            )
        if any("." in p for p in parts[3:]):
            raise errors.InvalidArgument(
                "a '.' in a Consul key segment has no config key to map to", field="key"
            )
        env, service = parts[1], parts[2]
        layer = Layer.env(env) if service == "global" else Layer.svc(env, service)
        return layer, ".".join(parts[3:])

    def layer_root(self, layer: Layer) -> str:
        below = "global" if layer.kind is LayerKind.ENVIRONMENT else layer.service
        return f"{self.root}/{layer.environment}/{below}/"

    def consul_key(self, layer: Layer, key: str) -> str:
        return self.layer_root(layer) + key.replace(".", "/")

    def layers_under(self, prefix: str, layers: Iterable[Layer]) -> list[Layer]:
        """The mapped layers that hold keys starting with `prefix`."""
        out = []
        for layer in layers:
            if layer.kind not in (LayerKind.ENVIRONMENT, LayerKind.SERVICE):
                continue
            root = self.layer_root(layer)
            if root.startswith(prefix) or prefix.startswith(root):
                out.append(layer)
        return sorted(out)


@dataclass(eq=False)
class Waiter:
    prefix: str
    exact: bool
    index: int
    future: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class KvWatch:
    """Blocking queries: each waits on a future, woken by a change to a key it covers. Deletes leave
    no key behind, so each layer keeps the revision of its newest delete: an index never goes
    backwards (it may pass a query's index once on an unrelated delete in the same layer)."""

    def __init__(self, store: ConfigStore, mapping: Mapping) -> None:
        self.store, self.mapping = store, mapping
        self.deleted: dict[Layer, int] = {}
        self._exact: dict[str, set[Waiter]] = {}
        self._prefixes: set[Waiter] = set()
        self._scopes: dict[Scope, set[Waiter]] = {}  # resolved-view queries, by the scope they read

    def changed(self, change: StoreChange) -> None:
        woken: list[Waiter] = []
        for scope in list(self._scopes):
            if scope in change.scopes or any(
                layer.kind is not LayerKind.FLAGS and affects(layer, scope) for layer in change.layers
            ):
                woken += self._scopes.pop(scope)
        touched: list[str] = []
        for layer, keys in change.layers.items():
            if layer.kind not in (LayerKind.ENVIRONMENT, LayerKind.SERVICE):
                continue
            entries = self.store.raw_entries(layer)
            for key in keys:
                touched.append(self.mapping.consul_key(layer, key))
                if key not in entries:
                    self.deleted[layer] = max(self.deleted.get(layer, 0), change.revision)
        for key in touched:
            woken += self._exact.pop(key, ())
        if self._prefixes:
            ordered = sorted(touched)
            for waiter in list(self._prefixes):
                at = bisect.bisect_left(ordered, waiter.prefix)
                if at < len(ordered) and ordered[at].startswith(waiter.prefix):
                    woken.append(waiter)
        for waiter in woken:
            if change.revision > waiter.index and not waiter.future.done():
                waiter.future.set_result(change.revision)

    async def wait(
        self, prefix: str, exact: bool, index: int, seconds: float, scope: Scope | None = None
    ) -> None:
        """Until a key under `prefix` changes after `index` (with `scope`: until that scope's
        resolved config does), or `seconds` pass (Consul adds up to 1/16 of the wait as jitter, so
        many waiters do not all return at once)."""
        waiter = Waiter(prefix, exact, index)
        if scope is not None:
            self._scopes.setdefault(scope, set()).add(waiter)
        elif exact:
            self._exact.setdefault(prefix, set()).add(waiter)
        else:
            self._prefixes.add(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), seconds + random.uniform(0, seconds / 16))
        except TimeoutError:
            pass
        finally:
            if scope is not None:
                of_scope = self._scopes.get(scope)
                if of_scope is not None:
                    of_scope.discard(waiter)
                    if not of_scope:
                        del self._scopes[scope]
            elif exact:
                waiting = self._exact.get(prefix)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._exact[prefix]
            else:
                self._prefixes.discard(waiter)

    @property
    def waiting(self) -> int:
        return (
            sum(map(len, self._exact.values())) + len(self._prefixes) + sum(map(len, self._scopes.values()))
        )


class ReadBudget:
    """Bytes of answers each caller may take per second (a token bucket per caller, bounded in
    callers): a client that lists a large layer in a loop is answered 429 past its share, so the
    event loop keeps time for delivery. A config client re-reads only when a blocking query wakes."""

    def __init__(self, rate: float = READ_BYTES_PER_SECOND, burst: float = READ_BURST_BYTES) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)

    def _now(self, caller: str) -> float:
        tokens, at = self._buckets.get(caller, (self.burst, time.monotonic()))
        now = time.monotonic()
        return min(self.burst, tokens + (now - at) * self.rate)

    def admits(self, caller: str) -> bool:
        return self._now(caller) > 0

    def charge(self, caller: str, size: int) -> None:
        self._buckets[caller] = (self._now(caller) - size, time.monotonic())
        self._buckets.move_to_end(caller)
        while len(self._buckets) > 10_000:
            self._buckets.popitem(last=False)


@dataclass
class Item:
    key: str
    value: JSONValue
    revision: int
    # Its entry in an answer, encoded once per layer version: a listing joins these.
    encoded: bytes = b""

    def as_json(self) -> dict[str, Any]:
        return {"LockIndex": 0, "Key": self.key, "Flags": 0,
                "Value": base64.b64encode(encode_value(self.value)).decode(),
                "CreateIndex": self.revision, "ModifyIndex": self.revision}  # fmt: skip

    def encode(self) -> Item:
        self.encoded = json.dumps(self.as_json(), separators=(",", ":"), ensure_ascii=False).encode()
        return self


class ConsulKV:
    def __init__(
        self,
        store: ConfigStore,
        source: ServingState,
        access: Access,
        admin: AdminService,
        plane: SnapshotPlane,
        *,
        root: str = "config",
        resolved_root: str = "resolved",
    ) -> None:
        self.store, self.source, self.access, self.admin, self.plane = store, source, access, admin, plane
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", root):
            raise StartupError(f"--consul-root {root!r}: one path segment of [A-Za-z0-9_-]")
        if resolved_root == root or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", resolved_root):
            raise StartupError(f"the resolved view's root {resolved_root!r}: one segment, not {root!r}")
        self.resolved_root = resolved_root
        self._resolved_items: dict[tuple[Scope, int, str, bool], list[Item]] = {}
        self.budget = ReadBudget()
        self.mapping = Mapping(root)
        self.watch = KvWatch(store, self.mapping)
        self._cache: dict[tuple[Layer, bool], tuple[tuple[int, int], list[str], list[Item]]] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/kv/{key:.*}", self.get)
        app.router.add_put("/v1/kv/{key:.*}", self.put)
        app.router.add_delete("/v1/kv/{key:.*}", self.delete)

    # -- who asks --------------------------------------------------------------------------------

    def _token(self, request: web.Request) -> str:
        token = request.headers.get("X-Consul-Token") or request.query.get("token", "")
        if not token and request.headers.get("Authorization", "").lower().startswith("bearer "):
            token = request.headers["Authorization"][7:]
        return token.strip()

    def _caller(self, request: web.Request) -> Caller:
        token = self._token(request)
        return self.access.identify_bearer(f"Bearer {token}") if token else ANONYMOUS

    def _reads(self, caller: Caller, layer: Layer) -> bool:
        """Layers a grant reads; a service also reads the two layers a Consul client of its scope
        loads (its environment's and its own), which its resolved snapshot holds anyway."""
        if not self.access.enforcing:
            return True
        grant = caller.grant
        if grant is None:
            return False
        if grant.role is Role.SERVICE:
            return layer in (Layer.env(grant.environment), Layer.svc(grant.environment, grant.service))
        return grant.can_read_layer(layer)

    # -- reads -------------------------------------------------------------------------------------

    def _sees_secrets(self, caller: Caller, layer: Layer) -> bool:
        """Values a service's schema marks secret are shown as GetLayer shows them (redacted), but to
        the service itself, which reads them as its Watch stream does (and to anyone without a
        policy, where anyone may watch)."""
        if not self.access.enforcing:
            return True
        grant = caller.grant
        if grant is None or grant.role is not Role.SERVICE:
            return False
        return layer == Layer.svc(grant.environment, grant.service)

    def _layer(self, layer: Layer, secrets: bool) -> tuple[list[str], list[Item]]:
        """A layer's items as Consul keys, sorted, built once per layer version (and schema)."""
        scope = Scope(layer.environment, layer.service)
        schema = self.store.records(SCHEMAS).get(scope) if layer.kind is LayerKind.SERVICE else None
        redact = schema is not None and not secrets
        version = (self.store.layer_revision(layer), self.store.revisions(SCHEMAS).get(scope, 0))
        cached = self._cache.get((layer, redact))
        if cached is None or cached[0] != version:
            # Only the entries that changed since the layer's last version are encoded again.
            before = {} if cached is None or cached[0][1] != version[1] else {i.key: i for i in cached[2]}
            items = []
            for k, e in self.store.raw_entries(layer).items():
                consul = self.mapping.consul_key(layer, k)
                kept = before.get(consul)
                if kept is not None and kept.revision == e.mod_revision:
                    items.append(kept)
                    continue
                value = schema.redact_value(k, e.value) if redact and schema is not None else e.value
                items.append(Item(consul, value, e.mod_revision).encode())
            items.sort(key=lambda i: i.key)
            cached = (version, [i.key for i in items], items)
            self._cache[(layer, redact)] = cached
            if len(self._cache) > 4096:
                self._cache.clear()
        return cached[1], cached[2]

    def _items(self, prefix: str, caller: Caller, *, exact: bool) -> tuple[list[Item], int, bool]:
        """The items under `prefix` (just `prefix` when `exact`), their index, and whether a layer
        was left out because the caller may not read it."""
        if exact:
            layers = [self.mapping.locate(prefix)[0]]
        else:
            layers = self.mapping.layers_under(prefix, self.store.layers())
        items: list[Item] = []
        index = 1
        denied = False
        for layer in layers:
            if not self._reads(caller, layer):
                denied = True
                continue
            keys, held = self._layer(layer, self._sees_secrets(caller, layer))
            start = bisect.bisect_left(keys, prefix)
            end = start + 1 if exact else bisect.bisect_left(keys, prefix + "\U0010ffff")
            found = [i for i in held[start:end] if (i.key == prefix if exact else i.key.startswith(prefix))]
            items += found
            index = max(index, self.watch.deleted.get(layer, 0), *(i.revision for i in found))
        return items, index, denied

    async def get(self, request: web.Request) -> web.StreamResponse:
        try:
            who = self._token(request) or _peer(request).rpartition(":")[0]
            if not self.budget.admits(who):
                await asyncio.sleep(0.2)  # a client that retries at once does not turn refusals into a flood
                why = "too many answer bytes from this caller; retry in a second\n"
                return web.Response(status=429, headers={"Retry-After": "1"}, text=why)
            response = await self._get(request)
            body = response.body if isinstance(response, web.Response) else None
            self.budget.charge(who, len(body) if isinstance(body, bytes) else 0)
            return response
        except errors.ConfmeshError as exc:
            return _error(exc)

    def _resolved(self, path: str, caller: Caller, *, exact: bool) -> tuple[list[Item], int, Scope]:
        """Items of the resolved view: ``<resolved root>/<env>/<service>/<a>/<b>`` is key ``a.b`` of
        what (env, service) resolves to (defaults, environment, service), at its version."""
        parts = path.split("/")
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise errors.InvalidArgument(f"the resolved view is {self.resolved_root}/<env>/<service>/<key>",
                                         field="key")  # fmt: skip
        scope = Scope.checked(parts[1], parts[2])
        if self.access.enforcing and (caller.grant is None or not caller.grant.can_watch(scope)):
            raise errors.PermissionDenied(f"{caller.identity} may not read {scope}")
        snapshot = self.plane.current(scope)
        grant = caller.grant
        own = not self.access.enforcing or (grant is not None and grant.role is Role.SERVICE)
        cache_key = (scope, snapshot.version, snapshot.hash, own)
        items = self._resolved_items.get(cache_key)
        if items is None:  # flattened and encoded once per version
            schema = self.store.records(SCHEMAS).get(scope)
            config = snapshot.config if own else redact_config(snapshot.config, schema)
            root = f"{self.resolved_root}/{scope.environment}/{scope.service}/"
            items = sorted((Item(root + "/".join(p), value, snapshot.version).encode()
                            for p, value in _leaves(config, ())), key=lambda i: i.key)  # fmt: skip
            if len(self._resolved_items) > 1024:
                self._resolved_items.clear()
            self._resolved_items[cache_key] = items
        wanted = [i for i in items if (i.key == path if exact else i.key.startswith(path))]
        return wanted, max(1, snapshot.version), scope

    async def _get(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["key"]
        q = request.query
        caller = self._caller(request)
        recurse, keys = "recurse" in q, "keys" in q
        exact = not (recurse or keys)
        if not self.source.synced:
            raise errors.Unavailable("not synced yet")
        if path == self.resolved_root or path.startswith(self.resolved_root + "/"):
            items, index, scope = self._resolved(path, caller, exact=exact)
            wanted = _uint(q.get("index", "0"), "index")
            if wanted and index <= wanted:
                await self.watch.wait(path, exact, wanted, parse_wait(q.get("wait", "")), scope=scope)
                items, index, scope = self._resolved(path, caller, exact=exact)
            return self._answer(items, index, path, q, exact=exact, keys=keys)
        if exact:
            layer, _ = self.mapping.locate(path)
            if not self._reads(caller, layer):
                raise errors.PermissionDenied(f"{caller.identity} may not read {path}")
        items, index, denied = self._items(path, caller, exact=exact)
        if exact is False and denied and not items and self.access.enforcing and not caller.authenticated:
            raise errors.Unauthenticated("this server requires a token (X-Consul-Token)")
        wanted = _uint(q.get("index", "0"), "index")
        if wanted and index <= wanted:
            await self.watch.wait(path, exact, wanted, parse_wait(q.get("wait", "")))
            items, index, _ = self._items(path, caller, exact=exact)
        return self._answer(items, index, path, q, exact=exact, keys=keys)

    def _answer(
        self, items: list[Item], index: int, path: str, q: Any, *, exact: bool, keys: bool
    ) -> web.StreamResponse:
        headers = {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
        if self.source.stale:
            headers["X-Consul-KnownLeader"] = "false"
            headers["Confmesh-Stale"] = self.source.stale_reason.encode("ascii", "replace").decode()[:512]
        if keys:
            listed = _keys(items, path, q.get("separator", ""))
            if not listed:
                return web.Response(status=404, headers=headers)
            return web.json_response(listed, headers=headers)
        if not items:
            return web.Response(status=404, headers=headers)
        if "raw" in q and exact:
            return web.Response(body=encode_value(items[0].value), headers=headers,
                                content_type="application/octet-stream")  # fmt: skip
        body = b"[" + b",".join(i.encoded for i in items) + b"]"
        return web.Response(body=body, headers=headers, content_type="application/json")

    # -- writes ------------------------------------------------------------------------------------

    async def put(self, request: web.Request) -> web.StreamResponse:
        try:
            self._writable(request)
            body = await request.content.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise errors.InvalidArgument(f"a value is at most {MAX_BODY} bytes here")
            layer, key = self.mapping.locate(request.match_info["key"])
            _no_sessions(request)
            if _uint(request.query.get("flags", "0"), "flags"):
                raise errors.InvalidArgument(
                    "flags are not kept: config values carry no flags", field="flags"
                )
            if not self._cas_holds(request, layer, key):
                return web.json_response(False)
            put = admin_pb2.PutRequest(layer=layer_to_pb(layer), key=key, value=to_value(decode_value(body)),
                                       context=admin_pb2.ChangeContext(reason="consul kv put"))  # fmt: skip
            await call(self.admin.Put, put, self._token(request), _peer(request))
            return web.json_response(True)
        except errors.ConfmeshError as exc:
            return _error(exc)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        try:
            self._writable(request)
            layer, key = self.mapping.locate(request.match_info["key"])
            if not self._cas_holds(request, layer, key):
                return web.json_response(False)
            if key not in self.store.raw_entries(layer) and "recurse" not in request.query:
                return web.json_response(True)  # Consul: deleting an absent key succeeds
            why = admin_pb2.ChangeContext(reason="consul kv delete")
            doomed = admin_pb2.DeleteRequest(layer=layer_to_pb(layer), key=key, context=why)
            with contextlib.suppress(errors.NotFound):
                await call(self.admin.Delete, doomed, self._token(request), _peer(request))
            return web.json_response(True)
        except errors.ConfmeshError as exc:
            return _error(exc)

    def _writable(self, request: web.Request) -> None:
        path = request.match_info["key"]
        if path == self.resolved_root or path.startswith(self.resolved_root + "/"):
            raise errors.InvalidArgument(
                f"the resolved view is read-only: write {self.mapping.root}/<env>/<service>/<key>",
                field="key",
            )

    def _cas_holds(self, request: web.Request, layer: Layer, key: str) -> bool:
        """`?cas=N`: 0, the key must not exist; N, its ModifyIndex must be N."""
        if "cas" not in request.query:
            return True
        cas = _uint(request.query["cas"], "cas")
        entry = self.store.raw_entries(layer).get(key)
        return entry is None if cas == 0 else entry is not None and entry.mod_revision == cas


def _leaves(value: JSONValue, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], JSONValue]]:
    """A resolved config's leaves, each with its path (a list is one leaf, as a value)."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif path:
        yield path, value


def _keys(items: list[Item], prefix: str, separator: str) -> list[str]:
    out: dict[str, None] = {}
    for item in items:
        if separator:
            cut = item.key.find(separator, len(prefix))
            out[item.key if cut < 0 else item.key[: cut + len(separator)]] = None
        else:
            out[item.key] = None
    return list(out)


def _uint(text: str, name: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise errors.InvalidArgument(f"{name} must be an unsigned integer", field=name)
    return int(text)


def _no_sessions(request: web.Request) -> None:
    if "acquire" in request.query or "release" in request.query:
        raise errors.InvalidArgument(
            "sessions and locks are not supported (acquire/release)", field="acquire"
        )


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"ipv4:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unknown"


_STATUS = {"InvalidArgument": 400, "NotFound": 404, "PermissionDenied": 403, "Unauthenticated": 403,
           "FailedPrecondition": 409, "ResourceExhausted": 429, "Unavailable": 503}  # fmt: skip


def _error(exc: errors.ConfmeshError) -> web.Response:
    """Consul answers errors as plain text, with the HTTP status."""
    status = _STATUS.get(type(exc).__name__, 500)
    return web.Response(status=status, text=f"{exc.message}\n", content_type="text/plain")


__all__ = ["ConsulKV", "KvWatch", "Mapping", "decode_value", "encode_value", "parse_wait"]
