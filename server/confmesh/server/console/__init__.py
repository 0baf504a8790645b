"""The web console (``serve --http-listen``): a page and a small script, served with the server.

No build step and no CDN: ``static/`` holds the whole front end, shipped in the
wheel. The pages talk to ``/console/api`` (``api.Console``), which turns every
action into the AdminService RPC the CLI would make. docs/console.md says why it
is built this way.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from confmesh.server.console.api import Console

ASSETS = {
    "app.js": "text/javascript",
    "app.css": "text/css",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _asset(name: str) -> bytes:
    return resources.files("confmesh.server.console").joinpath("static", name).read_bytes()


def add_console(app: web.Application, console: Console) -> None:
    """The page, its assets and its API under /console."""
    page = _asset("index.html")
    assets = {name: _asset(name) for name in ASSETS}

    async def index(request: web.Request) -> web.StreamResponse:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={**HEADERS, "Cache-Control": "no-store"})  # fmt: skip

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in assets:
            raise web.HTTPNotFound()
        return web.Response(body=assets[name], content_type=ASSETS[name],
                            headers={**HEADERS, "Cache-Control": "no-cache"})  # fmt: skip

    app.router.add_get("/console", redirect)
    app.router.add_get("/console/", index)
    app.router.add_get("/console/static/{name}", asset)
    console.add_routes(app)


__all__ = ["Console", "add_console"]
