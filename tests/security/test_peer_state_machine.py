"""Random sequences of peer messages on live Watch streams (hypothesis stateful test).

Streams subscribe with random instance ids and labels, then ACK (real and
made-up versions), NACK with errors and field paths of random sizes, report,
send usage and close, in any order. Throughout, the server holds a bounded
amount per instance, and another service's subscriber still gets every write
within a second.
"""

from __future__ import annotations

import asyncio
import gc
import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from confmesh.client import AdminClient, ConfigClient
from confmesh.server import ConfmeshServer, ServerSettings
from confmesh.server.limits import (
    MAX_FIELD_PATH,
    MAX_FIELD_PATHS,
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_NACK_ERROR,
)
from confmesh.v1 import config_pb2, config_pb2_grpc
from tests.conftest import EtcdHandle
from tests.helpers import eventually

pytestmark = pytest.mark.slow
PER_RECORD = MAX_NACK_ERROR + (MAX_FIELD_PATHS + 1) * MAX_FIELD_PATH + (MAX_LABELS + 1) * (
    MAX_LABEL_KEY + MAX_LABEL_VALUE
) + 1024  # fmt: skip
RSS_BOUND_MIB = 64


def rss_mib() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Background:
    """A confmesh server, a victim ConfigClient and an admin on an event loop of their own."""

    def __init__(self, etcd: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.admin, self.victim = self.run(self._start(etcd))

    @staticmethod
    async def _start(etcd: str) -> tuple[ConfmeshServer, AdminClient, ConfigClient]:
        prefix = f"/test-{uuid.uuid4().hex[:10]}"
        server = ConfmeshServer(ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd], prefix=prefix))
        await server.start()
        admin = AdminClient(server.address)
        await admin.put("x", 1, env="prod", service="orders")
        victim = ConfigClient(server.address, environment="prod", service="victim", start_from_defaults=True)
        await victim.__aenter__()
        return server, admin, victim

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.run(self.victim.__aexit__(None, None, None))
        self.run(self.admin.close())
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Stream:
    def __init__(self, channel: grpc.Channel, instance_id: str, labels: dict[str, str]) -> None:
        self.outbox: queue.Queue[config_pb2.WatchRequest | None] = queue.Queue()

        def requests() -> Iterator[config_pb2.WatchRequest]:
            while (msg := self.outbox.get()) is not None:
                yield msg

        self.outbox.put(config_pb2.WatchRequest(subscribe=config_pb2.Subscribe(
            environment="prod", service="orders", instance_id=instance_id, labels=labels
        )))  # fmt: skip
        self.responses = config_pb2_grpc.ConfigServiceStub(channel).Watch(requests(), timeout=600)
        self.snapshot = next(r for r in self.responses if r.WhichOneof("kind") == "snapshot").snapshot
        self.open = True

    def send(self, msg: config_pb2.WatchRequest) -> None:
        if self.open:
            self.outbox.put(msg)

    def close(self) -> None:
        self.open = False
        self.outbox.put(None)
        self.responses.cancel()


_background: Background | None = None


class PeerMessages(RuleBasedStateMachine):
    streams = Bundle("streams")

    def __init__(self) -> None:
        super().__init__()
        assert _background is not None
        self.bg = _background
        self.channel = grpc.insecure_channel(self.bg.server.address)
        self.opened: list[Stream] = []

    @rule(target=streams, instance=st.text(min_size=1, max_size=300).filter(lambda s: len(s) <= 253),
          labels=st.dictionaries(st.text(max_size=200), st.text(max_size=5000), max_size=40))  # fmt: skip
    def subscribe(self, instance: str, labels: dict[str, str]) -> Stream:
        stream = Stream(self.channel, instance, labels)
        self.opened.append(stream)
        return stream

    @rule(stream=streams, real=st.booleans(), version=st.integers(0, 2**40))
    def ack(self, stream: Stream, real: bool, version: int) -> None:
        snap = stream.snapshot
        ack = (
            config_pb2.Ack(version=snap.version, hash=snap.hash) if real else config_pb2.Ack(version=version)
        )
        stream.send(config_pb2.WatchRequest(ack=ack))
        if not real:
            stream.open = False  # the server ends a stream that ACKs what it never sent

    @rule(
        stream=streams, error=st.integers(0, 2_000_000), paths=st.integers(0, 300), width=st.integers(1, 2000)
    )
    def nack(self, stream: Stream, error: int, paths: int, width: int) -> None:
        snap = stream.snapshot
        stream.send(config_pb2.WatchRequest(nack=config_pb2.Nack(
            version=snap.version, hash=snap.hash, error="e" * error,
            field_errors=[config_pb2.FieldError(path="p" * width, message="m" * width) for _ in range(paths)],
        )))  # fmt: skip

    @rule(stream=streams, need_full=st.booleans())
    def report(self, stream: Stream, need_full: bool) -> None:
        snap = stream.snapshot
        report = config_pb2.Report(version=snap.version, hash=snap.hash, need_full=need_full)
        stream.send(config_pb2.WatchRequest(report=report))

    @rule(stream=streams, flags=st.integers(1, 50), variants=st.integers(1, 20))
    def usage(self, stream: Stream, flags: int, variants: int) -> None:
        counts = [config_pb2.FlagUsageCount(flag=f"f{f}", variant=f"{uuid.uuid4().hex}{v}", count=v)
                  for f in range(flags) for v in range(variants)]  # fmt: skip
        stream.send(config_pb2.WatchRequest(usage=config_pb2.FlagUsage(counts=counts)))

    @rule(stream=streams)
    def close(self, stream: Stream) -> None:
        stream.close()

    @invariant()
    def others_are_served_and_memory_is_bounded(self) -> None:
        bg = self.bg
        written = bg.run(bg.admin.put("tick", uuid.uuid4().hex, env="prod", service="victim")).revision

        bg.run(eventually(lambda: bg.victim.version >= written, timeout=1.0, interval=0.005))
        for record in bg.server.ledger.records():
            held = (
                len(record.last_nack.error) + sum(map(len, record.last_nack.field_paths))
                if record.last_nack
                else 0
            )
            held += sum(len(k) + len(v) for k, v in record.labels.items()) + len(record.instance_id)
            assert held <= PER_RECORD, held

    def teardown(self) -> None:
        for stream in self.opened:
            stream.close()
        self.channel.close()


def test_random_peer_messages_keep_the_server_bounded_and_serving(etcd: EtcdHandle) -> None:
    global _background
    _background = Background(etcd.endpoint)
    try:
        before = rss_mib()
        run = settings(max_examples=12, stateful_step_count=25, deadline=None)(PeerMessages)
        run.TestCase().runTest()
        growth = rss_mib() - before
        assert growth < RSS_BOUND_MIB, f"RSS grew {growth:.0f} MiB"
        assert len(_background.server.usage._tracks) <= _background.server.usage.max_flags
    finally:
        _background.stop()
        _background = None
