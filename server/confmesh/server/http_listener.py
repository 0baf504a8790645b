"""The HTTP listener (``serve --http-listen``): aiohttp on the server's event loop, OFREP's and the
console's routes on it.

What an unauthenticated peer can make it hold is bounded before any route runs:

* connections: at most ``max_connections`` in all and ``max_per_peer`` from one address; past either,
  a new connection is closed at once (before aiohttp sees it);
* time: a connection that has not sent a whole request within ``idle_timeout`` seconds, or that sits
  idle that long between requests, is closed (slow-header attacks hold nothing for long);
* without a policy (``loopback_hosts``): requests must be addressed to a loopback host name
  (``Host: localhost``, ``127.x.x.x``, ``[::1]``); a page that rebinds its own DNS name to 127.0.0.1
  cannot reach the console or OFREP of a development server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from confmesh.errors import StartupError
from confmesh.server.limits import KeyedCount

log = logging.getLogger(__name__)
SHUTDOWN_GRACE = 2.0
IDLE_TIMEOUT = 15.0
MAX_CONNECTIONS = 2048
MAX_PER_PEER = 256


class ConnectionGuard:
    """Counts connections in all and per peer address; `admit` says whether one more may open."""

    def __init__(self, total: int, per_peer: int) -> None:
        self.total, self.per_peer = total, per_peer
        self.count = KeyedCount()
        self.refused = 0

    @property
    def open(self) -> int:
        return self.count.total

    def admit(self, peer: str) -> bool:
        if self.count.total >= self.total or self.count.of(peer) >= self.per_peer:
            self.refused += 1
            return False
        self.count.take(peer)
        return True

    def release(self, peer: str) -> None:
        self.count.release(peer)


class _Guarded(asyncio.Protocol):
    """An aiohttp connection behind the guard: created only once the guard admits its peer."""

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self.guard, self.make = guard, make
        self.inner: asyncio.Protocol | None = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = transport.get_extra_info("peername")
        peer = str(address[0]) if address else ""
        if not self.guard.admit(peer):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.peer = peer
        self.inner = self.make()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None
            self.guard.release(self.peer)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine's loopback (``localhost``, ``127.x.x.x``, ``[::1]``)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.rpartition(":")[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@web.middleware
async def _loopback_hosts_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not is_loopback_host(request.host):
        return web.json_response(
            {"error": {"code": "not_loopback", "message": (
                f"this server has no policy, so it answers only requests addressed to localhost, "
                f"not {request.host[:100]!r} (a DNS-rebinding page could otherwise reach it)"), "field": ""},
             "errorDetails": "requests must be addressed to localhost on a server without a policy"},
            status=421,
        )  # fmt: skip
    return await handler(request)


class HttpListener:
    """One aiohttp application on one guarded socket; `routes` add their handlers before it starts."""

    def __init__(
        self,
        listen: str,
        routes: Sequence[Callable[[web.Application], None]],
        *,
        max_body: int,
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        loopback_hosts: bool = False,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_per_peer: int = MAX_PER_PEER,
    ) -> None:
        self.listen = listen
        self.routes = list(routes)
        self.max_body = max_body
        self.reuse_port = reuse_port
        self.ssl_context = ssl_context
        self.loopback_hosts = loopback_hosts
        self.idle_timeout = idle_timeout
        self.guard = ConnectionGuard(max_connections, max_per_peer)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Bind and serve; returns the port (``HOST:0`` picks a free one)."""
        middlewares: list[Any] = [_loopback_hosts_only] if self.loopback_hosts else []
        app = web.Application(client_max_size=self.max_body, middlewares=middlewares)
        for add in self.routes:
            add(app)
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit():
            raise StartupError(f"--http-listen {self.listen}: expected HOST:PORT")
        # aiohttp closes a connection that has sent no whole request within keepalive_timeout (from its
        # start, or since its last response); on stop, running requests get SHUTDOWN_GRACE seconds.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.idle_timeout,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await runner.setup()
        handlers = runner.server
        assert handlers is not None
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Guarded(self.guard, handlers),
                host,
                int(port),
                ssl=self.ssl_context,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot serve HTTP on {self.listen}: {exc.strerror}") from None
        self._runner = runner
        self.port = int(self._server.sockets[0].getsockname()[1]) if self._server.sockets else int(port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
