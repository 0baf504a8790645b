"""Identities and access control: mTLS identities and bearer tokens against a policy."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
import yaml

from confmesh.client import AdminClient, ConfigClient, TLSConfig
from confmesh.errors import ConfmeshError, InvalidArgument, PermissionDenied, Unauthenticated
from confmesh.keys import Layer, Scope
from confmesh.server import ConfmeshServer, ServerSettings
from confmesh.server.access import Grant, Role, load_policy
from tests.cli.test_cli import cli
from tests.conftest import EtcdHandle
from tests.helpers import eventually

IDENTITIES = ("ops.example.test", "orders.prod.svc", "payments.prod.svc", "intruder.test")


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        ca = trustme.CA()
        self.ca = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        server = ca.issue_cert("localhost", "127.0.0.1")
        self.server_cert, self.server_key = tmp / "server.pem", tmp / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        for name in IDENTITIES:
            cert = ca.issue_cert(name)
            cert.cert_chain_pems[0].write_to_path(str(tmp / f"{name}.pem"))
            cert.private_key_pem.write_to_path(str(tmp / f"{name}.key"))

    def tls(self, identity: str | None = None) -> TLSConfig:
        if identity is None:
            return TLSConfig(ca=str(self.ca))
        return TLSConfig(
            ca=str(self.ca), cert=str(self.tmp / f"{identity}.pem"), key=str(self.tmp / f"{identity}.key")
        )


POLICY = {
    "identities": {
        "ops.example.test": {"role": "admin"},
        "orders.prod.svc": {"role": "service", "environment": "prod", "service": "orders"},
        "payments.prod.svc": {"role": "service", "environment": "prod", "service": "payments"},
    }
}


@pytest.fixture
async def secured(
    etcd: EtcdHandle, prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[ConfmeshServer, Pki, Path]]:
    pki = Pki(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    tls = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key), "tls_client_ca": str(pki.ca)}
    settings = ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix,
                              policy_file=str(policy), heartbeat_interval=1.0, **tls)  # fmt: skip
    server = ConfmeshServer(settings)
    server.access.reload_interval = 0.1
    await server.start()
    try:
        yield server, pki, policy
    finally:
        await server.stop()


async def test_a_service_identity_watches_only_its_own_config(
    secured: tuple[ConfmeshServer, Pki, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, pki, policy = secured
    monkeypatch.setenv("ORDERS_DB", "orders-db-password")
    async with AdminClient(server.address, tls=pki.tls("ops.example.test")) as admin:
        await admin.put("db.password", {"$secret": "env:ORDERS_DB"}, env="prod", service="orders")
        await admin.put("db.password", {"$secret": "env:PAYMENTS_DB"}, env="prod", service="payments")
    orders_tls = pki.tls("orders.prod.svc")
    async with ConfigClient(server.address, environment="prod", service="orders", tls=orders_tls) as own:
        assert own.version > 0
        # The same certificate may not watch (or read) another service's config.
        with pytest.raises(
            PermissionDenied,
            match=re.escape("orders.prod.svc (service prod/orders) may not watch prod/payments"),
        ):
            async with ConfigClient(server.address, environment="prod", service="payments", tls=orders_tls):
                pass
        async with AdminClient(server.address, tls=orders_tls) as as_orders:
            with pytest.raises(PermissionDenied):
                await as_orders.snapshot("prod", "payments")
            with pytest.raises(PermissionDenied, match="may not write service/prod/orders"):
                await as_orders.put("db.pool", 5, env="prod", service="orders")
        # A certificate the policy does not name has no grant; no certificate at all: unauthenticated.
        with pytest.raises(PermissionDenied, match=re.escape("intruder.test (no grant)")):
            async with ConfigClient(server.address, environment="prod", service="orders",
                                    tls=pki.tls("intruder.test")):  # fmt: skip
                pass
        # The denial is in the audit log, with who and what.
        async with AdminClient(server.address, tls=pki.tls("ops.example.test")) as admin:
            records = (await admin.audit(actor="orders.prod.svc")).records
            assert {r.source for r in records} >= {"denied:Watch", "denied:GetSnapshot", "denied:Put"}
            assert any("may not watch prod/payments" in r.reason for r in records)

        # Withdrawing the grant ends the open stream on the next policy reload.
        policy.write_text(yaml.safe_dump({"identities": {"ops.example.test": {"role": "admin"}}}))
        await eventually(lambda: isinstance(own._fatal, PermissionDenied), timeout=10)


async def test_tokens_carry_their_grants_and_can_be_revoked(
    etcd: EtcdHandle, prefix: str, server: ConfmeshServer, tmp_path: Path
) -> None:
    # A policy-enforcing server on plaintext loopback: tokens only.
    policy = tmp_path / "policy.yaml"
    policy.write_text("identities: {}\n")
    settings = ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix,
                              policy_file=str(policy), heartbeat_interval=1.0)  # fmt: skip
    secured = ConfmeshServer(settings)
    await secured.start()
    try:
        # Bootstrap the first admin token straight into etcd, then use it.
        code, out, err = await cli(secured.address, "token", "create", "root", "--role", "admin",
                                   "--etcd", etcd.endpoint, "--prefix", prefix)  # fmt: skip
        assert code == 0, err
        root = out.strip()
        assert root.startswith("cmt_")
        async with AdminClient(secured.address, token=root) as admin:
            ci = await admin.create_token(
                "ci", "writer", scopes=["staging/*"], flags=["staging"], reason="CI"
            )
            viewer = await admin.create_token("viewer", "reader", scopes=["*"])
            svc = await admin.create_token("orders", "service", env="prod", service="orders")
            with pytest.raises(InvalidArgument, match="a service grant needs its environment and service"):
                await admin.create_token("bad", "service", scopes=["*"])
            assert [t.name for t in await admin.list_tokens()] == ["ci", "orders", "root", "viewer"]

        async with AdminClient(secured.address, token=viewer) as as_viewer:
            with pytest.raises(
                PermissionDenied, match=re.escape("token:viewer (reader scopes *) may not write env/prod")
            ):
                await as_viewer.put("x", 1, env="prod")
            assert (await as_viewer.resolve("prod", "orders")).version >= 0
        async with AdminClient(secured.address, token=ci) as as_ci:
            with pytest.raises(PermissionDenied, match="may not write env/prod"):
                await as_ci.put("x", 1, env="prod")
            with pytest.raises(PermissionDenied, match="may not write flags/prod"):
                await as_ci.put_flags("prod", {"f": {"variants": {"on": True}, "default_variant": "on"}})
            written = await as_ci.put("x", 2, env="staging", service="orders", reason="deploy")
            await as_ci.put_flags("staging", {"f": {"variants": {"on": True}, "default_variant": "on"}})
            records = (await as_ci.audit(env="staging", service="orders")).records
            (record,) = [r for r in records if r.revision == written.revision]
            assert record.actor == "token:ci"  # the authenticated identity, not the declared actor
        with pytest.raises(Unauthenticated, match="invalid or revoked bearer token"):
            async with AdminClient(secured.address, token=ci + "x") as forged:
                await forged.status()
        with pytest.raises(Unauthenticated, match="requires a client certificate or a bearer token"):
            async with AdminClient(secured.address, token="") as nobody:
                await nobody.status()

        # A service token watches its own scope; revoking it ends the stream.
        client = ConfigClient(secured.address, environment="prod", service="orders", token=svc,
                              start_from_defaults=True)  # fmt: skip
        async with client:
            await eventually(lambda: client.connected, timeout=5)
            code, out, err = await cli(secured.address, "--token", root, "token", "revoke", "orders")
            assert code == 0, err
            await eventually(lambda: isinstance(client._fatal, ConfmeshError), timeout=10)
    finally:
        await secured.stop()


def test_policy_files_are_validated_with_their_place(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("identities:\n  a.svc: {role: service, environment: prod}\n")
    with pytest.raises(InvalidArgument, match=r"identities\.a\.svc"):
        load_policy(str(bad))
    bad.write_text("identities:\n  a.svc: {role: owner}\n")
    with pytest.raises(InvalidArgument, match="role"):
        load_policy(str(bad))


def test_grant_scopes() -> None:
    writer = Grant(role=Role.WRITER, scopes=("prod/orders", "staging/*", "defaults"), flags=("staging",))
    assert writer.can_write(Layer.svc("prod", "orders")) and not writer.can_write(
        Layer.svc("prod", "payments")
    )
    assert writer.can_write(Layer.svc("staging", "x")) and not writer.can_write(Layer.env("staging"))
    assert writer.can_write(Layer.defaults()) and writer.can_write(Layer.flags("staging"))
    assert not writer.can_write(Layer.flags("prod"))
    assert writer.can_read(Scope("prod", "orders")) and not writer.can_read(Scope("prod", "payments"))
    service = Grant(role=Role.SERVICE, environment="prod", service="orders")
    assert service.can_watch(Scope("prod", "orders")) and not service.can_watch(Scope("prod", "payments"))
    assert not service.can_operate() and not service.can_write(Layer.svc("prod", "orders"))
