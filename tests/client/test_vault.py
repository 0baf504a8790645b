"""vault: secret references, resolved by the client from a Vault KV v2 HTTP API.

Vault itself cannot be installed here, so a small HTTP server on loopback
answers the one KV v2 read the client makes, the way Vault documents it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from confmesh.client import AdminClient, ConfigClient, InvalidArgument
from confmesh.secrets import resolve_refs
from confmesh.server import ConfmeshServer
from tests.conftest import EtcdHandle

TOKEN = "s.test-vault-token"  # pragma: allowlist secret
SECRET = "vault-held-password"  # pragma: allowlist secret


class KV2(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.headers.get("X-Vault-Token") != TOKEN:
            self._reply(403, {"errors": ["permission denied"]})
        elif self.path.split("?")[0] == "/v1/secret/data/orders":
            self._reply(200, {"data": {"data": {"db_password": SECRET}, "metadata": {"version": 3}}})
        else:
            self._reply(404, {"errors": []})

    def _reply(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def vault(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), KV2)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    address = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("VAULT_ADDR", address)
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    try:
        yield address
    finally:
        httpd.shutdown()


async def test_vault_references_resolve_in_the_client(
    vault: str, server: ConfmeshServer, admin: AdminClient, etcd: EtcdHandle, prefix: str
) -> None:
    with pytest.raises(InvalidArgument, match="vault:mount/path#field"):
        await admin.put("db.password", {"$secret": "vault:secret/orders"}, env="prod", service="orders")
    await admin.put(
        "db.password", {"$secret": "vault:secret/orders#db_password"}, env="prod", service="orders"
    )
    async with ConfigClient(server.address, environment="prod", service="orders") as client:
        assert client.config["db"]["password"] == SECRET
        assert client.raw["db"]["password"] == {"$secret": "vault:secret/orders#db_password"}
    assert SECRET not in etcd.ctl("get", "--prefix", prefix)


def test_unreadable_vault_references_are_reported_per_field(
    vault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, issues = resolve_refs(
        {"a": {"$secret": "vault:secret/orders#nope"}, "b": {"$secret": "vault:secret/x#y"}}
    )
    assert [i.path for i in issues] == ["a", "b"]
    assert "has no field 'nope'" in issues[0].message and "cannot be read" in issues[1].message
    monkeypatch.setenv("VAULT_TOKEN", "wrong")
    _, issues = resolve_refs({"a": {"$secret": "vault:secret/orders#db_password"}})
    assert "Forbidden" in issues[0].message or "permission denied" in issues[0].message


class SlowKV2(KV2):
    def do_GET(self) -> None:
        time.sleep(1.5)  # a Vault that takes its time
        super().do_GET()


async def test_a_slow_vault_does_not_stall_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, server: ConfmeshServer, admin: AdminClient
) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowKV2)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    await admin.put("db.password", {"$secret": "vault:secret/orders#db_password"}, env="prod", service="slow")
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.02)
            lags.append(time.perf_counter() - started - 0.02)

    ticking = asyncio.create_task(ticker())
    try:
        async with ConfigClient(server.address, environment="prod", service="slow") as client:
            assert client.config["db"]["password"] == SECRET
    finally:
        ticking.cancel()
        httpd.shutdown()
    assert len(lags) > 40 and max(lags) < 0.25, f"the loop stalled {max(lags):.2f}s while Vault answered"
