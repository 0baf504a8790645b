"""Small helpers for integration tests: raw Watch streams, polling, servers as processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from confmesh.digest import SCHEMES
from confmesh.server.embedded_etcd import free_port
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
        hash_schemes: Sequence[str] = SCHEMES,
    ) -> None:
        """Subscribe; ``hash_schemes=()`` is a client from before the scheme was chosen (leafsum256)."""
        self.send(
            config_pb2.WatchRequest(
                subscribe=config_pb2.Subscribe(
                    environment=env,
                    service=service,
                    known_version=version,
                    known_hash=hash_,
                    instance_id=instance_id,
                    accept_delta=accept_delta,
                    hash_schemes=hash_schemes,
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


class _Process:
    """A confmesh process the test started; `stop` sends SIGTERM and waits (20 s, then kills)."""

    proc: asyncio.subprocess.Process | None = None

    async def stop(self) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


class ServerProcess(_Process):
    """`confmesh serve` in its own process, on a port picked at run time."""

    def __init__(self, etcd_endpoints: str, prefix: str, *extra: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "confmesh.cli",
            "serve",
            "--listen",
            self.address,
            "--etcd",
            etcd_endpoints,
            "--prefix",
            prefix,
            "--heartbeat",
            "1",
            *extra,
        ]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ServerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line.startswith(b"confmesh serving on"), line
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


class RelayProcess(_Process):
    """`confmesh relay` in its own process, on a port picked at run time."""

    def __init__(self, upstream: str, data_dir: Path, relay_id: str, prefix: str, *extra: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.relay_id = relay_id
        self.log = data_dir.parent / f"{relay_id}.log"
        self.args = [sys.executable, "-m", "confmesh.cli", "relay", "--upstream", upstream]
        self.args += ["--listen", self.address, "--data-dir", str(data_dir), "--relay-id", relay_id]
        self.args += ["--prefix", prefix, "--heartbeat", "1", *extra]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> RelayProcess:
        log = self.log.open("ab")
        with log:
            self.proc = await asyncio.create_subprocess_exec(*self.args, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line.startswith(b"confmesh relay"), (line, self.log.read_text()[-2000:])
        return self

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()


class TcpProxy:
    """A loopback TCP proxy to `target` that can cut every connection and refuse new ones (`cut`),
    then accept again (`mend`): a network partition between two processes."""

    def __init__(self, target: str) -> None:
        self.host, _, port = target.rpartition(":")
        self.target_port = int(port)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        self._links |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._links -= {writer, up_writer}

    async def mend(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()
