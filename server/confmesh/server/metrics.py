"""Prometheus metrics of one server (its own registry, so servers in one process do not collide).

Counters are incremented by the streams and the admin service; gauges read
live state (streams, staleness, revision, re-lists) when scraped. What every
stream counts on every push (pushes, ACKs, NACKs, propagation latency) is
kept in plain integers and turned into metrics only when scraped: at 10,000
streams the client library's locked counters cost more than the push.
"""

from __future__ import annotations

import bisect
import socket
import threading
import time
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from confmesh.keys import Scope
from confmesh.version import __version__

PROPAGATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class StreamCounters:
    """One scope's stream counts (shared by its streams; the event loop is single-threaded)."""

    __slots__ = ("acks", "nacks", "pushed")

    def __init__(self) -> None:
        self.pushed = self.acks = self.nacks = 0


class LatencyHistogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(PROPAGATION_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(PROPAGATION_BUCKETS, seconds)] += 1
        self.sum += seconds


class _StreamMetrics(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        labels = ["environment", "service"]
        families = {
            "pushed": CounterMetricFamily("confmesh_snapshots_pushed", "Snapshots sent on Watch streams",
                                          labels=labels),
            "acks": CounterMetricFamily("confmesh_acks", "Snapshots acknowledged by clients", labels=labels),
            "nacks": CounterMetricFamily("confmesh_nacks", "Snapshots rejected by clients", labels=labels),
        }  # fmt: skip
        for scope, counts in list(self.metrics.streams.items()):
            for name, family in families.items():
                family.add_metric([scope.environment, scope.service], getattr(counts, name))
        yield from families.values()
        histogram = self.metrics.propagation
        cumulative, buckets = 0, []
        for bound, count in zip((*PROPAGATION_BUCKETS, float("inf")), histogram.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        yield HistogramMetricFamily(
            "confmesh_propagation_seconds",
            "From the server seeing a change in etcd to sending it on a stream",
            buckets=buckets,
            sum_value=histogram.sum,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.streams: dict[Scope, StreamCounters] = {}
        self.propagation = LatencyHistogram()
        r.register(_StreamMetrics(self))
        self.writes = Histogram(
            "confmesh_write_seconds", "AdminService write latency", ["method", "outcome"], registry=r
        )
        self.etcd_errors = Counter("confmesh_etcd_errors", "etcd connection losses", registry=r)
        Info("confmesh_build", "The confmesh release this server runs", registry=r).info(
            {"version": __version__}
        )
        self._gauges: list[Gauge] = []
        self._server: Any = None

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        g = Gauge(name, doc, registry=self.registry)
        g.set_function(read)
        self._gauges.append(g)

    def for_stream(self, scope: Scope) -> StreamCounters:
        """The counters of one scope, looked up once per stream (cheap per push)."""
        counters = self.streams.get(scope)
        if counters is None:
            counters = self.streams[scope] = StreamCounters()
        return counters

    def observe_write(self, method: str, started: float, ok: bool) -> None:
        self.writes.labels(method, "ok" if ok else "error").observe(time.perf_counter() - started)

    def serve(self, listen: str) -> int:
        """Expose /metrics over HTTP on HOST:PORT (port 0: any free port); returns the port.

        Only ``/metrics`` answers; every other path is a 404, so a probe or a typo cannot mistake
        this listener for something else.
        """
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        server = make_server(
            host,
            int(port),
            _only_metrics(make_wsgi_app(self.registry)),
            server_class=_ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        threading.Thread(target=server.serve_forever, name="confmesh-metrics", daemon=True).start()
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _only_metrics(app: Any) -> Any:
    def only(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/metrics":
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: confmesh serves metrics at /metrics\n"]

    return only


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a stderr line each."""
