"""`confmesh relay`: a process with no etcd that serves the Watch API to the instances below it
(and Mirror to relays below it), fed by one stream to its upstream.

The same pipeline as a server's, with another source: ``RelaySource`` → store → ``SnapshotPlane``
→ ``ConfigService``. Instances are authenticated here with the relay's own policy file and denied
here; the relay's identity at its upstream bounds what it carries at all. It also serves flagd sync (flag
streams for flagd's in-process providers) and ``/metrics``. A relay serves no
AdminService: it cannot write, and `status` is asked of the root, which counts every instance
below every relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2_grpc

from confmesh.errors import StartupError
from confmesh.keys import KeyLayout, LayerKind
from confmesh.server.access import Access
from confmesh.server.app import grpc_server, http_tls, is_loopback, server_credentials
from confmesh.server.config_service import ConfigService, add_config_service
from confmesh.server.control_work import ControlWork
from confmesh.server.flagd_sync import FlagdSyncService
from confmesh.server.http_listener import HttpListener
from confmesh.server.journal import KeyJournal
from confmesh.server.known_names import KnownNames
from confmesh.server.ledger import Ledger
from confmesh.server.metrics import Metrics
from confmesh.server.mirror import RELAY_ID, MirrorService
from confmesh.server.ofrep import MAX_BODY, Ofrep
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import server_store
from confmesh.server.relay_source import RelaySource
from confmesh.server.relayed_fleet import LocalInstances, RelayedFleet
from confmesh.server.startup import DataDirLock, check_port_free, prepare_data_dir
from confmesh.server.store import StoreChange
from confmesh.server.stream_callbacks import LedgerCallbacks, MetricsCallbacks
from confmesh.tls import TLSConfig
from confmesh.v1 import relay_pb2_grpc
from confmesh.version import __version__

log = logging.getLogger(__name__)


@dataclass
class RelaySettings:
    upstream: str
    listen: str = "127.0.0.1:7171"
    data_dir: str = "confmesh-relay-data"
    relay_id: str = ""
    scopes: list[str] = field(default_factory=list)
    prefix: str = "/confmesh"
    # How this relay reaches its upstream.
    upstream_tls: TLSConfig | None = None
    token: str = ""
    # How instances below reach this relay.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    policy_file: str = ""
    heartbeat_interval: float = 15.0
    metrics_listen: str = ""
    # OFREP on HOST:PORT (TLS as the gRPC listener's).
    http_listen: str = ""
    report_interval: float = 1.0
    # How long a relay below that went away keeps its subtree in the view.
    gone_ttl: float = 30.0
    shutdown_grace: float = 5.0


class RelayServer:
    def __init__(self, settings: RelaySettings) -> None:
        self.settings = s = settings
        self.relay_id = s.relay_id or socket.gethostname().split(".")[0][:64]
        if not RELAY_ID.fullmatch(self.relay_id):
            raise StartupError(f"--relay-id {self.relay_id!r}: 1-64 characters of [A-Za-z0-9._-]")
        self.layout = KeyLayout(s.prefix)
        self.store = server_store(self.layout)
        self.store.journal = KeyJournal(self.layout)
        self.plane = SnapshotPlane(self.store)
        self.ledger = Ledger(server_id=self.relay_id)
        self.relayed = RelayedFleet(ttl=s.gone_ttl, server_id=self.relay_id)
        self.instances = LocalInstances(self.ledger, self.relayed)
        self.access = Access(dict, s.policy_file)
        self.health = health_aio.HealthServicer()
        self.source: RelaySource | None = None
        self.config_service: ConfigService | None = None
        self.mirror: MirrorService | None = None
        self.flagd_sync: FlagdSyncService | None = None
        self.metrics = Metrics()
        self.http: HttpListener | None = None
        self.http_port = 0
        self.metrics_port = 0
        self.plane.listen(self._on_store_change)
        self.port = 0
        self._lock: DataDirLock | None = None
        self._running = contextlib.AsyncExitStack()

    async def start(self) -> None:
        try:
            await self._start(self._running)
        except BaseException:
            await self._running.aclose()
            raise
        log.info("relay %s (version %s) serving on %s, upstream %s", self.relay_id, __version__,
                 self.address, self.settings.upstream)  # fmt: skip

    @property
    def address(self) -> str:
        host = self.settings.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
        return f"{host}:{self.port}"

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        check_port_free(s.listen, "cannot listen on")
        if s.metrics_listen:
            check_port_free(s.metrics_listen, "cannot serve metrics on")
        if s.http_listen:
            check_port_free(s.http_listen, "cannot serve HTTP on")
        data_dir = Path(s.data_dir)
        self._lock = prepare_data_dir(data_dir)
        stack.callback(self._lock.release)
        self.source = source = RelaySource(
            self.store, self.plane.apply, upstream=s.upstream, relay_id=self.relay_id, scopes=s.scopes,
            instances=self.instances, tls=s.upstream_tls, token=s.token, data_dir=data_dir,
            on_stale_change=lambda _stale: self.plane.ping_all(), report_interval=s.report_interval,
        )  # fmt: skip
        source.start()
        stack.push_async_callback(source.stop)
        self._register_gauges(source)
        stack.callback(self.metrics.close)
        if s.metrics_listen:
            try:
                self.metrics_port = self.metrics.serve(s.metrics_listen)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {s.metrics_listen}: {exc.strerror}") from None
        server = grpc_server()
        callbacks = [LedgerCallbacks(self.ledger), MetricsCallbacks(self.metrics)]
        self.config_service = ConfigService(
            self.plane, source, callbacks, heartbeat_interval=s.heartbeat_interval, access=self.access,
            names=KnownNames(self.store).check, carries=source.carries,
        )  # fmt: skip
        add_config_service(self.config_service, server)
        self.flagd_sync = FlagdSyncService(self.store, source, self.access)
        sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(self.flagd_sync, server)
        assert self.store.journal is not None
        self.mirror = MirrorService(
            self.store, self.store.journal, source, self.access, self.relayed, carried=source.carried
        )
        relay_pb2_grpc.add_RelayServiceServicer_to_server(self.mirror, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        credentials = server_credentials(s.listen, s.tls_cert, s.tls_key, s.tls_client_ca)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(s.listen)
            else:
                self.port = server.add_secure_port(s.listen, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {s.listen}: {exc}") from exc
        await server.start()
        stack.push_async_callback(server.stop, s.shutdown_grace)
        if s.http_listen:
            await self._start_http(stack, source)
        stack.callback(self._drain)
        # Serving before the upstream answers: with a persisted snapshot, that (stale); without one,
        # streams wait (a Watch is answered once the first list arrives).
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        if self.settings.policy_file:
            stack.push_async_callback(self._cancel, asyncio.create_task(self._watch_policy()))

    async def _start_http(self, stack: contextlib.AsyncExitStack, source: RelaySource) -> None:
        """OFREP, as a server serves it, from what the relay carries (no console: it cannot write)."""
        s = self.settings
        work = ControlWork()
        stack.callback(work.close)
        ofrep = Ofrep(self.store, self.access, work, synced=lambda: source.synced,
                      stale_reason=lambda: source.stale_reason)  # fmt: skip
        context = http_tls(s.tls_cert, s.tls_key, s.tls_client_ca)
        self.http = HttpListener(
            s.http_listen, [ofrep.add_routes], max_body=MAX_BODY, ssl_context=context,
            loopback_hosts=not self.access.enforcing and is_loopback(s.http_listen),
        )  # fmt: skip
        self.http_port = await self.http.start()
        stack.push_async_callback(self.http.stop)

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(self.access.reload_interval)
            self.access.maybe_reload()

    @staticmethod
    async def _cancel(task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def _on_store_change(self, change: StoreChange) -> None:
        """flagd sync streams hear of the flag environments a change touched."""
        flags = {layer.environment for layer in change.layers if layer.kind is LayerKind.FLAGS}
        if flags and self.flagd_sync is not None:
            self.flagd_sync.notify(flags)

    def _register_gauges(self, source: RelaySource) -> None:
        m = self.metrics
        m.gauge("confmesh_streams_connected", "Open Watch streams", lambda: float(self.plane.count()))
        m.gauge("confmesh_stale", "1 while the relay serves what it last had (upstream lost or stale)",
                lambda: float(source.stale))  # fmt: skip
        m.gauge("confmesh_etcd_revision", "Upstream revision the relay's store reflects",
                lambda: float(self.store.revision))  # fmt: skip

        def lost() -> float:
            return 0.0 if source.contact_lost_at is None else time.time() - source.contact_lost_at

        m.gauge(
            "confmesh_relay_upstream_lost_seconds", "Seconds since the upstream was lost (0: connected)", lost
        )
        m.gauge("confmesh_relay_lists", "Full lists applied from the upstream", lambda: float(source.lists))
        m.gauge("confmesh_relay_resumes", "Resumes from the revision held", lambda: float(source.resumes))
        m.gauge("confmesh_relay_instances", "Instances in this relay's subtree, its own and below",
                lambda: float(len(self.instances.records())))  # fmt: skip

    def _drain(self) -> None:
        if self.flagd_sync is not None:
            self.flagd_sync.drain()
        if self.config_service is not None:
            self.config_service.drain()
        if self.mirror is not None:
            self.mirror.drain()

    async def stop(self) -> None:
        await self._running.aclose()


async def run_relay(settings: RelaySettings) -> bool:
    """Run until SIGTERM/SIGINT; True when it stopped in time."""
    relay = RelayServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await relay.start()
    print(f"confmesh relay {relay.relay_id} serving on {relay.address} (upstream {settings.upstream})",
          flush=True)  # fmt: skip
    await stop.wait()
    log.info("shutting down")
    try:
        async with asyncio.timeout(settings.shutdown_grace + 5):
            await relay.stop()
    except TimeoutError:
        return False
    return True


__all__ = ["RelayServer", "RelaySettings", "run_relay"]
