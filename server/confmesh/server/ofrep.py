"""OFREP, the OpenFeature Remote Evaluation Protocol: flags evaluated on the server, over HTTP.

Any OFREP provider (JS web and server, Go, Python, .NET, Java, Kotlin, Rust,
Swift) evaluates confmesh flags with no confmesh SDK. The environment is the
base URL's path, ``http://host:port/environments/<env>``, to which providers
append ``/ofrep/v1/...``:

* ``POST …/ofrep/v1/evaluate/flags/{key}``: one flag, ``{"context": {...}}`` in.
* ``POST …/ofrep/v1/evaluate/flags``: every flag, with an ``ETag`` over the
  answer; ``If-None-Match`` with it gives 304 while nothing changed.
* ``GET …/ofrep/v1/configuration``: polling, supported types.

Evaluation is the SDK's (``FlagEvaluator``), so OFREP, ``client.flags`` and
the OpenFeature provider give the same answer for the same context. A flag
that serves the caller's default carries no ``value`` (OFREP's code-default
flag). Callers identify with ``Authorization: Bearer <token>`` or
``X-API-Key: <token>`` (confmesh tokens) and need the Watch's right to read
the environment's flags.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from confmesh import errors
from confmesh.flags import FlagEvaluator, reparse_flag_set
from confmesh.flags.budget import BudgetExceeded, check
from confmesh.flags.details import ErrorCode, EvaluationDetails, Reason
from confmesh.flags.model import FlagSet, keyed
from confmesh.keys import Layer, check_name
from confmesh.merge import loads_json
from confmesh.server.access import ANONYMOUS, Access, Caller
from confmesh.server.control_work import ControlWork
from confmesh.server.known_names import KnownNames
from confmesh.server.store import ConfigStore

log = logging.getLogger("confmesh.ofrep")

MAX_BODY = 64 * 1024  # bytes of one request: a context, not a document
MAX_CONTEXT_DEPTH = 16
# Set on every answer while the server (or relay) serves what it last had: why.
STALE_HEADER = "Confmesh-Stale"
OFREP_CODES = {"PARSE_ERROR", "INVALID_CONTEXT", "TARGETING_KEY_MISSING"}  # parse_context's refusals
# What OpenFeature's reason enums know; confmesh's own reasons map onto the nearest.
_REASONS = {Reason.PREREQUISITE_FAILED: "DISABLED", Reason.PROPAGATED: "STATIC"}
_GETTERS = {"boolean": "boolean", "string": "string", "number": "float", "object": "object"}
CALLER_DEFAULT = object()
ENV_PREFIX = "/environments/{environment}/ofrep/v1"


@dataclass
class _Flags:
    revision: int
    raw: dict[str, Any]
    parsed: FlagSet
    evaluator: FlagEvaluator


class OfrepEvaluators:
    """One FlagEvaluator per environment, rebuilt (incrementally) when its flags change.

    ``inputs`` runs on the event loop (it reads the store); ``evaluator`` runs on the control-work
    thread, which alone touches the cache.
    """

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self._by_env: dict[str, _Flags] = {}
        self._failed: dict[str, tuple[int, str]] = {}  # environment -> (revision, why its flags fail)

    def inputs(self, environment: str) -> tuple[int, dict[str, Any] | None]:
        """The environment's flag revision, and a copy of its flags unless the cache has that revision."""
        layer = Layer.flags(environment)
        revision = self.store.layer_revision(layer)
        cached = self._by_env.get(environment)
        if cached is not None and cached.revision == revision:
            return revision, None
        return revision, {k: keyed(k, v) for k, v in self.store.entries(layer).items()}

    def evaluator(self, environment: str, revision: int, raw: dict[str, Any] | None) -> FlagEvaluator:
        """The environment's evaluator at `revision` (`raw`: its flags, None when the cache has them).

        Flags are parsed one by one (reusing the previous revision's unchanged ones), never as one
        validation call over the whole set: a single long call into pydantic-core holds the GIL, and
        the event loop with it, for its whole duration.
        """
        cached = self._by_env.get(environment)
        if cached is not None and (raw is None or cached.revision == revision):
            return cached.evaluator
        assert raw is not None
        failed = self._failed.get(environment)
        if failed is not None and failed[0] == revision:
            raise errors.InvalidArgument(failed[1], code="invalid_flag")
        before, parsed_before = (cached.raw, cached.parsed) if cached else ({}, _NO_FLAGS)
        try:
            parsed = reparse_flag_set(raw, before, parsed_before)
        except errors.InvalidArgument as exc:
            self._failed[environment] = (revision, exc.message)
            raise
        previous = cached.evaluator if cached else None
        evaluator = FlagEvaluator(parsed, version=revision, environment=environment, previous=previous)
        if len(self._by_env) > 10_000:
            self._by_env.clear()
        self._by_env[environment] = _Flags(revision, raw, parsed, evaluator)
        return evaluator

    def with_flag(
        self, environment: str, revision: int, raw: dict[str, Any] | None, key: str, definition: Any
    ) -> FlagEvaluator:
        """The environment's evaluator with flag `key` replaced by `definition` (the console's explain of
        an edit): only that flag is parsed and compiled."""
        base = self.evaluator(environment, revision, raw)
        current = self._by_env[environment]
        flags = {**current.raw, key: keyed(key, definition)}
        parsed = reparse_flag_set(flags, current.raw, current.parsed)
        return FlagEvaluator(parsed, version=revision, environment=environment, previous=base)


