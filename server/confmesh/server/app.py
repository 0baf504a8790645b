"""Wiring: a source (etcd, external or embedded) → store → snapshot plane → gRPC and HTTP services.

Only wiring: each part's logic lives in its own module, and `start` registers each part's stop on
an exit stack as it starts it, so `stop` (or a failed start) undoes exactly what started, in
reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import ssl
import sys
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc
from opentelemetry.trace import TracerProvider

from confmesh.errors import ConfmeshError, InvalidArgument, StartupError
from confmesh.keys import KeyLayout, LayerKind, Scope
from confmesh.server.access import Access, unruled
from confmesh.server.admin_service import AdminService
from confmesh.server.audit import record_denial
from confmesh.server.change_flow import ChangeScheduler
from confmesh.server.config_service import ConfigService, add_config_service
from confmesh.server.console import Console, add_console
from confmesh.server.console.api import MAX_BODY as CONSOLE_MAX_BODY
from confmesh.server.consul_kv import ConsulKV
from confmesh.server.control_work import ControlWork
from confmesh.server.embedded_etcd import EmbeddedEtcd
from confmesh.server.etcd import DEFAULT_MAX_REQUEST_BYTES, Etcd, EtcdCredentials
from confmesh.server.flagd_sync import FlagdSyncService
from confmesh.server.fleet import FleetPublisher, FleetView, UsagePublisher
from confmesh.server.history import prune_audit
from confmesh.server.http_listener import HttpListener
from confmesh.server.interceptors import DecodeErrorsAsInvalidArgument
from confmesh.server.journal import KeyJournal
from confmesh.server.known_names import KnownNames
from confmesh.server.ledger import Ledger
from confmesh.server.metrics import Metrics
from confmesh.server.mirror import MirrorService
from confmesh.server.ofrep import MAX_BODY, Ofrep
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import FLEET, ROLLOUTS, SCHEMAS, TOKENS, server_store
from confmesh.server.relayed_fleet import LocalInstances, RelayedFleet
from confmesh.server.rollout_guard import RolloutGuard
from confmesh.server.snapshot_size import SnapshotSizes
from confmesh.server.source import EtcdSource
from confmesh.server.startup import DataDirLock, check_port_free, start_embedded_etcd
from confmesh.server.store import StoreChange
from confmesh.server.stream_callbacks import LedgerCallbacks, MetricsCallbacks, UsageCallbacks
from confmesh.server.usage import FlagUsageStore
from confmesh.server.writer import Writer
from confmesh.tls import read_pem
from confmesh.v1 import admin_pb2, admin_pb2_grpc, config_pb2, relay_pb2, relay_pb2_grpc
from confmesh.version import __version__

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:7070"


def served_methods() -> list[str]:
    """Every confmesh RPC, as gRPC names it: each must have an authorization rule (access.RULES)."""
    return [
        f"/{service.full_name}/{method.name}"
        for module in (admin_pb2, config_pb2, relay_pb2, sync_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


SERVICE_NAMES = (
    "confmesh.v1.ConfigService",
    "confmesh.v1.AdminService",
    "grpc.health.v1.Health",
    "confmesh.v1.RelayService",
    reflection.SERVICE_NAME,
    "flagd.sync.v1.FlagSyncService",
)


@dataclass
class ServerSettings:
    listen: str = DEFAULT_LISTEN
    # Empty: start an embedded etcd with its data under data_dir.
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd_credentials: EtcdCredentials = field(default_factory=EtcdCredentials)
    data_dir: str = "confmesh-data"
    prefix: str = "/confmesh"
    server_id: str = ""
    heartbeat_interval: float = 15.0
    sync_timeout: float = 30.0
    # etcd's --max-request-bytes (the embedded etcd runs with it): larger writes are refused up front.
    etcd_max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    shutdown_grace: float = 5.0
    # Share the listen port with other processes (SO_REUSEPORT), e.g. worker processes of one server.
    # Off by default: a busy port is an error.
    reuse_port: bool = False
    # Server TLS (PEM paths); with tls_client_ca, clients must present a certificate it signed.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # How often active rollouts are checked for NACKing canaries (auto-abort).
    rollout_check_interval: float = 1.0
    # The fleet view (confmesh.server.fleet): how often this replica publishes its ledger when
    # it changed, and the lease TTL within which a dead replica's instances leave the view.
    fleet_interval: float = 2.0
    fleet_ttl: int = 10
    # Publish to the fleet view: None = with an external etcd (replicas share it), not with the
    # embedded one (a single development server, whose etcd revisions stay as its writes make them).
    fleet: bool | None = None
    # The Consul KV API's key root on --http-listen (<root>/<env>/global/…, <root>/<env>/<service>/…).
    consul_root: str = "config"
    # How long a relay's subtree stays in the view after its stream ends.
    relay_gone_ttl: float = 30.0
    # How often flag-usage counts are published for the fleet (`flags stale` across replicas).
    usage_publish_interval: float = 30.0
    # Audit records (the history that rollback and revert use) older than this are removed; 0 keeps all.
    audit_retention_days: float = 90.0
    # YAML policy granting identities their rights ("" = nothing enforced); reloaded on change.
    policy_file: str = ""
    # HOST:PORT for Prometheus /metrics ("" = off).
    metrics_listen: str = ""
    # HOST:PORT for the HTTP listener: OFREP ("" = off). TLS as --listen's.
    http_listen: str = ""
    # Push backed by reconcile (see confmesh.server.source).
    progress_interval: float = 30.0
    watch_idle_timeout: float = 120.0
    resync_interval: float = 300.0


def parse_endpoints(value: str) -> list[str]:
    endpoints = []
    for raw in value.split(","):
        item = raw.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidArgument(f"invalid etcd endpoint {raw!r}: expected HOST:PORT")
        endpoints.append(item)
    if not endpoints:
        raise InvalidArgument("--etcd needs at least one HOST:PORT")
    return endpoints


def is_loopback(listen: str) -> bool:
    """True when HOST:PORT only accepts connections from this machine."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(
    listen: str, tls_cert: str, tls_key: str, tls_client_ca: str
) -> grpc.ServerCredentials | None:
    """The gRPC listener's TLS (None: plaintext, warned about off loopback)."""
    if not (tls_cert or tls_key):
        if tls_client_ca:
            raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
        if not is_loopback(listen):
            log.warning(
                "PLAINTEXT on %s: anyone who can reach this address can read and change config. "
                "Use --tls-cert/--tls-key (and --tls-client-ca for mutual TLS).",
                listen,
            )
        return None
    if not (tls_cert and tls_key):
        raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
    client_ca = read_pem(tls_client_ca, "client CA") if tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read_pem(tls_key, "TLS key"), read_pem(tls_cert, "TLS certificate"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def grpc_server(*, reuse_port: bool = False) -> grpc.aio.Server:
    """A gRPC server as every confmesh process runs one: keepalives, a 4 MiB request bound, and
    undecodable requests answered INVALID_ARGUMENT."""
    return grpc.aio.server(
        interceptors=[DecodeErrorsAsInvalidArgument()],
        options=[
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )


def http_tls(tls_cert: str, tls_key: str, tls_client_ca: str) -> ssl.SSLContext | None:
    """The HTTP listener's TLS: the gRPC listener's, client certificates required with a client CA
    (one transport policy for both listeners)."""
    if not (tls_cert and tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_cert, tls_key)
    if tls_client_ca:
        context.load_verify_locations(tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ConfmeshServer:
    def __init__(self, settings: ServerSettings, *, tracer_provider: TracerProvider | None = None) -> None:
        """`tracer_provider` defaults to OpenTelemetry's global one."""
        self.settings = settings
        self.tracer_provider = tracer_provider
        self.layout = KeyLayout(settings.prefix)
        self.server_id = settings.server_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.embedded: EmbeddedEtcd | None = None
        self._data_lock: DataDirLock | None = None
        self.etcd: Etcd | None = None
        self.store = server_store(self.layout)
        self.store.journal = KeyJournal(self.layout)  # what relays below this server carry
        self.plane = SnapshotPlane(self.store)
        self.plane.listen(self._on_store_change)
        self.ledger = Ledger(server_id=self.server_id)
        self.relayed = RelayedFleet(ttl=settings.relay_gone_ttl, server_id=self.server_id)
        self.instances = LocalInstances(self.ledger, self.relayed)
        self.fleet = FleetView(self.instances, self.store.records(FLEET), self.server_id)
        self.mirror: MirrorService | None = None
        self.fleet_publisher: FleetPublisher | None = None
        self.usage_publisher: UsagePublisher | None = None
        self.usage = FlagUsageStore()
        self.source: EtcdSource | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.config_service: ConfigService | None = None
        self.flagd_sync: FlagdSyncService | None = None
        self.health = health_aio.HealthServicer()
        self.metrics = Metrics()
        self.metrics_port = 0
        self.http: HttpListener | None = None
        self.http_port = 0
        self.ofrep: Ofrep | None = None
        self.control_work: ControlWork | None = None
        self.port = 0
        self.endpoints = ""
        self.access = Access(
            lambda: self.store.records(TOKENS),
            settings.policy_file,
            on_reload=[self._recheck_access],
            record_denial=self._record_denial,
        )
        self._running = contextlib.AsyncExitStack()
        self.changes: ChangeScheduler | None = None
        self.admin_service: AdminService | None = None
        self.console: Console | None = None
        self.consul_kv: ConsulKV | None = None

    @property
    def address(self) -> str:
        host = self.settings.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
        return f"{host}:{self.port}"

    async def _prune_audit(self) -> None:
        assert self.etcd is not None
        while True:
            try:
                await prune_audit(self.etcd, self.layout, self.settings.audit_retention_days * 86400)
            except ConfmeshError as exc:
                log.warning("audit retention: %s", exc.message)
            await asyncio.sleep(3600)

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(self.access.reload_interval)
            self.access.maybe_reload()

    def _snapshot_sizes(self) -> SnapshotSizes:
        store = self.store

        def scopes() -> set[Scope]:
            known = {Scope(x.environment, x.service) for x in store.layers() if x.kind is LayerKind.SERVICE}
            return (
                known | set(store.records(SCHEMAS)) | set(store.records(ROLLOUTS)) | set(self.plane.scopes())
            )

        return SnapshotSizes(store.entries, store.layer_revision, scopes)

    def _recheck_access(self) -> None:
        """The policy reloaded or a token changed: open streams are checked against their grants."""
        if self.config_service is not None:
            self.config_service.recheck_access()
        if self.flagd_sync is not None:
            self.flagd_sync.recheck_access()

    async def _record_denial(self, identity: str, method: str, message: str) -> None:
        if self.etcd is not None:
            await record_denial(self.etcd, self.layout, identity, method, message)

    def _on_store_change(self, change: StoreChange) -> None:
        """What else hears of a change, after the plane has published it: flagd sync streams of the
        flag environments it touched, and open streams' grants when tokens changed."""
        if TOKENS.name in change.kinds:
            self._recheck_access()
        if self.flagd_sync is not None:
            flags = {layer.environment for layer in change.layers if layer.kind is LayerKind.FLAGS}
            if flags:
                self.flagd_sync.notify(flags)

    async def start(self) -> None:
        """Start every part, each one's stop registered as it starts; a failed start undoes it all."""
        try:
            await self._start(self._running)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "confmesh %s (version %s) serving on %s (etcd %s, prefix %s)",
            self.server_id, __version__, self.address, self.endpoints, self.layout.prefix,
        )  # fmt: skip

    def _task(self, stack: contextlib.AsyncExitStack, run: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(run, name=name)

        async def cancel() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        stack.push_async_callback(cancel)

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        # The event loop waits for the GIL whenever another thread (control work, schema checks) holds
        # it: at the default 5 ms switch interval, one busy thread adds ~5 ms to each wait; at 1 ms,
        # ~1 ms (measured in docs/design.md, "Delivery isolation").
        sys.setswitchinterval(SWITCH_INTERVAL)
        endpoints = list(s.etcd_endpoints)
        if not s.reuse_port:
            check_port_free(s.listen, "cannot listen on")
        if s.metrics_listen:
            check_port_free(s.metrics_listen, "cannot serve metrics on")
        if s.http_listen and not s.reuse_port:
            check_port_free(s.http_listen, "cannot serve HTTP on")
        if not endpoints:
            self._data_lock, self.embedded = await start_embedded_etcd(Path(s.data_dir))
            stack.callback(self._data_lock.release)
            stack.push_async_callback(self.embedded.stop)
            endpoints = [self.embedded.endpoint]
        self.endpoints = ",".join(endpoints)
        self.etcd = etcd = Etcd(
            endpoints, credentials=s.etcd_credentials, max_request_bytes=s.etcd_max_request_bytes
        )
        stack.push_async_callback(etcd.close)
        await etcd.connect()
        self.source = source = EtcdSource(
            etcd,
            self.store,
            self.plane.apply,
            on_stale_change=lambda _stale: self.plane.ping_all(),
            progress_interval=s.progress_interval,
            watch_idle_timeout=s.watch_idle_timeout,
            resync_interval=s.resync_interval,
            on_error=self.metrics.etcd_errors.inc,
        )
        source.start()
        stack.push_async_callback(source.stop)
        self._register_gauges()
        stack.callback(self.metrics.close)
        if s.metrics_listen:
            try:
                self.metrics_port = self.metrics.serve(s.metrics_listen)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {s.metrics_listen}: {exc.strerror}") from None
        if not await source.wait_synced(s.sync_timeout):
            raise StartupError(
                f"could not sync with etcd at {self.endpoints} within {s.sync_timeout:.0f}s: "
                f"{source.stale_reason}"
            )
        missing = unruled(served_methods())
        if missing:
            raise StartupError(f"internal: no authorization rule for {', '.join(missing)}")
        await self._start_grpc(stack, etcd, source)
        if s.http_listen:
            await self._start_http(stack)
        self._start_workers(stack, etcd)
        # Stopping begins here: streams end with UNAVAILABLE/draining (clients move to another
        # replica at once) before anything else stops.
        stack.callback(self._drain_streams)
        # Synced with etcd (startup waited for it): ready. Stale later still serves.
        for name in ("", *SERVICE_NAMES[:2]):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        stack.push_async_callback(self.health.enter_graceful_shutdown)

    async def _start_grpc(self, stack: contextlib.AsyncExitStack, etcd: Etcd, source: EtcdSource) -> None:
        s = self.settings
        server = grpc_server(reuse_port=s.reuse_port)
        self.config_service = ConfigService(
            self.plane,
            source,
            [LedgerCallbacks(self.ledger), MetricsCallbacks(self.metrics), UsageCallbacks(self.usage)],
            heartbeat_interval=s.heartbeat_interval,
            tracer_provider=self.tracer_provider,
            access=self.access,
            names=KnownNames(self.store).check,
        )
        add_config_service(self.config_service, server)
        self.flagd_sync = FlagdSyncService(self.store, source, self.access)
        sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(self.flagd_sync, server)
        writer = Writer(etcd, self.layout, lambda: self.store.records(SCHEMAS), self._snapshot_sizes())
        self.changes = ChangeScheduler(writer, self.store, self.access, server_id=self.server_id)
        self.admin_service = AdminService(
            writer,
            self.plane,
            self.fleet,
            self.store,
            source,
            self.usage,
            server_id=self.server_id,
            tracer_provider=self.tracer_provider,
            access=self.access,
            endpoints=self.endpoints,
            metrics=self.metrics,
            relayed=self.relayed,
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(self.admin_service, server)
        assert self.store.journal is not None
        self.mirror = MirrorService(self.store, self.store.journal, source, self.access, self.relayed)
        relay_pb2_grpc.add_RelayServiceServicer_to_server(self.mirror, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        try:
            credentials = self._server_credentials()
            if credentials is None:
                self.port = server.add_insecure_port(s.listen)
            else:
                self.port = server.add_secure_port(s.listen, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {s.listen}: {exc}") from exc
        if not self.port:
            raise StartupError(f"cannot listen on {s.listen} (address in use?)")
        await server.start()
        self.grpc_server = server
        stack.push_async_callback(server.stop, s.shutdown_grace)

    def _start_workers(self, stack: contextlib.AsyncExitStack, etcd: Etcd) -> None:
        """The replica's background work: the rollout guard, the change scheduler, the fleet and
        usage publishers, audit retention and policy reloads."""
        s = self.settings
        assert self.changes is not None
        actor = f"confmesh/{self.server_id}"
        guard = RolloutGuard(etcd, self.layout, self.store, self.plane, self.fleet,
                             actor=actor, interval=s.rollout_check_interval)  # fmt: skip
        self._task(stack, guard.run(), "rollout-guard")
        self._task(stack, self.changes.run(), "change-scheduler")
        publish = s.fleet if s.fleet is not None else self.embedded is None
        if publish:
            rollouts = self.store.records(ROLLOUTS)
            fleet = FleetPublisher(
                etcd, self.layout, self.instances, self.server_id, interval=s.fleet_interval, ttl=s.fleet_ttl,
                epoch=lambda: frozenset((scope, at) for scope, (_, at) in rollouts.items()),
            )  # fmt: skip
            self.fleet_publisher = fleet
            stack.push_async_callback(_bounded, fleet.withdraw, 2)  # its instances leave the view now
            self._task(stack, fleet.run(), "fleet-publisher")
            usage = UsagePublisher(
                etcd, self.layout, self.usage, self.server_id, interval=s.usage_publish_interval
            )
            self.usage_publisher = usage
            # What this replica counted since its last publish is not lost with it.
            stack.push_async_callback(_bounded, usage.tick, 2)
            self._task(stack, usage.run(), "usage-publisher")
        if s.audit_retention_days > 0:
            self._task(stack, self._prune_audit(), "audit-retention")
        if s.policy_file:
            self._task(stack, self._watch_policy(), "policy-reload")
        elif not is_loopback(s.listen):
            log.warning(
                "NO ACCESS POLICY on %s: every caller may read and change all config. "
                "Use --policy (and mutual TLS or tokens) off loopback.",
                s.listen,
            )

    def _drain_streams(self) -> None:
        if self.config_service is not None:
            self.config_service.drain()
        if self.mirror is not None:
            self.mirror.drain()
        if self.flagd_sync is not None:
            self.flagd_sync.drain()

    @property
    def http_url(self) -> str:
        """The HTTP listener's base URL (``--http-listen``), with its actual port."""
        host = self.settings.http_listen.rpartition(":")[0] or "127.0.0.1"
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://{host}:{self.http_port}"

    async def _start_http(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        source = self.source
        assert source is not None
        self.control_work = work = ControlWork()
        stack.callback(work.close)
        self.ofrep = Ofrep(
            self.store,
            self.access,
            work,
            synced=lambda: source.synced,
            stale_reason=lambda: source.stale_reason,
        )
        context = http_tls(s.tls_cert, s.tls_key, s.tls_client_ca)
        if context is None and not is_loopback(s.http_listen):
            log.warning(
                "PLAINTEXT HTTP on %s: tokens sent to it can be read on the way. Use --tls-cert/--tls-key.",
                s.http_listen,
            )
        assert self.admin_service is not None
        self.console = console = Console(
            self.admin_service,
            self.access,
            self.store,
            self.fleet,
            self.ledger,
            work,
            self.ofrep.evaluators,
            secure_cookies=context is not None,
            allow_anonymous=is_loopback(s.http_listen),
        )
        self.consul_kv = ConsulKV(
            self.store, source, self.access, self.admin_service, self.plane, root=s.consul_root
        )
        self.plane.listen(self.consul_kv.watch.changed)
        self.http = HttpListener(
            s.http_listen,
            [self.ofrep.add_routes, lambda app: add_console(app, console), self.consul_kv.add_routes],
            max_body=max(MAX_BODY, CONSOLE_MAX_BODY),
            reuse_port=s.reuse_port,
            ssl_context=context,
            # DNS rebinding reaches a development server on loopback: there, without a policy, only
            # requests addressed to localhost are answered.
            loopback_hosts=not self.access.enforcing and is_loopback(s.http_listen),
        )
        self.http_port = await self.http.start()
        stack.push_async_callback(self.http.stop)
        stack.callback(console.close)  # first: open live pages end, so the listener stops at once

    def _server_credentials(self) -> grpc.ServerCredentials | None:
        s = self.settings
        return server_credentials(s.listen, s.tls_cert, s.tls_key, s.tls_client_ca)

    def _register_gauges(self) -> None:
        source = self.source
        assert source is not None
        m = self.metrics
        m.gauge("confmesh_streams_connected", "Open Watch streams", lambda: float(self.plane.count()))
        m.gauge(
            "confmesh_stale",
            "1 while etcd is unreachable and the last state is served",
            lambda: float(source.stale),
        )
        m.gauge(
            "confmesh_etcd_revision", "etcd revision the cache reflects", lambda: float(self.store.revision)
        )
        m.gauge(
            "confmesh_etcd_relists",
            "Full re-lists of the key space (outages, compaction, resync)",
            lambda: float(source.relists),
        )
        m.gauge(
            "confmesh_etcd_watch_idle_seconds",
            "Seconds since the etcd watch last said anything",
            source.watch_idle_seconds,
        )

    async def stop(self) -> None:
        """Drain Watch streams (clients move to another replica at once), then stop everything that
        started, in reverse."""
        stack, self._running = self._running, contextlib.AsyncExitStack()
        await stack.aclose()
        self.http = self.grpc_server = self.source = self.etcd = self.embedded = None
        self.control_work = None
        self.fleet_publisher = self.usage_publisher = None
        self._data_lock = None

    async def __aenter__(self) -> ConfmeshServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _bounded(step: Callable[[], Coroutine[Any, Any, Any]], seconds: float) -> None:
    """A last step of stopping that may not take longer than `seconds` nor fail the stop."""
    try:
        async with asyncio.timeout(seconds):
            await step()
    except (TimeoutError, ConfmeshError) as exc:
        log.warning("while stopping: %s", getattr(exc, "message", "timed out"))


SWITCH_INTERVAL = 0.001  # seconds: sys.setswitchinterval for a server process
SHUTDOWN_EXTRA = 10.0  # seconds past the drain grace before shutdown stops waiting


async def run_server(settings: ServerSettings, *, ready: asyncio.Event | None = None) -> bool:
    """Run until SIGTERM/SIGINT, then drain streams and stop (embedded etcd included).

    Shutdown is bounded: a second signal, or shutdown taking longer than the
    drain grace plus SHUTDOWN_EXTRA, stops waiting (the embedded etcd is
    killed). Returns False in that case, so the caller exits at once.
    """
    server = ConfmeshServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()  # a failed start stops what it started
    import gc

    gc.freeze()
    http = f"; console and OFREP on {server.http_url}" if settings.http_listen else ""
    print(f"confmesh serving on {server.address} (version {__version__}){http}", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down")
    stop.clear()
    stopping = asyncio.ensure_future(server.stop())
    again = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait(
        {stopping, again},
        timeout=settings.shutdown_grace + SHUTDOWN_EXTRA,
        return_when=asyncio.FIRST_COMPLETED,
    )
    again.cancel()
    if stopping not in done:
        log.error("shutdown did not finish%s; stopping now", " (second signal)" if again in done else "")
        if server.embedded is not None:
            server.embedded.kill()
        return False
    stopping.result()
    return True
