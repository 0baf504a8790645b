"""What the Watch service tells the rest of the server about its streams, as go-control-plane's
``Callbacks`` do: one protocol, and the ledger, metrics and flag usage as its implementations.

The Watch service calls every callback it was built with, in order, on the event loop; a
callback must be quick and must not raise (they update in-memory state only).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from confmesh.keys import Scope
from confmesh.server.ledger import Ledger
from confmesh.server.metrics import Metrics
from confmesh.server.usage import FlagUsageStore


@dataclass(frozen=True)
class StreamOpened:
    id: int
    scope: Scope
    instance_id: str
    peer: str
    labels: Mapping[str, str]
    known_version: int
    known_hash: str
    subscribed_at: float


class StreamCallbacks(Protocol):
    def opened(self, stream: StreamOpened) -> None: ...
    def sent(self, stream: StreamOpened, version: int, resolved_at: float) -> None: ...
    def acked(self, stream: StreamOpened, version: int, hash_: str) -> None: ...
    def nacked(
        self, stream: StreamOpened, version: int, hash_: str, error: str, paths: list[str]
    ) -> None: ...
    def reported(self, stream: StreamOpened) -> None: ...
    def usage(self, stream: StreamOpened, counts: Iterable[tuple[str, str, int]]) -> None: ...
    def closed(self, stream: StreamOpened) -> None: ...


class NoCallbacks:
    """Every callback, doing nothing: implementations override what they need."""

    def opened(self, stream: StreamOpened) -> None:
        pass

    def sent(self, stream: StreamOpened, version: int, resolved_at: float) -> None:
        pass

    def acked(self, stream: StreamOpened, version: int, hash_: str) -> None:
        pass

    def nacked(self, stream: StreamOpened, version: int, hash_: str, error: str, paths: list[str]) -> None:
        pass

    def reported(self, stream: StreamOpened) -> None:
        pass

    def usage(self, stream: StreamOpened, counts: Iterable[tuple[str, str, int]]) -> None:
        pass

    def closed(self, stream: StreamOpened) -> None:
        pass


class LedgerCallbacks(NoCallbacks):
    """Which version every instance runs, and why it rejected the others (`status`, rollouts)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def opened(self, stream: StreamOpened) -> None:
        self.ledger.connect(
            stream.id, instance_id=stream.instance_id, scope=stream.scope, peer=stream.peer,
            labels=dict(stream.labels), known_version=stream.known_version, known_hash=stream.known_hash,
        )  # fmt: skip

    def sent(self, stream: StreamOpened, version: int, resolved_at: float) -> None:
        self.ledger.sent(stream.id, version)

    def acked(self, stream: StreamOpened, version: int, hash_: str) -> None:
        self.ledger.ack(stream.id, version, hash_)

    def nacked(self, stream: StreamOpened, version: int, hash_: str, error: str, paths: list[str]) -> None:
        self.ledger.nack(stream.id, version, hash_, error, paths)

    def reported(self, stream: StreamOpened) -> None:
        self.ledger.seen(stream.id)

    def closed(self, stream: StreamOpened) -> None:
        self.ledger.disconnect(stream.id)


class MetricsCallbacks(NoCallbacks):
    """Pushes, ACKs and NACKs per scope, and the propagation latency of changes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def sent(self, stream: StreamOpened, version: int, resolved_at: float) -> None:
        self.metrics.for_stream(stream.scope).pushed += 1
        if resolved_at >= stream.subscribed_at:  # a change seen while subscribed
            self.metrics.propagation.observe(max(0.0, time.time() - resolved_at))

    def acked(self, stream: StreamOpened, version: int, hash_: str) -> None:
        self.metrics.for_stream(stream.scope).acks += 1

    def nacked(self, stream: StreamOpened, version: int, hash_: str, error: str, paths: list[str]) -> None:
        self.metrics.for_stream(stream.scope).nacks += 1


class UsageCallbacks(NoCallbacks):
    """Flag evaluation counts per environment (`flags stale`, the flag-age p95)."""

    def __init__(self, usage: FlagUsageStore) -> None:
        self.store = usage

    def usage(self, stream: StreamOpened, counts: Iterable[tuple[str, str, int]]) -> None:
        self.store.record(stream.scope.environment, counts, time.time())


__all__ = [
    "LedgerCallbacks",
    "MetricsCallbacks",
    "NoCallbacks",
    "StreamCallbacks",
    "StreamOpened",
    "UsageCallbacks",
]
