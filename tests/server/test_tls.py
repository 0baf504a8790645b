"""TLS and mutual TLS between clients (SDK and CLI) and the server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trustme

from confmesh.client import AdminClient, ConfigClient, StartupError, TLSConfig, Unavailable
from confmesh.server import ConfmeshServer, ServerSettings
from confmesh.server.app import is_loopback
from tests.cli.test_cli import cli
from tests.conftest import EtcdHandle


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("orders.prod.svc")
    stranger = trustme.CA().issue_cert("intruder")
    files = {
        "ca": ca.cert_pem, "server_cert": server.cert_chain_pems[0], "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0], "client_key": client.private_key_pem,
        "stranger_cert": stranger.cert_chain_pems[0], "stranger_key": stranger.private_key_pem,
    }  # fmt: skip
    out = {}
    for name, blob in files.items():
        (tmp_path / f"{name}.pem").write_bytes(blob.bytes())
        out[name] = str(tmp_path / f"{name}.pem")
    return out


async def start(etcd: EtcdHandle, prefix: str, pki: dict[str, str], *, mutual: bool) -> ConfmeshServer:
    server = ConfmeshServer(ServerSettings(
        listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix, tls_cert=pki["server_cert"],
        tls_key=pki["server_key"], tls_client_ca=pki["ca"] if mutual else ""))  # fmt: skip
    await server.start()
    return server


async def test_tls_clients_need_the_ca(etcd: EtcdHandle, prefix: str, pki: dict[str, str]) -> None:
    server = await start(etcd, prefix, pki, mutual=False)
    try:
        tls = TLSConfig(ca=pki["ca"])
        async with AdminClient(server.address, tls=tls) as admin:
            await admin.put("n", 1, env="prod")
        async with ConfigClient(server.address, environment="prod", service="api", tls=tls) as client:
            assert client.raw == {"n": 1}
        async with AdminClient(server.address, timeout=2) as plaintext:
            with pytest.raises(Unavailable):
                await plaintext.status()
        code, out, _ = await cli(
            server.address, "--tls-ca", pki["ca"], "get", "n", "--env", "prod", "--service", "api"
        )
        assert (code, out.strip()) == (0, "1")
    finally:
        await server.stop()


async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    etcd: EtcdHandle, prefix: str, pki: dict[str, str]
) -> None:
    server = await start(etcd, prefix, pki, mutual=True)
    try:
        good = TLSConfig(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
        async with AdminClient(server.address, tls=good) as admin:
            await admin.put("n", 2, env="prod")
        for bad in (
            TLSConfig(ca=pki["ca"]),
            TLSConfig(ca=pki["ca"], cert=pki["stranger_cert"], key=pki["stranger_key"]),
        ):
            with pytest.raises(StartupError):
                async with ConfigClient(
                    server.address, environment="prod", service="api", tls=bad, startup_timeout=1.0
                ):
                    pass
        code, _, err = await cli(server.address, "--tls-ca", pki["ca"], "status")
        assert code == 1 and "unavailable" in err
        code, out, _ = await cli(
            server.address,
            "--tls-ca",
            pki["ca"],
            "--tls-cert",
            pki["client_cert"],
            "--tls-key",
            pki["client_key"],
            "status",
        )
        assert code == 0 and "serving" in out
    finally:
        await server.stop()


def test_plaintext_off_loopback_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    assert is_loopback("127.0.0.1:7070") and is_loopback("127.9.9.9:1") and is_loopback("[::1]:7070")
    assert is_loopback("localhost:7070")
    assert not is_loopback("0.0.0.0:7070") and not is_loopback("10.1.2.3:7070") and not is_loopback("db:7070")
    caplog.set_level(logging.WARNING, logger="confmesh.server.app")
    # Checked without binding anything: tests only ever listen on loopback.
    assert ConfmeshServer(ServerSettings(listen="0.0.0.0:7070"))._server_credentials() is None
    assert any("PLAINTEXT on 0.0.0.0:7070" in r.getMessage() for r in caplog.records)
