"""The etcd adapter: etcd3aio for unary calls, our own Watch loop.

etcd3aio's watch iterator reconnects by itself and resumes from the last
response header's revision + 1, which skips events when a connection drops
while etcd is still replaying history (see docs/design.md). So the watch here
is a single raw stream that ends on any error; ``EtcdSource`` decides how to
resume. All etcd3aio and grpc errors become confmesh errors at this edge.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
from etcd3aio import Etcd3Client

# etcd3aio's own message classes, so the Compare/RequestOp we build are the
# very types its KV service accepts (a second import path would clash).
from etcd3aio._protobuf import rpc_pb2, rpc_pb2_grpc  # type: ignore[attr-defined]
from etcd3aio.connections import ConnectionManager
from etcd3aio.errors import EtcdConnectionError, EtcdError, EtcdTransientError, EtcdUnauthenticatedError
from etcd3aio.kv import KVService, SortOrder, SortTarget, prefix_range_end

from confmesh.errors import ConfmeshError, FailedPrecondition, InvalidArgument, Unavailable
from confmesh.server.kv import Event, KeyValue, WatchBatch
from confmesh.tls import read_pem

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
# etcd's default --max-request-bytes: the largest request (a transaction with all its values) it takes.
DEFAULT_MAX_REQUEST_BYTES = 1572864
T = TypeVar("T")


class RevisionCompacted(FailedPrecondition):
    """etcd no longer keeps the revision asked for (it compacted its history)."""


class _PageTooLarge(Unavailable):
    """A range answer exceeded the channel's receive limit: read it in smaller pages."""


