"""The etcd adapter: etcd3aio for unary calls, our own Watch loop.

etcd3aio's watch iterator reconnects by itself and resumes from the last
response header's revision + 1, which skips events when a connection drops
while etcd is still replaying history (see docs/design.md). So the watch here
is a single raw stream that ends on any error; ``EtcdSource`` decides how to
resume. All etcd3aio and grpc errors become confmesh errors at this edge.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
from etcd3aio import Etcd3Client

# etcd3aio's own message classes, so the Compare/RequestOp we build are the
# very types its KV service accepts (a second import path would clash).
from etcd3aio._protobuf import rpc_pb2, rpc_pb2_grpc  # type: ignore[attr-defined]
from etcd3aio.connections import ConnectionManager
from etcd3aio.errors import EtcdError
from etcd3aio.kv import SortOrder, SortTarget, prefix_range_end

from confmesh.errors import Unavailable

PAGE_SIZE = 1000


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class Event:
    deleted: bool
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class WatchBatch:
    events: tuple[Event, ...]
    header_revision: int
    compact_revision: int = 0
    canceled: bool = False
    cancel_reason: str = ""


class Etcd:
    """A connection to an etcd cluster (one or more endpoints)."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._client = Etcd3Client(self.endpoints, rpc_max_attempts=2)
        self._watch_channel: grpc.aio.Channel | None = None

    async def connect(self) -> None:
        await self._client.connect()
        self._watch_channel = ConnectionManager(self.endpoints).get_channel()

    async def close(self) -> None:
        await self._client.close()
        if self._watch_channel is not None:
            await self._watch_channel.close(None)
            self._watch_channel = None

    def _unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"etcd at {','.join(self.endpoints)} is unreachable: {exc}")

    async def list_prefix(self, prefix: str, revision: int = 0) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix` at one revision (default: the latest), paginated."""
        assert self._client.kv is not None
        end = prefix_range_end(prefix)
        start: bytes = prefix.encode()
        out: list[KeyValue] = []
        try:
            while True:
                resp = await self._client.kv.get(
                    start, end, revision=revision, limit=PAGE_SIZE, timeout=self.timeout
                )
                if revision == 0:
                    revision = resp.header.revision
                    # Later pages are read at the first page's revision.
                out.extend(KeyValue(kv.key.decode(), kv.value, kv.mod_revision) for kv in resp.kvs)
                if not resp.more or not resp.kvs:
                    return revision, out
                start = resp.kvs[-1].key + b"\x00"
        except (EtcdError, grpc.RpcError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    async def newest_mod_revision(self, prefix: str) -> int:
        """The newest modification revision of any key under `prefix` (0: no keys): one tiny read."""
        assert self._client.kv is not None
        try:
            resp = await self._client.kv.get(
                prefix, prefix_range_end(prefix), limit=1, keys_only=True, sort_order=SortOrder.DESCEND,
                sort_target=SortTarget.MOD, timeout=self.timeout,
            )  # fmt: skip
        except (EtcdError, grpc.RpcError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        return int(resp.kvs[0].mod_revision) if resp.kvs else 0

    async def newest_first(self, prefix: str, *, page: int = 200) -> AsyncIterator[KeyValue]:
        """Keys under `prefix` in descending key order, read a page at a time."""
        assert self._client.kv is not None
        end = prefix_range_end(prefix)
        revision = 0
        while True:
            try:
                resp = await self._client.kv.get(
                    prefix, end, revision=revision, limit=page, sort_order=SortOrder.DESCEND,
                    sort_target=SortTarget.KEY, timeout=self.timeout,
                )  # fmt: skip
            except (EtcdError, grpc.RpcError, TimeoutError) as exc:
                raise self._unavailable(exc) from exc
            revision = revision or resp.header.revision
            for kv in resp.kvs:
                yield KeyValue(kv.key.decode(), kv.value, kv.mod_revision)
            if not resp.more or not resp.kvs:
                return
            end = resp.kvs[-1].key  # exclusive: continue below the last key seen

    async def txn(
        self, compare: Sequence[rpc_pb2.Compare], success: Sequence[rpc_pb2.RequestOp]
    ) -> rpc_pb2.TxnResponse:
        assert self._client.kv is not None
        try:
            return await self._client.kv.txn(compare, success, timeout=self.timeout, max_attempts=1)
        except (EtcdError, grpc.RpcError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc

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
        try:
            await self._client.kv.compact(revision, physical=True, timeout=self.timeout)
        except (EtcdError, grpc.RpcError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc

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
                )
            )
            while not stop.is_set():
                try:
                    async with asyncio.timeout(progress_interval):
                        await stop.wait()
                except TimeoutError:
                    yield rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())

        call = stub.Watch(requests())
        try:
            async for resp in call:
                yield WatchBatch(
                    events=tuple(
                        Event(
                            deleted=ev.type == 1,
                            key=ev.kv.key.decode(),
                            value=ev.kv.value,
                            mod_revision=ev.kv.mod_revision,
                        )
                        for ev in resp.events
                    ),
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
