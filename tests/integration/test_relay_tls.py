"""A relay over mutual TLS at both ends, as deployed: the root knows the relay by its client
certificate and grants it prod only; the relay knows its instances by theirs, with its own policy,
and denies them itself."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import trustme

from confmesh.client import AdminClient, ConfigClient, TLSConfig
from confmesh.errors import ConfmeshError
from confmesh.server.app import ConfmeshServer, ServerSettings
from tests.conftest import EtcdHandle
from tests.helpers import RelayProcess, eventually

ROOT_POLICY = """identities:
  ops.example: {role: admin}
  relay.eu.example: {role: reader, scopes: [prod, "prod/*"]}
"""
RELAY_POLICY = """identities:
  orders.prod.svc: {role: service, environment: prod, service: orders}
  payments.prod.svc: {role: service, environment: prod, service: payments}
"""


def write_pki(tmp: Path) -> dict[str, str]:
    ca = trustme.CA()
    certs = {
        "server": ca.issue_cert("localhost", "127.0.0.1"),
        "ops": ca.issue_cert("ops.example"),
        "relay": ca.issue_cert("relay.eu.example"),
        "orders": ca.issue_cert("orders.prod.svc"),
        "payments": ca.issue_cert("payments.prod.svc"),
        "stranger": trustme.CA().issue_cert("orders.prod.svc"),
    }
    out = {"ca": str(tmp / "ca.pem")}
    ca.cert_pem.write_to_path(out["ca"])
    for name, cert in certs.items():
        out[f"{name}_cert"], out[f"{name}_key"] = str(tmp / f"{name}.pem"), str(tmp / f"{name}.key")
        cert.cert_chain_pems[0].write_to_path(out[f"{name}_cert"])
        cert.private_key_pem.write_to_path(out[f"{name}_key"])
    return out


def tls(pki: dict[str, str], who: str) -> TLSConfig:
    return TLSConfig(ca=pki["ca"], cert=pki[f"{who}_cert"], key=pki[f"{who}_key"])


async def test_a_relay_over_mutual_tls_carries_its_grant_and_denies_instances_itself(
    etcd: EtcdHandle, tmp_path: Path
) -> None:
    pki = write_pki(tmp_path)
    (tmp_path / "root.yaml").write_text(ROOT_POLICY)
    (tmp_path / "relay.yaml").write_text(RELAY_POLICY)
    prefix = f"/relay-tls-{uuid.uuid4().hex[:8]}"
    root = ConfmeshServer(ServerSettings(
        listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix, tls_cert=pki["server_cert"],
        tls_key=pki["server_key"], tls_client_ca=pki["ca"], policy_file=str(tmp_path / "root.yaml"),
    ))  # fmt: skip
    await root.start()
    relay = None
    try:
        async with AdminClient(root.address, tls=tls(pki, "ops"), actor="ops") as admin:
            await admin.put("pool", 7, env="prod", service="orders")
            await admin.put("secret-region", "staging-only", env="staging")
        relay = await RelayProcess(
            root.address, tmp_path / "relay-data", "eu", prefix,
            "--upstream-ca", pki["ca"],
            "--upstream-cert", pki["relay_cert"], "--upstream-key", pki["relay_key"],
            "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--tls-client-ca", pki["ca"],
            "--policy", str(tmp_path / "relay.yaml"),
        ).start()  # fmt: skip
        client: ConfigClient[Any]
        async with ConfigClient(relay.address, environment="prod", service="orders", instance_id="o1",
                                tls=tls(pki, "orders")) as client:  # fmt: skip
            assert client.get("pool") == 7
        # Denied at the relay: another service's identity, and a certificate from another CA.
        with pytest.raises(ConfmeshError, match="may not watch prod/orders"):
            async with ConfigClient(relay.address, environment="prod", service="orders", instance_id="p1",
                                    tls=tls(pki, "payments"), startup_timeout=5):  # fmt: skip
                pass
        with pytest.raises(ConfmeshError):
            async with ConfigClient(relay.address, environment="prod", service="orders", instance_id="s1",
                                    tls=tls(pki, "stranger"), startup_timeout=3):  # fmt: skip
                pass
        # The relay's grant reads prod only: staging never reached it.
        snapshot = tmp_path / "relay-data" / "mirror.pb"
        await eventually(snapshot.exists)
        persisted = snapshot.read_bytes()
        assert b"staging-only" not in persisted and b"/service/prod/orders/pool" in persisted
    finally:
        if relay is not None:
            await relay.stop()
        await root.stop()
