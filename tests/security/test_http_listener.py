"""The HTTP listener as an attacker meets it: DNS rebinding on a development server, slow headers and
connection floods, and mutual TLS, against real servers."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from confmesh.client import AdminClient
from confmesh.server import ConfmeshServer, ServerSettings
from confmesh.server.http_listener import HttpListener, is_loopback_host
from tests.conftest import EtcdHandle
from tests.server.test_tls import pki  # noqa: F401 (a fixture)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost:8080", True), ("127.0.0.1", True), ("127.9.9.9:1", True), ("[::1]:8443", True),
     ("app.localhost", True), ("evil.example", False), ("evil.example:8080", False), ("10.0.0.1", False),
     ("[2001:db8::1]:80", False), ("localhost.evil.example", False), ("", False)],
)  # fmt: skip
def test_loopback_host_names(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


async def test_a_rebinding_page_cannot_reach_a_server_without_a_policy(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    """A page on evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example."""
    await admin.put("db.pool", 10, env="prod", service="orders")
    base = server.http_url
    evil = {"Host": f"evil.example:{server.http_port}", "Origin": f"http://evil.example:{server.http_port}"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{base}/console/api/me", headers=evil) as resp:
            assert resp.status == 421 and (await resp.json())["error"]["code"] == "not_loopback"
        csrf = "x" * 40
        session.cookie_jar.update_cookies({"confmesh_csrf": csrf})
        write = {"env": "prod", "service": "orders", "set": {"db.pool": 99}, "mode": "write"}
        async with session.post(f"{base}/console/api/config", json=write,
                                headers={**evil, "X-CSRF-Token": csrf}) as resp:  # fmt: skip
            assert resp.status == 421
        ofrep = f"{base}/environments/prod/ofrep/v1/evaluate/flags"
        async with session.post(ofrep, json={"context": {}}, headers=evil) as resp:
            assert resp.status == 421
        async with session.get(f"{base}/console/api/me") as resp:  # addressed to 127.0.0.1: served
            assert resp.status == 200
    assert (await admin.resolve("prod", "orders", "db.pool")).value == 10


async def _app(listener_args: dict[str, object]) -> HttpListener:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    listener = HttpListener(
        "127.0.0.1:0", [lambda app: app.router.add_get("/", hello)], max_body=1024, **listener_args
    )  # type: ignore[arg-type]
    await listener.start()
    return listener


async def _slow_header(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    await writer.drain()
    return reader, writer


async def _closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except (TimeoutError, ConnectionResetError):
        return False


async def test_slow_headers_are_cut_off_and_one_peer_cannot_take_every_connection() -> None:
    listener = await _app({"idle_timeout": 1.0, "max_per_peer": 20, "max_connections": 100})
    try:
        held = [await _slow_header(listener.port) for _ in range(20)]
        # The 21st from the same address is closed at once; another address is still served.
        extra_reader, _ = await _slow_header(listener.port)
        assert await _closed(extra_reader, 1.0)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session,
            session.get(f"http://127.0.0.1:{listener.port}/") as resp,
        ):
            assert resp.status == 200 and await resp.text() == "hello"
        # Headers never finished: each slow connection is closed after the idle timeout, trickle or not.
        for _, writer in held[:5]:
            writer.write(b"a")
        assert all(await asyncio.gather(*(_closed(r, 5.0) for r, _ in held)))
        await asyncio.sleep(0.1)
        assert listener.guard.open == 0 and listener.guard.refused >= 1
    finally:
        for _, writer in held:
            writer.close()
        await listener.stop()


async def test_800_slow_connections_leave_a_real_server_answering(server: ConfmeshServer) -> None:
    """The reported attack: 800 unfinished requests from one address; OFREP still answers others."""
    port = server.http_port
    held = await asyncio.gather(*(_slow_header(port) for _ in range(800)), return_exceptions=True)
    try:
        assert server.http is not None and server.http.guard.open <= server.http.guard.per_peer
        url = f"http://127.0.0.1:{port}/environments/prod/ofrep/v1/evaluate/flags"
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session,
            session.post(url, json={"context": {}}, headers={"Host": f"localhost:{port}"}) as resp,
        ):
            assert resp.status == 200
    finally:
        for item in held:
            if isinstance(item, tuple):
                item[1].close()


async def test_mutual_tls_holds_on_the_http_listener_too(
    etcd: EtcdHandle,
    prefix: str,
    pki: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("identities: {}\n")
    server = ConfmeshServer(ServerSettings(
        listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix, tls_cert=pki["server_cert"],
        tls_key=pki["server_key"], tls_client_ca=pki["ca"], http_listen="127.0.0.1:0",
        policy_file=str(policy)))  # fmt: skip
    await server.start()
    try:
        url = f"{server.http_url}/environments/prod/ofrep/v1/configuration"
        without = ssl.create_default_context(cafile=pki["ca"])
        with pytest.raises(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session, session.get(url, ssl=without) as resp:
                await resp.read()
        with_cert = ssl.create_default_context(cafile=pki["ca"])
        with_cert.load_cert_chain(pki["client_cert"], pki["client_key"])
        async with aiohttp.ClientSession() as session, session.get(url, ssl=with_cert) as resp:
            assert resp.status == 401  # through TLS; the policy still wants a token
            assert "errorDetails" in json.loads(await resp.text())
    finally:
        await server.stop()
