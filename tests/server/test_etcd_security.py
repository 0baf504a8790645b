"""confmesh against an etcd that demands mutual TLS and user authentication."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from confmesh.client import AdminClient, ConfigClient
from confmesh.errors import ConfmeshError
from confmesh.server import ConfmeshServer, EmbeddedEtcd, ServerSettings
from confmesh.server.etcd import EtcdCredentials
from tests.cli.test_cli import cli
from tests.conftest import etcdctl_binary

pytestmark = pytest.mark.etcd  # starts servers or an etcd of its own

PASSWORD = "s3cret-etcd-pw"  # pragma: allowlist secret


class SecureEtcd:
    def __init__(self, tmp: Path) -> None:
        ca = trustme.CA()
        self.files: dict[str, str] = {}
        for name, blob in {
            "ca": ca.cert_pem,
            "etcd_cert": (etcd := ca.issue_cert("127.0.0.1", "localhost")).cert_chain_pems[0],
            "etcd_key": etcd.private_key_pem,
            "client_cert": (client := ca.issue_cert("confmesh")).cert_chain_pems[0],
            "client_key": client.private_key_pem,
        }.items():
            (tmp / f"{name}.pem").write_bytes(blob.bytes())
            self.files[name] = str(tmp / f"{name}.pem")
        f = self.files
        self.etcd = EmbeddedEtcd(tmp / "etcd", client_scheme="https", extra_args=[
            "--cert-file", f["etcd_cert"], "--key-file", f["etcd_key"], "--client-cert-auth",
            "--trusted-ca-file", f["ca"], "--auth-token-ttl", "2",
        ])  # fmt: skip

    def ctl(self, *args: str) -> None:
        f = self.files
        subprocess.run(
            [etcdctl_binary(), f"--endpoints=https://{self.etcd.endpoint}", f"--cacert={f['ca']}",
             f"--cert={f['client_cert']}", f"--key={f['client_key']}", *args],
            check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30,
        )  # fmt: skip

    def credentials(self, *, password: str = PASSWORD, client_cert: bool = True) -> EtcdCredentials:
        f = self.files
        cert, key = (f["client_cert"], f["client_key"]) if client_cert else ("", "")
        return EtcdCredentials(ca=f["ca"], cert=cert, key=key, user="root", password=password)


@pytest.fixture
async def secure_etcd(tmp_path: Path) -> AsyncIterator[SecureEtcd]:
    secure = SecureEtcd(tmp_path)
    await secure.etcd.start()
    try:
        secure.ctl("user", "add", "root", f"--new-user-password={PASSWORD}")
        secure.ctl("auth", "enable")
        yield secure
    finally:
        await secure.etcd.stop()


def settings(secure: SecureEtcd, credentials: EtcdCredentials) -> ServerSettings:
    return ServerSettings(
        listen="127.0.0.1:0",
        etcd_endpoints=[secure.etcd.endpoint],
        etcd_credentials=credentials,
        sync_timeout=5.0,
    )


async def test_serves_from_an_etcd_with_mtls_and_auth_across_token_expiry(secure_etcd: SecureEtcd) -> None:
    server = ConfmeshServer(settings(secure_etcd, secure_etcd.credentials()))
    await server.start()
    try:
        async with (
            AdminClient(server.address) as admin,
            ConfigClient(
                server.address, environment="prod", service="api", start_from_defaults=True
            ) as client,
        ):
            written = await admin.put("pool", 5, env="prod")
            await client.wait_for_version(written.revision, timeout=10)
            await asyncio.sleep(3)  # the etcd token (TTL 2 s) has expired: renewed on the next call
            written = await admin.put("pool", 6, env="prod")
            await client.wait_for_version(written.revision, timeout=10)
            assert client.raw == {"pool": 6}
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"password": "wrong"}, "refused user 'root'"),  # pragma: allowlist secret
        ({"client_cert": False}, "unreachable"),
    ],
)
async def test_bad_etcd_credentials_fail_startup_clearly(
    secure_etcd: SecureEtcd, kwargs: dict[str, object], expected: str
) -> None:
    server = ConfmeshServer(settings(secure_etcd, secure_etcd.credentials(**kwargs)))  # type: ignore[arg-type]
    with pytest.raises(ConfmeshError, match=expected):
        await server.start()
    await server.stop()


async def test_serve_flags_for_etcd_tls_and_auth_are_validated(tmp_path: Path) -> None:
    code, _, err = await cli("127.0.0.1:1", "serve", "--etcd-user", "root")
    assert code != 0 and "need --etcd" in err
    code, _, err = await cli("127.0.0.1:1", "serve", "--etcd", "127.0.0.1:2379", "--etcd-user", "root")
    assert code != 0 and "needs a password" in err