_NO_FLAGS = FlagSet(flags={})


def evaluate(evaluator: FlagEvaluator, key: str, context: Mapping[str, Any]) -> EvaluationDetails:
    """`key` evaluated as its own type; a value of `CALLER_DEFAULT` means the caller's default."""
    compiled = evaluator.compiled(key)
    getter = _GETTERS.get(compiled.type, "object") if compiled is not None else "object"
    return evaluator.details(key, CALLER_DEFAULT, context, getter)


def success(details: EvaluationDetails) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": details.flag_key,
        "reason": _REASONS.get(details.reason, str(details.reason)),
        "variant": details.variant if details.variant is not None else "",
        "metadata": dict(details.metadata),
    }
    if details.value is not CALLER_DEFAULT:
        body["value"] = details.value
    return body


def failure(details: EvaluationDetails) -> dict[str, Any]:
    return {
        "key": details.flag_key,
        "errorCode": str(details.error_code or ErrorCode.GENERAL),
        "errorDetails": details.error_message or "",
    }


def nests_within(value: Any, limit: int) -> bool:
    """Whether `value` nests no deeper than `limit`."""
    if limit < 0:
        return False
    if isinstance(value, dict):
        return all(nests_within(v, limit - 1) for v in value.values())
    if isinstance(value, list):
        return all(nests_within(v, limit - 1) for v in value)
    return True


def parse_context(raw: bytes) -> dict[str, Any]:
    """The evaluation context of a request body; InvalidArgument (code = OFREP's) when unusable."""
    if not raw.strip():
        return {}
    try:
        body = loads_json(raw, constants=False)
    except (ValueError, RecursionError) as exc:
        raise errors.InvalidArgument(f"the body is not JSON: {exc}", code="PARSE_ERROR") from None
    if not isinstance(body, dict):
        raise errors.InvalidArgument("the body must be a JSON object", code="PARSE_ERROR")
    context = body.get("context", {})
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise errors.InvalidArgument("context must be a JSON object", code="INVALID_CONTEXT")
    if not nests_within(context, MAX_CONTEXT_DEPTH):
        raise errors.InvalidArgument(
            f"context nests deeper than {MAX_CONTEXT_DEPTH} levels", code="INVALID_CONTEXT"
        )
    key = context.get("targetingKey")
    if key is not None and not isinstance(key, str):
        raise errors.InvalidArgument("context.targetingKey must be a string", code="INVALID_CONTEXT")
    return context


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _json(status: int, body: Any, **headers: str) -> web.Response:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return web.Response(status=status, text=text, content_type="application/json", headers=headers)


