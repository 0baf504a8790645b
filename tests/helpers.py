"""Small helpers for integration tests: raw Watch streams and polling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from confmesh.v1 import config_pb2, config_pb2_grpc


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll `check` until it returns truthy (or stops raising AssertionError)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if check():
                return
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class RawWatch:
    """A hand-driven Watch stream, for protocol-level tests."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = config_pb2_grpc.ConfigServiceStub(self.channel)
        self.outbox: asyncio.Queue[config_pb2.WatchRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[config_pb2.WatchRequest]:
            while True:
                msg = await self.outbox.get()
                if msg is None:
                    return
                yield msg

        self.call = self.stub.Watch(requests())

    def send(self, msg: config_pb2.WatchRequest) -> None:
        self.outbox.put_nowait(msg)

    def subscribe(
        self,
        env: str,
        service: str,
        *,
        version: int = 0,
        hash_: str = "",
        instance_id: str = "raw",
        accept_delta: bool = False,
    ) -> None:
        self.send(
            config_pb2.WatchRequest(
                subscribe=config_pb2.Subscribe(
                    environment=env,
                    service=service,
                    known_version=version,
                    known_hash=hash_,
                    instance_id=instance_id,
                    accept_delta=accept_delta,
                )
            )
        )

    async def next_snapshot(self, timeout: float = 5.0) -> config_pb2.Snapshot:
        async with asyncio.timeout(timeout):
            while True:
                resp = await self.call.read()
                if resp is grpc.aio.EOF:
                    raise AssertionError("stream ended")
                if resp.WhichOneof("kind") == "snapshot":
                    return resp.snapshot

    async def next_message(self, timeout: float = 5.0) -> config_pb2.WatchResponse:
        async with asyncio.timeout(timeout):
            resp = await self.call.read()
        if resp is grpc.aio.EOF:
            raise AssertionError("stream ended")
        return resp

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()
