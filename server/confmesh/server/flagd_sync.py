"""flagd's sync protocol (``flagd.sync.v1.FlagSyncService``): an environment's flags for flagd's providers.

flagd's in-process providers (Go, Java, JS, .NET, Python, Rust) and flagd
itself evaluate locally from this stream. The environment comes from the
``flagd-selector`` header (or the request's ``selector``): ``prod``,
``flagSetId=prod`` or ``environment=prod``, alone or among other
``key=value`` pairs. The flags are sent in flagd's schema (what ``confmesh
flags export`` writes), first whole, then again whenever they change: a
flagd stream is always a full document. Flags that do not translate exactly
(prerequisites, splits, Unleash strategies) are left out and logged; the
provider answers FLAG_NOT_FOUND for them.

Access is the Watch's: the caller must be allowed to read the environment's
flags (``Grant.can_read_flags``); open streams end when a policy reload or a
token revocation takes that away. Each stream holds at most the document it
is about to send, so a slow reader costs one document and delays no one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc.aio
from google.protobuf import struct_pb2
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from confmesh import errors
from confmesh.flags.flagd import export_flagd
from confmesh.flags.model import parse_flag_set
from confmesh.keys import Layer, check_name
from confmesh.server.access import Access, Caller
from confmesh.server.config_service import abort
from confmesh.server.known_names import KnownNames
from confmesh.server.limits import Throttled
from confmesh.server.serving import ServingState
from confmesh.server.store import ConfigStore

log = logging.getLogger("confmesh.flagd_sync")

SELECTOR_HEADER = "flagd-selector"
SELECTOR_KEYS = ("flagSetId", "environment", "env")


def selected_environment(selector: str) -> str:
    """The environment a flagd selector names; InvalidArgument when it names none."""
    text = selector.strip()
    if not text:
        raise errors.InvalidArgument(
            "name the environment in the flagd-selector header (or the request's selector), "
            "e.g. 'flagSetId=prod'",
            code="no_selector",
            field="selector",
        )
    if "=" not in text:
        return check_name(text, "environment")
    pairs = dict(part.strip().partition("=")[::2] for part in text.split(",") if part.strip())
    for key in SELECTOR_KEYS:
        if pairs.get(key):
            return check_name(pairs[key].strip(), "environment")
    raise errors.InvalidArgument(
        f"the selector {text[:200]!r} names no environment: use flagSetId=<environment>",
        code="no_selector",
        field="selector",
    )


class _Stream:
    __slots__ = ("caller", "environment", "error", "wakeup")

    def __init__(self, environment: str, caller: Caller) -> None:
        self.environment = environment
        self.caller = caller
        self.wakeup = asyncio.Event()
        self.error: errors.ConfmeshError | None = None

    def fail(self, exc: errors.ConfmeshError) -> None:
        self.error = exc
        self.wakeup.set()


class FlagdSyncService(sync_pb2_grpc.FlagSyncServiceServicer):
    def __init__(
        self, store: ConfigStore, source: ServingState, access: Access, *, sync_timeout: float = 10.0
    ) -> None:
        self.store = store
        self.source = source
        self.access = access
        self.names = KnownNames(store)
        self.sync_timeout = sync_timeout
        self._streams: dict[str, set[_Stream]] = {}
        # environment -> (flags layer revision, flagd document): exported once per change.
        self._documents: dict[str, tuple[int, str]] = {}
        self.throttled = Throttled(log)

    # -- what the streams are sent ----------------------------------------------------------------

    def document(self, environment: str) -> str:
        layer = Layer.flags(environment)
        revision = self.store.layer_revision(layer)
        cached = self._documents.get(environment)
        if cached is not None and cached[0] == revision:
            return cached[1]
        definitions = self.store.entries(layer)
        flag_set = parse_flag_set(
            {k: {"key": k, **v} if isinstance(v, dict) else v for k, v in definitions.items()}
        )
        document, left_out = export_flagd(flag_set)
        document["metadata"] = {"flagSetId": environment, "version": revision}
        for key, why in left_out.items():
            self.throttled.log(
                logging.INFO, ("left-out", environment, key),
                "flagd sync of %s leaves out flag %s: %s", environment, key, why,
            )  # fmt: skip
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if len(self._documents) > 10_000:
            self._documents.clear()
        self._documents[environment] = (revision, text)
        return text

    def notify(self, environments: Iterable[str]) -> None:
        """The flags of `environments` changed: wake their streams."""
        for environment in environments:
            for stream in self._streams.get(environment, ()):
                stream.wakeup.set()

    def recheck_access(self) -> None:
        """After a policy reload or a token change: end the streams whose callers lost the grant."""
        if not self.access.enforcing:
            return
        for streams in self._streams.values():
            for stream in streams:
                caller = self.access.still_valid(stream.caller)
                if (
                    caller is None
                    or caller.grant is None
                    or not caller.grant.can_read_flags(stream.environment)
                ):
                    stream.fail(errors.PermissionDenied(
                        f"{stream.caller.identity} may no longer read the flags of {stream.environment}",
                        code="denied",
                    ))  # fmt: skip
                else:
                    stream.caller = caller

    def drain(self) -> None:
        for streams in self._streams.values():
            for stream in streams:
                stream.fail(errors.Unavailable("server is shutting down; reconnect", code="draining"))

    def count(self) -> int:
        return sum(len(s) for s in self._streams.values())

    # -- the RPCs ---------------------------------------------------------------------------------

    async def _authorize(
        self, selector: str, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> tuple[str, Caller]:
        """The selected environment and the caller, once it may read that environment's flags."""
        header = dict(context.invocation_metadata() or ()).get(SELECTOR_HEADER)
        environment = selected_environment(header if isinstance(header, str) and header else selector)
        caller = self.access.identify(context)
        self.access.require(
            caller, lambda g: g.can_read_flags(environment), f"read the flags of {environment}"
        )
        if not await self.source.wait_for_revision(0, self.sync_timeout) and not self.source.synced:
            raise errors.Unavailable(f"server has not synced with etcd yet: {self.source.stale_reason}")
        known = self.names.check(environment)
        if not known.environment_known:  # a typo in a selector must not look like an empty flag set
            if method != "SyncFlags":
                raise errors.NotFound(known.message, code="unknown_environment", field="selector")
            # A stream may legitimately open before its environment's first flag is written (and flagd
            # has no way to carry a warning): it is served, and the server says so in its log.
            self.throttled.log(
                logging.WARNING, ("unknown", environment, caller.identity),
                "flagd sync from %s for %s", caller.describe(), known.message,
            )  # fmt: skip
        return environment, caller

    async def _guarded(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, body: Callable[[], Any]
    ) -> Any:
        try:
            return await body()
        except errors.ConfmeshError as exc:
            await self.access.audit_denial(exc, context, method)
            await abort(context, exc)
            raise

    async def FetchAllFlags(
        self, request: sync_pb2.FetchAllFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.FetchAllFlagsResponse:
        async def body() -> sync_pb2.FetchAllFlagsResponse:
            environment, _ = await self._authorize(request.selector, context, "FetchAllFlags")
            return sync_pb2.FetchAllFlagsResponse(flag_configuration=self.document(environment))

        result: sync_pb2.FetchAllFlagsResponse = await self._guarded(context, "FetchAllFlags", body)
        return result

    async def GetMetadata(
        self, request: sync_pb2.GetMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> sync_pb2.GetMetadataResponse:
        """Empty (the providers merge this metadata into every evaluation context), but not to anyone:
        with a selector, the caller must read that environment's flags; without, be someone."""

        async def body() -> sync_pb2.GetMetadataResponse:
            header = dict(context.invocation_metadata() or ()).get(SELECTOR_HEADER)
            if isinstance(header, str) and header:
                await self._authorize(header, context, "GetMetadata")
            else:
                caller = self.access.identify(context)
                self.access.require(caller, lambda g: True, "read flagd sync metadata")
            # Present but empty: the providers read the field, and merge its keys into contexts.
            return sync_pb2.GetMetadataResponse(metadata=struct_pb2.Struct())

        result: sync_pb2.GetMetadataResponse = await self._guarded(context, "GetMetadata", body)
        return result

    async def SyncFlags(
        self, request: sync_pb2.SyncFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[sync_pb2.SyncFlagsResponse]:
        try:
            environment, caller = await self._authorize(request.selector, context, "SyncFlags")
        except errors.ConfmeshError as exc:
            await self.access.audit_denial(exc, context, "SyncFlags")
            await abort(context, exc)
            return
        stream = _Stream(environment, caller)
        self._streams.setdefault(environment, set()).add(stream)
        try:
            sent = None
            while True:
                stream.wakeup.clear()
                if stream.error is not None:
                    await abort(context, stream.error)
                    return
                document = self.document(environment)
                if document != sent:
                    yield sync_pb2.SyncFlagsResponse(flag_configuration=document)
                    sent = document
                await stream.wakeup.wait()
        finally:
            streams = self._streams.get(environment)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._streams[environment]
