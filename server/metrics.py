"""Prometheus metrics of one server (its own registry, so servers in one process do not collide).

Counters are incremented by the streams and the admin service; gauges read
live state (streams, staleness, revision, re-lists) when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from confmesh.keys import Scope


@dataclass(frozen=True)
class StreamCounters:
    pushed: Any
    acks: Any
    nacks: Any


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ["environment", "service"]
        self.pushed = Counter(
            "confmesh_snapshots_pushed", "Snapshots sent on Watch streams", labels, registry=r
        )
        self.acks = Counter("confmesh_acks", "Snapshots acknowledged by clients", labels, registry=r)
        self.nacks = Counter("confmesh_nacks", "Snapshots rejected by clients", labels, registry=r)
        self.propagation = Histogram(
            "confmesh_propagation_seconds",
            "From the server seeing a change in etcd to sending it on a stream",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.writes = Histogram(
            "confmesh_write_seconds", "AdminService write latency", ["method", "outcome"], registry=r
        )
        self.etcd_errors = Counter("confmesh_etcd_errors", "etcd connection losses", registry=r)
        self._gauges: list[Gauge] = []
        self._server: Any = None

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        g = Gauge(name, doc, registry=self.registry)
        g.set_function(read)
        self._gauges.append(g)

    def for_stream(self, scope: Scope) -> StreamCounters:
        """The labelled counters of one scope, resolved once per stream (cheap per push)."""
        labels = (scope.environment, scope.service)
        return StreamCounters(
            self.pushed.labels(*labels), self.acks.labels(*labels), self.nacks.labels(*labels)
        )

    def observe_write(self, method: str, started: float, ok: bool) -> None:
        self.writes.labels(method, "ok" if ok else "error").observe(time.perf_counter() - started)

    def serve(self, listen: str) -> int:
        """Expose /metrics over HTTP on HOST:PORT (port 0: any free port); returns the port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