def caller_of(access: Access, request: web.Request) -> Caller:
    """The identity a request proves: a confmesh token as a bearer token or an API key."""
    header = request.headers.get("Authorization", "")
    api_key = request.headers.get("X-API-Key", "")
    if header:
        return access.identify_bearer(header)
    if api_key:
        return access.identify_bearer(f"Bearer {api_key}")
    return ANONYMOUS


class Ofrep:
    """The OFREP routes, on an aiohttp application."""

    def __init__(
        self,
        store: ConfigStore,
        access: Access,
        work: ControlWork,
        *,
        synced: Callable[[], bool],
        stale_reason: Callable[[], str] = str,
        poll_interval_ms: int = 1000,
    ) -> None:
        """`stale_reason`: why the answers may be old ("": they are not); sent as the
        ``Confmesh-Stale`` header, not in the body (OFREP providers merge metadata into contexts)."""
        self.access = access
        self.stale_reason = stale_reason
        self.work = work
        self.synced = synced
        self.evaluators = OfrepEvaluators(store)
        self.names = KnownNames(store)
        self.poll_interval_ms = poll_interval_ms

    def add_routes(self, app: web.Application) -> None:
        def marked(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
            async def run(request: web.Request) -> web.StreamResponse:
                response = await handler(request)
                reason = self.stale_reason()
                if reason:
                    response.headers[STALE_HEADER] = reason.encode("ascii", "replace").decode()[:512]
                return response

            return run

        app.router.add_post(f"{ENV_PREFIX}/evaluate/flags/{{key}}", marked(self.evaluate_one))
        app.router.add_post(f"{ENV_PREFIX}/evaluate/flags", marked(self.evaluate_all))
        app.router.add_get(f"{ENV_PREFIX}/configuration", marked(self.configuration))

    async def _authorize(self, request: web.Request, method: str) -> tuple[str, str] | web.Response:
        """The environment the request may read and who asks, or the response that refuses it."""
        try:
            environment = check_name(request.match_info["environment"], "environment")
            caller = caller_of(self.access, request)
            try:
                self.access.require(
                    caller, lambda g: g.can_read_flags(environment), f"read the flags of {environment}"
                )
            except errors.PermissionDenied as exc:
                await self.access.audit_caller_denial(exc, caller, method)
                raise
            if not self.synced():
                raise errors.Unavailable("the server has not synced with etcd yet")
        except errors.Unauthenticated as exc:
            return _json(
                401, {"errorDetails": exc.message}, **{"WWW-Authenticate": 'Bearer realm="confmesh"'}
            )
        except errors.PermissionDenied as exc:
            return _json(403, {"errorDetails": exc.message})
        except errors.Unavailable as exc:
            return _json(503, {"errorDetails": exc.message}, **{"Retry-After": "1"})
        except errors.InvalidArgument as exc:  # the environment in the path: no context involved
            return _json(400, {"errorCode": "GENERAL", "errorDetails": exc.message})
        known = self.names.check(environment)
        if not known.environment_known:  # a typo in a provider's base URL must not look like "no flags"
            code = "FLAG_NOT_FOUND" if "key" in request.match_info else "GENERAL"
            return _json(404, {**_key_of(request), "errorCode": code, "errorDetails": known.message})
        # Anonymous callers (no policy) share nothing with each other: each peer address is its own.
        who = caller.identity if caller is not ANONYMOUS else f"anonymous@{request.remote or '?'}"
        return environment, who

    async def _run(
        self,
        request: web.Request,
        who: str,
        environment: str,
        job: Callable[[FlagEvaluator, dict[str, Any]], Any],
        extra: dict[str, str],
    ) -> Any:
        """`job(evaluator, context)` on the control-work thread, or the response that refuses it.

        Admission comes first, before the body is read; parsing the context is part of the job, so the
        event loop only moves bytes.
        """
        try:
            with self.work.slot(who, "OFREP evaluation"):
                raw = await _body(request)
                revision, flags = self.evaluators.inputs(environment)

                def work() -> Any:
                    context = parse_context(raw)
                    return job(self.evaluators.evaluator(environment, revision, flags), context)

                return await self.work.execute(work)
        except errors.ResourceExhausted as exc:
            await self.work.refuse()
            return _json(429, {**extra, "errorDetails": exc.message}, **{"Retry-After": "1"})
        except web.HTTPRequestEntityTooLarge:
            return _json(
                413,
                {
                    **extra,
                    "errorCode": "INVALID_CONTEXT",
                    "errorDetails": f"the body exceeds {MAX_BODY} bytes",
                },
            )
        except BudgetExceeded as exc:
            return _json(400, {**extra, "errorCode": "GENERAL", "errorDetails": f"refused: {exc}"})
        except errors.InvalidArgument as exc:
            if exc.code in OFREP_CODES:  # the request's context
                return _json(400, {**extra, "errorCode": exc.code, "errorDetails": exc.message})
            # Flags written out of band that do not validate: what the Watch's clients would NACK.
            log.error("OFREP cannot evaluate the flags of %s: %s", environment, exc.message)
            return _json(500, {"errorDetails": f"the flags of {environment} do not validate: {exc.message}"})

    async def evaluate_one(self, request: web.Request) -> web.StreamResponse:
        authorized = await self._authorize(request, "OFREP evaluate")
        if isinstance(authorized, web.Response):
            return authorized
        environment, who = authorized
        key = request.match_info["key"]
        details = await self._run(
            request, who, environment, lambda ev, ctx: evaluate(ev, key, ctx), {"key": key}
        )
        if isinstance(details, web.Response):
            return details
        if details.error_code is None:
            return _json(200, success(details))
        status = 404 if details.error_code is ErrorCode.FLAG_NOT_FOUND else 400
        return _json(status, failure(details))

    async def evaluate_all(self, request: web.Request) -> web.StreamResponse:
        authorized = await self._authorize(request, "OFREP bulk evaluate")
        if isinstance(authorized, web.Response):
            return authorized
        environment, who = authorized

        def bulk(evaluator: FlagEvaluator, context: dict[str, Any]) -> bytes:
            flags = []
            for key in sorted(evaluator.keys()):
                check()  # one step per flag: a bulk answer is bounded like any evaluation
                details = evaluate(evaluator, key, context)
                flags.append(success(details) if details.error_code is None else failure(details))
            return json.dumps(
                {"flags": flags, "metadata": {"environment": environment, "version": evaluator.version}},
                ensure_ascii=False,
                separators=(",", ":"),
                sort_keys=True,
            ).encode()

        body = await self._run(request, who, environment, bulk, {})
        if isinstance(body, web.Response):
            return body
        etag = etag_of(body)
        if etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(status=200, body=body, content_type="application/json", headers={"ETag": etag})

    async def configuration(self, request: web.Request) -> web.StreamResponse:
        authorized = await self._authorize(request, "OFREP configuration")
        if isinstance(authorized, web.Response):
            return authorized
        return _json(
            200,
            {
                "name": "confmesh",
                "capabilities": {
                    "cacheInvalidation": {
                        "polling": {"enabled": True, "minPollingIntervalMs": self.poll_interval_ms}
                    },
                    "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float", "object"]},
                },
            },
        )


def _key_of(request: web.Request) -> dict[str, str]:
    key = request.match_info.get("key")
    return {"key": key} if key is not None else {}


async def _body(request: web.Request) -> bytes:
    body = await request.read()
    if len(body) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(body))
    return body


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compared as strong). ``*`` is no tag: it
    asks "does any representation exist", which a POST's evaluation answer never is (RFC 9110 13.1.2)."""
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}