@dataclass(frozen=True)
class EtcdCredentials:
    """TLS (PEM paths) and user/password authentication for etcd; empty fields are unused."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    # The name etcd's certificate must carry (default: the first endpoint's host).
    server_name: str = ""
    user: str = ""
    password: str = field(default="", repr=False)

    def conn_args(self, endpoints: Sequence[str]) -> dict[str, Any]:
        if not self.ca:
            if self.cert or self.key:
                raise InvalidArgument("etcd client certificates need the etcd CA (--etcd-cacert) as well")
            return {}
        if bool(self.cert) != bool(self.key):
            raise InvalidArgument("an etcd client certificate needs both --etcd-cert and --etcd-key")
        return {
            "ca_cert": read_pem(self.ca, "etcd CA certificate"),
            "cert_key": read_pem(self.key, "etcd client key") if self.key else None,
            "cert_chain": read_pem(self.cert, "etcd client certificate") if self.cert else None,
            "tls_server_name": self.server_name or endpoints[0].rsplit(":", 1)[0],
        }


class Etcd:
    """A connection to an etcd cluster (one or more endpoints).

    With a user, it authenticates at connect and again every
    `token_refresh` seconds (etcd's simple tokens expire when idle), and
    right away after etcd rejects the token.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        credentials: EtcdCredentials | None = None,
        token_refresh: float = 60.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.endpoints = list(endpoints)
        self.max_request_bytes = max_request_bytes
        self.timeout = timeout
        self.credentials = credentials or EtcdCredentials()
        self.token_refresh = token_refresh
        self._conn_args = self.credentials.conn_args(self.endpoints)
        self._client = Etcd3Client(self.endpoints, rpc_max_attempts=2, **self._conn_args)
        self._watch_channel: grpc.aio.Channel | None = None
        self._token = ""
        self._refresher: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        await self._client.connect()
        self._watch_channel = ConnectionManager(self.endpoints).get_channel(**self._conn_args)
        if self.credentials.user:
            await self.authenticate()
            self._refresher = asyncio.create_task(self._refresh_token(), name="etcd-token-refresh")

    async def authenticate(self) -> None:
        assert self._client.auth is not None
        try:
            resp = await self._client.auth.authenticate(
                self.credentials.user, self.credentials.password, timeout=self.timeout
            )
        except (EtcdConnectionError, EtcdTransientError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        except (EtcdError, grpc.RpcError) as exc:
            raise Unavailable(
                f"etcd at {','.join(self.endpoints)} refused user {self.credentials.user!r}: {exc}"
            ) from exc
        self._token = resp.token
        self._client.set_token(resp.token)

    async def _refresh_token(self) -> None:
        while True:
            await asyncio.sleep(self.token_refresh)
            try:
                await self.authenticate()
            except Unavailable as exc:
                log.warning("%s", exc.message)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        await self._client.close()
        if self._watch_channel is not None:
            await self._watch_channel.close(None)
            self._watch_channel = None

    def _unavailable(self, exc: BaseException) -> ConfmeshError:
        if "request is too large" in str(exc):
            return self._too_large()
        if "required revision has been compacted" in str(exc):
            return RevisionCompacted(f"etcd compacted that revision: {exc}", code="compacted")
        if "larger than max" in str(exc):
            return _PageTooLarge(f"an etcd answer was larger than the receive limit: {exc}")
        if "too many operations in txn request" in str(exc):
            return InvalidArgument(
                "this change needs more operations than etcd allows in one transaction; split it, or raise "
                "etcd's --max-txn-ops (the embedded etcd allows 4096)",
                code="too_large",
            )
        return Unavailable(f"etcd at {','.join(self.endpoints)} is unreachable: {exc}")

    async def _rpc(self, call: Callable[[], Awaitable[T]]) -> T:
        """One unary call; errors become Unavailable, and a rejected token is renewed and retried once."""
        try:
            return await call()
        except (EtcdError, grpc.RpcError, TimeoutError) as exc:
            if not (self.credentials.user and _is_auth_failure(exc)):
                raise self._unavailable(exc) from exc
        await self.authenticate()
        try:
            return await call()
        except (EtcdError, grpc.RpcError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    async def list_prefix(self, prefix: str, revision: int = 0) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix` at one revision (default: the latest), paginated."""
        assert self._client.kv is not None
        end = prefix_range_end(prefix)
        start: bytes = prefix.encode()
        out: list[KeyValue] = []
        get = self._client.kv.get
        pages = _Pages()
        while True:
            try:
                resp = await self._rpc(functools.partial(
                    get, start, end, revision=revision, limit=pages.limit, timeout=self.timeout
                ))  # fmt: skip
            except _PageTooLarge:
                pages.shrink()
                continue
            pages.grow()
            if revision == 0:
                revision = resp.header.revision
                # Later pages are read at the first page's revision.
            out.extend(KeyValue(_key_text(kv.key), kv.value, kv.mod_revision) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return revision, out
            start = resp.kvs[-1].key + b"\x00"

    async def get(self, key: str) -> KeyValue | None:
        """One key as etcd holds it now (a linearizable read), or None."""
        assert self._client.kv is not None
        resp = await self._rpc(functools.partial(self._client.kv.get, key.encode(), timeout=self.timeout))
        for kv in resp.kvs:
            return KeyValue(_key_text(kv.key), kv.value, kv.mod_revision)
        return None

    async def grant_lease(self, ttl: int) -> int:
        assert self._client.lease is not None
        resp = await self._rpc(functools.partial(self._client.lease.grant, ttl, timeout=self.timeout))
        return int(resp.ID)

    async def keep_lease(self, lease_id: int) -> int:
        """Renew a lease once; its remaining TTL (0 or less: it has expired)."""
        assert self._client.lease is not None
        lease = self._client.lease

        async def once() -> int:
            async with asyncio.timeout(self.timeout):
                async for resp in lease.keep_alive(lease_id):
                    return int(resp.TTL)
            return 0

        return await self._rpc(once)

    async def revoke_lease(self, lease_id: int) -> None:
        assert self._client.lease is not None
        await self._rpc(functools.partial(self._client.lease.revoke, lease_id, timeout=self.timeout))

    @staticmethod
    def put_op_leased(key: str, value: bytes, lease_id: int) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(
            request_put=rpc_pb2.PutRequest(key=key.encode(), value=value, lease=lease_id)
        )

    async def newest_mod_revision(self, prefix: str, *, end: str = "") -> int:
        """The newest modification revision of any key under `prefix` (or in [prefix, end)); 0: no keys."""
        assert self._client.kv is not None
        get = self._client.kv.get
        range_end = end.encode() if end else prefix_range_end(prefix)
        resp = await self._rpc(functools.partial(
            get, prefix, range_end, limit=1, keys_only=True, sort_order=SortOrder.DESCEND,
            sort_target=SortTarget.MOD, timeout=self.timeout,
        ))  # fmt: skip
        return int(resp.kvs[0].mod_revision) if resp.kvs else 0

    async def newest_first(self, prefix: str, *, page: int = 200) -> AsyncIterator[KeyValue]:
        """Keys under `prefix` in descending key order, read a page at a time."""
        assert self._client.kv is not None
        get = self._client.kv.get
        end = prefix_range_end(prefix)
        revision = 0
        pages = _Pages(page)
        while True:
            try:
                resp = await self._rpc(functools.partial(
                    get, prefix, end, revision=revision, limit=pages.limit, sort_order=SortOrder.DESCEND,
                    sort_target=SortTarget.KEY, timeout=self.timeout,
                ))  # fmt: skip
            except _PageTooLarge:
                pages.shrink()
                continue
            pages.grow()
            revision = revision or resp.header.revision
            for kv in resp.kvs:
                yield KeyValue(_key_text(kv.key), kv.value, kv.mod_revision)
            if not resp.more or not resp.kvs:
                return
            end = resp.kvs[-1].key  # exclusive: continue below the last key seen

    async def txn(
        self, compare: Sequence[rpc_pb2.Compare], success: Sequence[rpc_pb2.RequestOp]
    ) -> rpc_pb2.TxnResponse:
        assert self._client.kv is not None
        size = rpc_pb2.TxnRequest(compare=compare, success=success).ByteSize()
        if size > self.max_request_bytes:
            raise InvalidArgument(
                f"this change is {size} bytes as one etcd transaction (its values and their audit record "
                f"with old and new values); etcd accepts at most {self.max_request_bytes} bytes per request "
                "(--etcd-max-request-bytes); split it into smaller changes",
                code="request_too_large",
            )
        kv = self._client.kv
        try:
            return await self._rpc(lambda: kv.txn(compare, success, timeout=self.timeout, max_attempts=1))
        except _PageTooLarge as exc:  # etcd's gRPC server refused the request's size itself
            raise self._too_large() from exc

    def _too_large(self) -> InvalidArgument:
        return InvalidArgument(
            f"this change is larger than etcd accepts in one request ({self.max_request_bytes} bytes, "
            "etcd's --max-request-bytes); split it into smaller changes",
            code="request_too_large",
        )

    # Transaction parts, so no module but this one speaks etcd3aio.

    @staticmethod
    def put_op(key: str, value: bytes | str) -> rpc_pb2.RequestOp:
        return KVService.txn_op_put(key, value)

    @staticmethod
    def delete_op(key: str, *, range_end: bytes | str | None = None) -> rpc_pb2.RequestOp:
        return KVService.txn_op_delete(key, range_end=range_end)

    @staticmethod
    def created(key: str, *, exists: bool) -> rpc_pb2.Compare:
        """A txn guard: `key` exists (``exists``) or does not."""
        result = rpc_pb2.Compare.GREATER if exists else rpc_pb2.Compare.EQUAL
        return rpc_pb2.Compare(
            result=result, target=rpc_pb2.Compare.CREATE, key=key.encode(), create_revision=0
        )

    @staticmethod
    def unchanged_since(key: str, revision: int, *, exact: bool = False) -> rpc_pb2.Compare:
        """A txn guard: `key` (exact) or every key under the prefix `key` is unmodified since `revision`."""
        return rpc_pb2.Compare(
            result=rpc_pb2.Compare.LESS,
            target=rpc_pb2.Compare.MOD,
            key=key.encode(),
            range_end=b"" if exact else prefix_range_end(key),
            mod_revision=revision + 1,
        )

    async def compact(self, revision: int) -> None:
        """Compact etcd's history up to `revision` (used by tests and operators)."""
        assert self._client.kv is not None
        kv = self._client.kv
        await self._rpc(lambda: kv.compact(revision, physical=True, timeout=self.timeout))

    async def watch(
        self, prefix: str, start_revision: int, *, progress_interval: float = 30.0
    ) -> AsyncGenerator[WatchBatch, None]:
        """One raw watch stream; raises Unavailable when the stream breaks.

        Every `progress_interval` seconds it asks etcd for a progress
        notification, so a healthy but quiet watch still shows signs of life.
        """
        assert self._watch_channel is not None
        stub = rpc_pb2_grpc.WatchStub(self._watch_channel)
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[rpc_pb2.WatchRequest]:
            yield rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(
                    key=prefix.encode(),
                    range_end=prefix_range_end(prefix),
                    start_revision=start_revision,
                    progress_notify=True,
                    # etcd splits an answer larger than its request limit; the parts are joined below.
                    fragment=True,
                )
            )
            while not stop.is_set():
                try:
                    async with asyncio.timeout(progress_interval):
                        await stop.wait()
                except TimeoutError:
                    yield rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())

        call = stub.Watch(requests(), metadata=(("token", self._token),) if self._token else None)
        try:
            parts: list[Event] = []
            async for resp in call:
                parts.extend(
                    Event(
                        deleted=ev.type == 1,
                        key=_key_text(ev.kv.key),
                        value=ev.kv.value,
                        mod_revision=ev.kv.mod_revision,
                    )
                    for ev in resp.events
                )
                if resp.fragment:
                    continue
                events, parts = tuple(parts), []
                yield WatchBatch(
                    events=events,
                    header_revision=resp.header.revision,
                    compact_revision=resp.compact_revision,
                    canceled=resp.canceled,
                    cancel_reason=resp.cancel_reason,
                )
            raise Unavailable("etcd closed the watch stream")
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from exc
        finally:
            stop.set()
            call.cancel()


def _key_text(raw: bytes) -> str:
    """A key as text, losslessly: bytes that are not UTF-8 (an out-of-band write) become surrogates, which
    the store refuses as one unusable key instead of failing the whole list or watch."""
    return raw.decode(errors="surrogateescape")


def _is_auth_failure(exc: BaseException) -> bool:
    if isinstance(exc, EtcdUnauthenticatedError):
        return True
    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


class _Pages:
    """A range read's page size in keys: etcd cannot bound a page in bytes, so a page the channel
    refuses as too large is read again at half the size (one key always fits: etcd takes no
    larger value than its request limit), and the size grows back after pages that fit."""

    def __init__(self, limit: int = PAGE_SIZE) -> None:
        self.most = limit
        self.limit = limit

    def shrink(self) -> None:
        if self.limit == 1:
            raise Unavailable("one etcd key is larger than the receive limit")
        self.limit = max(1, self.limit // 2)

    def grow(self) -> None:
        self.limit = min(self.most, self.limit * 2)
