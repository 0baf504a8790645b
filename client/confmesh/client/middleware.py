"""ASGI and WSGI middleware that open a flag request scope for each HTTP request.

    app = FlagScopeMiddleware(app)                    # edge: incoming decisions dropped
    app = FlagScopeMiddleware(app, trusted=True)      # internal listener: honour them
    app = FlagScopeMiddleware(app, trusted=lambda scope: ...)

``trusted`` decides per request (given the ASGI scope, or the WSGI environ)
whether flag decisions in its ``baggage`` header are honoured. These
middlewares start no spans; put them inside OpenTelemetry's ASGI/WSGI
instrumentation so evaluation events land on its server span.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from typing import Any

from confmesh.client.propagation import incoming_scope

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]  # fmt: skip
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _decide(trusted: bool | Callable[[Any], bool], request: Any) -> bool:
    return trusted(request) if callable(trusted) else bool(trusted)


class FlagScopeMiddleware:
    """ASGI middleware (FastAPI/Starlette: ``app.add_middleware(FlagScopeMiddleware, trusted=...)``)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted: bool | Callable[[MutableMapping[str, Any]], bool] = False,
        propagate: Collection[str] | None = None,
    ) -> None:
        self.app = app
        self.trusted = trusted
        self.propagate = propagate

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        trusted = _decide(self.trusted, scope)
        header = ""
        if trusted:
            header = ",".join(
                v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"baggage"
            )
        with incoming_scope(header, trusted, propagate=self.propagate):
            await self.app(scope, receive, send)


class WSGIFlagScopeMiddleware:
    """WSGI middleware (Flask: ``app.wsgi_app = WSGIFlagScopeMiddleware(app.wsgi_app)``).

    The scope covers the application call and the iteration of its response.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        trusted: bool | Callable[[dict[str, Any]], bool] = False,
        propagate: Collection[str] | None = None,
    ) -> None:
        self.app = app
        self.trusted = trusted
        self.propagate = propagate

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        trusted = _decide(self.trusted, environ)
        with incoming_scope(environ.get("HTTP_BAGGAGE", ""), trusted, propagate=self.propagate):
            result = self.app(environ, start_response)
            try:
                yield from result
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()


__all__ = [
    "FlagScopeMiddleware",
    "WSGIFlagScopeMiddleware",
]
