"""`status` tells one truth after a server restart: instances that resume at the current version are
ACKed at it, in the table, the summary and `status --scope` alike."""

from __future__ import annotations

import json

from confmesh.client import AdminClient, ConfigClient
from confmesh.server import ConfmeshServer, ServerSettings
from tests.cli.test_cli import cli
from tests.conftest import EtcdHandle
from tests.helpers import eventually


async def test_clients_resumed_after_a_restart_read_as_acked_everywhere(
    etcd: EtcdHandle, prefix: str
) -> None:
    first = ConfmeshServer(
        ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix)
    )
    await first.start()
    port = first.port
    async with AdminClient(first.address) as admin:
        version = (await admin.put("pool", 5, env="prod")).revision
    clients = [
        ConfigClient(
            first.address,
            environment="prod",
            service="orders",
            instance_id=f"orders-{i}",
            backoff_initial=0.05,
            backoff_max=0.2,
        )
        for i in range(2)
    ]
    for client in clients:
        await client.start()
    await first.stop()  # SIGTERM's path: drain and stop
    second = ConfmeshServer(
        ServerSettings(listen=f"127.0.0.1:{port}", etcd_endpoints=[etcd.endpoint], prefix=prefix)
    )
    await second.start()
    try:
        await eventually(lambda: sum(r.connected for r in second.ledger.records()) == 2, timeout=10)
        code, out, err = await cli(second.address, "status")
        assert code == 0, err
        assert f"prod/orders  version {version}: 2 ACKed, 0 NACKed, 0 pending" in out, out
        rows = [line.split() for line in out.splitlines() if line.startswith("orders-")]
        assert [(r[2], r[3]) for r in rows] == [(str(version), str(version))] * 2, out
        code, out, err = await cli(second.address, "status", "--scope", "prod/orders")
        assert code == 0, err
        assert f"version {version}: 2 ACKed, 0 pending, 0 NACKed" in out, out
        code, out, _ = await cli(second.address, "status", "--json")
        instances = json.loads(out)["instances"]
        assert {(int(i["acked_version"]), int(i["sent_version"])) for i in instances} == {(version, version)}
    finally:
        for client in clients:
            await client.close()
        await second.stop()
