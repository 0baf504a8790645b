"""The HTTP listener (``serve --http-listen``): aiohttp on the server's event loop, OFREP's routes on it."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Sequence

from aiohttp import web

from confmesh.errors import StartupError

log = logging.getLogger(__name__)
SHUTDOWN_GRACE = 2.0


class HttpListener:
    """One aiohttp site; `routes` add their handlers to the application before it starts."""

    def __init__(
        self,
        listen: str,
        routes: Sequence[Callable[[web.Application], None]],
        *,
        max_body: int,
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.listen = listen
        self.routes = list(routes)
        self.max_body = max_body
        self.reuse_port = reuse_port
        self.ssl_context = ssl_context
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Bind and serve; returns the port (``HOST:0`` picks a free one)."""
        app = web.Application(client_max_size=self.max_body)
        for add in self.routes:
            add(app)
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit():
            raise StartupError(f"--http-listen {self.listen}: expected HOST:PORT")
        # Idle keep-alive connections are closed after 75 s; a slow client cannot hold a handler.
        # On stop, requests still running get SHUTDOWN_GRACE seconds, then are cancelled.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=75,
                               shutdown_timeout=SHUTDOWN_GRACE)  # fmt: skip
        await runner.setup()
        site = web.TCPSite(
            runner,
            host,
            int(port),
            ssl_context=self.ssl_context,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot serve HTTP on {self.listen}: {exc.strerror}") from None
        self._runner = runner
        server = site._server  # the bound socket, for port 0
        sockets: list[socket.socket] = list(getattr(server, "sockets", ()) or ())
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
