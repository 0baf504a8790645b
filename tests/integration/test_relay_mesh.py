"""Relays, end to end with real processes on a real etcd: a root `confmesh serve`, two region relays
and one relay chained below a region, ConfigClients spread below them.

A write reaches every instance at the root's version and hash; `status` at the root lists every
instance with the relay path it is behind; the root's auto-abort counts canaries below relays; a
relay SIGKILLed and restarted with the root unreachable serves its persisted snapshot, stale; a cut
link (a TCP proxy between relay and root) ends with every instance on the root's latest version,
resumed, not re-listed; an instance fails over from a dead relay to another without a snapshot when
it is current; a relay whose identity reads only staging never receives prod.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc.aio
import pytest
import pytest_asyncio
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field

from confmesh.client import AdminClient, ConfigClient
from confmesh.errors import ConfmeshError
from confmesh.keys import Scope
from confmesh.server.app import ConfmeshServer, ServerSettings
from confmesh.server.embedded_etcd import free_port
from tests.conftest import EtcdHandle
from tests.helpers import RawWatch, RelayProcess, TcpProxy, eventually

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

SECRET = "prod-only-value-5d1c"  # pragma: allowlist secret


@dataclass
class Mesh:
    root: ConfmeshServer
    admin: AdminClient
    relays: dict[str, RelayProcess]
    clients: dict[str, list[ConfigClient[Any]]] = field(default_factory=dict)
    tmp: Path = Path()
    prefix: str = ""

    def all_clients(self) -> list[ConfigClient[Any]]:
        return [c for cs in self.clients.values() for c in cs]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(etcd: EtcdHandle, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    prefix = f"/mesh-{uuid.uuid4().hex[:8]}"
    root = ConfmeshServer(
        ServerSettings(
            listen="127.0.0.1:0",
            etcd_endpoints=[etcd.endpoint],
            prefix=prefix,
            heartbeat_interval=1.0,
            fleet=True,
            fleet_interval=0.3,
            rollout_check_interval=0.3,
            http_listen="127.0.0.1:0",
            relay_gone_ttl=2.0,
        )
    )
    await root.start()
    admin = AdminClient(root.address, actor="tests")
    await admin.__aenter__()
    await admin.put("pool", 10, env="prod")
    await admin.put("secret", SECRET, env="prod", service="orders")
    await admin.put("pool", 3, env="staging")
    relays: dict[str, RelayProcess] = {}
    eu = relays["eu"] = await RelayProcess(root.address, tmp / "eu", "eu", prefix).start()
    relays["us"] = await RelayProcess(root.address, tmp / "us", "us", prefix).start()
    relays["eu-zone-a"] = await RelayProcess(eu.address, tmp / "eu-zone-a", "eu-zone-a", prefix).start()
    mesh = Mesh(root, admin, relays, tmp=tmp, prefix=prefix)
    try:
        for name, relay in relays.items():
            mesh.clients[name] = []
            for i in range(10):
                client: ConfigClient[Any] = ConfigClient(
                    relay.address, environment="prod", service="orders", instance_id=f"{name}-{i}"
                )
                await client.start()
                mesh.clients[name].append(client)
        yield mesh
    finally:
        for client in mesh.all_clients():
            await client.close()
        for relay in relays.values():
            await relay.stop()
        await admin.__aexit__(None, None, None)
        await root.stop()


async def test_a_write_reaches_every_instance_below_every_relay_at_the_roots_version(mesh: Mesh) -> None:
    result = await mesh.admin.put("pool", 42, env="prod", service="orders")
    await eventually(lambda: all(c.get("pool") == 42 for c in mesh.all_clients()), timeout=15)
    snapshot = mesh.root.plane.current(Scope("prod", "orders"))
    root_view = await mesh.admin.resolve("prod", "orders")
    assert {c.version for c in mesh.all_clients()} == {root_view.version} == {result.revision}
    assert {c.hash for c in mesh.all_clients()} == {root_view.hash}
    assert (snapshot.version, snapshot.hash) == (result.revision, root_view.hash)


async def test_status_at_the_root_lists_every_instance_with_its_relay_path(mesh: Mesh) -> None:
    async def listed() -> dict[str, str]:
        status = await mesh.admin.status()
        return {i.instance_id: i.relay_path for i in status.instances if i.connected}

    want = {
        f"{name}-{i}": path
        for name, path in (("eu", "eu"), ("us", "us"), ("eu-zone-a", "eu/eu-zone-a"))
        for i in range(10)
    }
    seen: dict[str, str] = {}

    async def check() -> bool:
        seen.update(await listed())
        return all(seen.get(k) == v for k, v in want.items())

    for _ in range(100):
        if await check():
            break
        await asyncio.sleep(0.2)
    assert {k: seen.get(k) for k in want} == want
    # The console's fleet page shows the same paths.
    base = mesh.root.http_url.replace("127.0.0.1", "localhost")
    url = f"{base}/console/api/fleet?env=prod&service=orders"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        page = await resp.json()
    paths = {i["instance_id"]: i["relay_path"] for i in page["instances"]}
    assert {k: paths.get(k) for k in want} == want, page
    version = (await mesh.admin.resolve("prod", "orders")).version
    status = await mesh.admin.status()
    acked = [i for i in status.instances if i.relay_path and i.acked_version == version]
    assert len(acked) >= 30
    shown = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "confmesh.cli", "--server", mesh.root.address, "status", stdout=subprocess.PIPE
    )
    out = (await shown.communicate())[0].decode()
    assert "relay eu/eu-zone-a: serving" in out and "VIA" in out, out
    assert re.search(r"eu-zone-a-3\s+prod/orders\s+\d+\s+\d+\s+connected\s+eu/eu-zone-a", out), out
    relays = {r.path: (r.connected, r.stale_reason) for r in status.relays}
    assert {p: relays.get(p) for p in ("eu", "us", "eu/eu-zone-a")} == dict.fromkeys(
        ("eu", "us", "eu/eu-zone-a"), (True, "")
    )


async def test_a_relay_serves_flagd_sync_from_what_it_carries(mesh: Mesh) -> None:
    flag = {"variants": {"on": True, "off": False}, "default_variant": "on"}
    await mesh.admin.put_flags("prod", {"relayed-flag": flag})
    async with grpc.aio.insecure_channel(mesh.relays["eu-zone-a"].address) as channel:
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)

        async def has_flag() -> bool:
            answer = await stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector="prod"))
            return "relayed-flag" in answer.flag_configuration

        for _ in range(50):
            if await has_flag():
                break
            await asyncio.sleep(0.2)
        assert await has_flag()


class Checkout(BaseModel):
    model_config = ConfigDict(extra="allow")
    pool: int = Field(lt=100)


async def test_the_roots_auto_abort_counts_canaries_below_relays(mesh: Mesh) -> None:
    await mesh.admin.put("pool", 5, env="prod", service="checkout")
    clients = []
    try:
        for relay in ("us", "eu-zone-a"):
            for i in range(4):
                c = ConfigClient(
                    mesh.relays[relay].address,
                    environment="prod",
                    service="checkout",
                    schema=Checkout,
                    instance_id=f"checkout-{relay}-{i}",
                )
                await c.start()
                clients.append(c)
        await mesh.admin.start_rollout(
            "huge-pool", "prod", "checkout", set={"pool": 1000}, percent=100, max_nack_rate=0.2
        )

        async def aborted() -> Any:
            for r in await mesh.admin.rollouts():
                if r.name == "huge-pool" and r.state == "aborted":
                    return r
            return None

        found = None
        for _ in range(100):
            found = await aborted()
            if found is not None:
                break
            await asyncio.sleep(0.2)
        assert found is not None, await mesh.admin.rollouts()
        # Every canary is below a relay: the guard decided on relayed NACKs alone (whichever relay's
        # report arrived first may already pass the limit).
        counted = re.search(r"(\d+) of (\d+) canary instances", found.abort_reason)
        assert counted is not None and 4 <= int(counted[2]) <= 8, found.abort_reason
        assert all(c.get("pool") == 5 for c in clients)
    finally:
        for c in clients:
            await c.close()


async def test_an_instance_that_is_current_fails_over_to_another_relay_and_is_sent_nothing(
    mesh: Mesh,
) -> None:
    client = mesh.clients["eu"][0]
    for target in (mesh.relays["us"].address, mesh.relays["eu-zone-a"].address, mesh.root.address):
        watch = RawWatch(target)
        try:
            watch.subscribe(
                "prod", "orders", version=client.version, hash_=client.hash, instance_id="moved-0"
            )
            first = await watch.next_message(timeout=10)
            assert first.WhichOneof("kind") == "heartbeat", first
        finally:
            await watch.close()


async def test_an_instance_fails_over_from_a_dead_relay_to_another_without_a_new_snapshot(
    mesh: Mesh, tmp_path: Path
) -> None:
    first = await RelayProcess(mesh.root.address, tmp_path / "f1", "fail-1", mesh.prefix).start()
    second = await RelayProcess(mesh.root.address, tmp_path / "f2", "fail-2", mesh.prefix).start()
    try:
        # One gRPC target with both relays: pick-first connects to the first while it lives.
        target = f"ipv4:{first.address},{second.address}"
        async with ConfigClient(target, environment="prod", service="orders", instance_id="mover") as client:
            changes: list[int] = []
            client.on_change(lambda old, new: changes.append(client.version))
            version, hash_ = client.version, client.hash
            first.kill()

            async def behind(path: str) -> bool:
                status = await mesh.admin.status()
                return any(i.instance_id == "mover" and i.connected and i.relay_path == path
                           for i in status.instances)  # fmt: skip

            for _ in range(100):
                if await behind("fail-2"):
                    break
                await asyncio.sleep(0.2)
            assert await behind("fail-2")
            assert (client.version, client.hash) == (version, hash_) and changes == []
    finally:
        await first.stop()
        await second.stop()


async def test_a_relay_refuses_scopes_it_does_not_carry_and_carries_no_prod_for_a_staging_identity(
    mesh: Mesh, tmp_path: Path
) -> None:
    root = mesh.root
    # A policy-enforcing root on the same etcd; the staging relay holds a staging reader's token.
    policy = tmp_path / "policy.yaml"
    policy.write_text("identities: {}\n")
    guarded = ConfmeshServer(
        ServerSettings(
            listen="127.0.0.1:0", etcd_endpoints=[root.endpoints], prefix=mesh.prefix, policy_file=str(policy)
        )
    )
    await guarded.start()
    relay = None
    try:
        from confmesh.server.access import Grant, Role, new_token
        from confmesh.server.records import store_token

        record, token = new_token(
            "staging-relay", Grant(role=Role.READER, scopes=("staging", "staging/*")), "t"
        )
        assert guarded.etcd is not None
        await store_token(guarded.etcd, guarded.layout, record, actor="tests", reason="relay")
        relay = await RelayProcess(
            guarded.address, tmp_path / "staging", "staging-1", mesh.prefix, "--token", token
        ).start()
        async with ConfigClient(relay.address, environment="staging", service="api", instance_id="s1") as c:
            assert c.get("pool") == 3
            await mesh.admin.put("pool", 4, env="staging")
            await eventually(lambda: c.get("pool") == 4, timeout=10)
        with pytest.raises(ConfmeshError, match="does not carry prod/orders"):
            async with ConfigClient(
                relay.address, environment="prod", service="orders", instance_id="p1", startup_timeout=5
            ):
                pass
        await mesh.admin.put("secret", SECRET + "-2", env="prod", service="orders")
        await asyncio.sleep(1.5)
        persisted = (tmp_path / "staging" / "mirror.pb").read_bytes()
        assert b"/config/env/staging/" in persisted
        assert SECRET.encode() not in persisted and b"/env/prod/" not in persisted
        # Asking for prod explicitly is refused at the root.
        denied = await RelayProcess(
            guarded.address,
            tmp_path / "denied",
            "denied-1",
            mesh.prefix,
            "--token",
            token,
            "--scopes",
            "prod/*",
        ).start()
        await eventually(lambda: "PERMISSION_DENIED" in denied.logged(), timeout=10)
        await denied.stop()
    finally:
        if relay is not None:
            await relay.stop()
        await guarded.stop()


async def test_a_cut_link_ends_with_every_instance_current_resumed_not_relisted(
    mesh: Mesh, tmp_path: Path
) -> None:
    proxy = await TcpProxy(mesh.root.address).mend()
    metrics_port, http_port = free_port(), free_port()
    relay = await RelayProcess(
        proxy.address, tmp_path / "cut", "cut-1", mesh.prefix,
        "--metrics-listen", f"127.0.0.1:{metrics_port}", "--http-listen", f"127.0.0.1:{http_port}",
    ).start()  # fmt: skip
    await mesh.admin.put_flags(
        "prod", {"cut-flag": {"variants": {"on": True, "off": False}, "default_variant": "on"}}
    )

    async def ofrep() -> tuple[int, Any, str]:
        url = f"http://localhost:{http_port}/environments/prod/ofrep/v1/evaluate/flags/cut-flag"
        async with aiohttp.ClientSession() as session, session.post(url, json={"context": {}}) as resp:
            return resp.status, await resp.json(), resp.headers.get("Confmesh-Stale", "")

    for _ in range(50):
        if (await ofrep())[0] == 200:
            break
        await asyncio.sleep(0.2)
    status, body, stale = await ofrep()
    assert (status, body["value"], stale) == (200, True, ""), (status, body, stale)

    def metric(name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))

    try:
        clients = []
        for i in range(5):
            c: ConfigClient[Any] = ConfigClient(
                relay.address, environment="prod", service="orders", instance_id=f"cut-{i}"
            )
            await c.start()
            clients.append(c)
        await proxy.cut()
        for n in range(3):
            await mesh.admin.put("cut.step", n, env="prod", service="orders")
        await eventually(
            lambda: "unreachable since" in relay.logged() or "lost upstream" in relay.logged(), timeout=15
        )
        assert all(c.get("cut.step") is None for c in clients)
        assert await asyncio.to_thread(metric, "confmesh_stale") == 1
        assert await asyncio.to_thread(metric, "confmesh_relay_upstream_lost_seconds") > 0
        status, body, stale = await ofrep()  # still answered, from what it had, and says so
        assert status == 200 and body["value"] is True and "unreachable since" in stale, (status, stale)

        async def in_view() -> tuple[int, bool | None]:
            status = await mesh.admin.status()
            below = sum(i.relay_path == "cut-1" and i.connected for i in status.instances)
            relay = next((r.connected for r in status.relays if r.path == "cut-1"), None)
            return below, relay

        # Its subtree leaves the view within the TTL (2 s here) ...
        for _ in range(50):
            if await in_view() == (0, None):
                break
            await asyncio.sleep(0.2)
        assert await in_view() == (0, None)
        await proxy.mend()
        latest = (await mesh.admin.resolve("prod", "orders")).version
        await eventually(
            lambda: all(c.version == latest and c.get("cut.step") == 2 for c in clients), timeout=20
        )
        assert "resumed from upstream" in relay.logged()
        # ... and comes back when the relay does.
        for _ in range(50):
            if await in_view() == (5, True):
                break
            await asyncio.sleep(0.2)
        assert await in_view() == (5, True)
        assert await asyncio.to_thread(metric, "confmesh_relay_lists") == 1
        assert await asyncio.to_thread(metric, "confmesh_stale") == 0
        for c in clients:
            await c.close()
    finally:
        await relay.stop()
        await proxy.cut()


async def test_a_relay_restarted_without_its_upstream_serves_its_persisted_snapshot_stale(
    mesh: Mesh, tmp_path: Path
) -> None:
    proxy = await TcpProxy(mesh.root.address).mend()
    data = tmp_path / "restart"
    relay = await RelayProcess(proxy.address, data, "restart-1", mesh.prefix).start()
    async with ConfigClient(relay.address, environment="prod", service="orders", instance_id="r-0") as c:
        version, pool = c.version, c.get("pool")
    await asyncio.sleep(0.5)  # persisted
    relay.kill()
    assert relay.proc is not None
    await relay.proc.wait()
    await proxy.cut()
    again = await RelayProcess(proxy.address, data, "restart-1", mesh.prefix).start()
    try:
        watch = RawWatch(again.address)
        watch.subscribe("prod", "orders", instance_id="r-1")
        snapshot = await watch.next_snapshot(timeout=10)
        assert snapshot.version == version and snapshot.stale
        await watch.close()
        async with ConfigClient(again.address, environment="prod", service="orders", instance_id="r-2") as c:
            assert c.get("pool") == pool and c.version == version
    finally:
        await again.stop()
