"""The fleet view with three replicas on one etcd: any replica answers for every instance.

Clients are spread over the replicas; `status` from each lists all of them (and `--local` its
own), a NACK on one replica is seen with its field paths on the others, a SIGKILLed replica's
instances leave the view within the lease TTL, and auto-abort counts the canaries of every
replica, deciding exactly at the threshold.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from confmesh.changes import ChangeSpec
from confmesh.client import AdminClient, ConfigClient
from confmesh.keys import Layer, Scope
from confmesh.server import ConfmeshServer
from confmesh.server.rollouts import Rollout
from tests.cli.test_cli import cli
from tests.conftest import EtcdHandle
from tests.fleet.conftest import StartReplicas
from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow
SCOPE = Scope("prod", "api")


class Api(BaseModel):
    pool: int = Field(ge=1)


class Strict(BaseModel):
    pool: int = Field(ge=1, le=20)


@pytest.fixture
async def replicas(fleet: StartReplicas) -> list[ConfmeshServer]:
    return await fleet(3, fleet_interval=0.2, fleet_ttl=2, rollout_check_interval=0.2)


async def connect(address: str, instance_id: str, schema: type[BaseModel] = Api) -> ConfigClient[Any]:
    client: ConfigClient[Any] = ConfigClient(
        address, environment="prod", service="api", schema=schema, instance_id=instance_id
    )
    await client.start()
    return client


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_every_replica_lists_every_instance_and_their_nacks(replicas: list[ConfmeshServer]) -> None:
    admins = [AdminClient(s.address) for s in replicas]
    await admins[0].put("pool", 10, env="prod", service="api")
    clients = [await connect(replicas[i % 3].address, f"api-{i}") for i in range(9)]
    strict = await connect(replicas[2].address, "api-strict", Strict)
    try:
        written = await admins[0].put("pool", 30, env="prod", service="api")

        async def all_seen() -> bool:
            for admin in admins:
                status = await admin.status()
                got = {i.instance_id: i for i in status.instances if i.connected}
                if len(got) != 10 or any(got[f"api-{n}"].acked_version != written.revision for n in range(9)):
                    return False
                nack = got["api-strict"].last_nack
                if nack.version != written.revision or list(nack.field_paths) != ["pool"]:
                    return False
            return True

        await until(all_seen)
        for n, admin in enumerate(admins):
            status = await admin.status()
            assert sorted(status.replicas) == ["replica-0", "replica-1", "replica-2"]
            held = {i.instance_id: i.server_id for i in status.instances}
            assert held["api-strict"] == "replica-2" and held[f"api-{n}"] == f"replica-{n}"
            local = await admin.status(local=True)
            assert list(local.replicas) == [f"replica-{n}"]
            assert {i.server_id for i in local.instances} == {f"replica-{n}"}
            assert len(local.instances) == 3 + (n == 2)
        code, out, _ = await cli(replicas[1].address, "status")
        assert code == 0 and "fleet: 3 replicas" in out and "api-strict" in out and "api-0 " in out
        code, out, _ = await cli(replicas[1].address, "status", "--local")
        assert code == 0 and "api-strict" not in out and "api-1 " in out and "api-0 " not in out

        # A replica that stops takes its instances out of the others' views at once (its lease
        # is revoked), and an instance shows again where it reconnects.
        await replicas[2].stop()
        stopped = time.monotonic()

        async def withdrawn() -> bool:
            for admin in admins[:2]:
                if "replica-2" in {i.server_id for i in (await admin.status()).instances}:
                    return False
            return True

        await until(withdrawn)
        assert time.monotonic() - stopped < 2, "a stopped replica's instances waited for its lease TTL"
        clients.append(await connect(replicas[0].address, "api-2"))

        async def back() -> bool:
            got = {i.instance_id: i for i in (await admins[1].status()).instances}
            return "api-2" in got and got["api-2"].connected and got["api-2"].server_id == "replica-0"

        await until(back)
    finally:
        await asyncio.gather(*(c.close() for c in [*clients, strict]))
        for admin in admins:
            await admin.close()


async def test_a_killed_replicas_instances_leave_the_view_within_its_ttl(
    replicas: list[ConfmeshServer], etcd: EtcdHandle, prefix: str
) -> None:
    async with AdminClient(replicas[0].address) as writer:
        await writer.put("pool", 10, env="prod", service="api")
    doomed = ServerProcess(etcd.endpoint, prefix, "--fleet-ttl", "2", "--fleet-interval", "0.3")
    admin = AdminClient(replicas[0].address)
    clients: list[ConfigClient[Any]] = []
    try:
        await doomed.start()
        clients = [await connect(doomed.address, f"doomed-{i}") for i in range(3)]

        async def listed() -> bool:
            status = await admin.status()
            return sum(i.instance_id.startswith("doomed-") and i.connected for i in status.instances) == 3

        await until(listed)
        for c in clients:
            await c.close()
        clients = []
        await until(lambda: _gone_listed(admin, 3))  # disconnected, still listed by its replica
        doomed.signal(signal.SIGKILL)
        killed = time.monotonic()
        await until(lambda: _gone_listed(admin, 0), timeout=10)
        assert time.monotonic() - killed < 2 + 1.5, "a dead replica's instances outlived its lease"
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await doomed.stop()
        await admin.close()


async def _gone_listed(admin: AdminClient, n: int) -> bool:
    status = await admin.status()
    return sum(i.instance_id.startswith("doomed-") for i in status.instances) == n


async def test_auto_abort_counts_the_canaries_of_every_replica_exactly_at_the_threshold(
    replicas: list[ConfmeshServer], fleet: StartReplicas
) -> None:
    # A fourth replica holds no instance of the scope: its summary does not change with the
    # rollout, yet the others must not wait for it to decide (it publishes on every rollout step).
    await fleet(1, fleet_interval=0.2, fleet_ttl=2, rollout_check_interval=0.2)
    admin = AdminClient(replicas[0].address)
    await admin.put("pool", 10, env="prod", service="api")
    slice_ = Rollout("bigger", SCOPE, {"pool": 50}, 50)
    candidates = [f"api-{i:03d}" for i in range(200)]
    canaries = [i for i in candidates if slice_.includes(i)][:21]
    others = [i for i in candidates if not slice_.includes(i)][:10]
    # 20 canaries on three replicas, 4 of them NACKing (20%, the limit: not over it).
    strict = set(canaries[:4])
    placed = [(i, replicas[n % 3].address) for n, i in enumerate([*canaries[:20], *others])]
    clients = [await connect(addr, i, Strict if i in strict else Api) for i, addr in placed]
    extra: ConfigClient[Any] | None = None
    try:
        started = await admin.start_rollout("bigger", "prod", "api", set={"pool": 50}, percent=50,
                                            max_nack_rate=0.2)  # fmt: skip

        async def nacks_seen(n: int) -> bool:
            for replica in replicas:
                status = await AdminClient(replica.address).status()
                if sum(i.last_nack.version >= started.revision for i in status.instances) != n:
                    return False
            return True

        await until(lambda: nacks_seen(4))
        await asyncio.sleep(1.5)  # several check and publish intervals on every replica
        (info,) = await admin.rollouts()
        assert info.state == "active" and (info.canary_instances, info.canary_nacked) == (20, 4)

        # One more NACKing canary, on whichever replica: 5 of 21 is over the limit.
        extra = await connect(replicas[1].address, canaries[20], Strict)

        async def aborted() -> bool:
            (info,) = await admin.rollouts()
            return info.state == "aborted"

        await until(aborted, timeout=10)
        (info,) = await admin.rollouts()
        assert info.abort_reason.startswith("auto-abort: 5 of 21 canary instances rejected")
        audit = await admin.audit(limit=20)
        assert sum("AbortRollout" in r.source for r in audit.records) == 1  # decided once, fleet-wide
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        if extra is not None:
            await extra.close()
        await admin.close()


class Moded(BaseModel):
    pool: int
    mode: Literal["a"]


async def test_scope_status_says_who_runs_which_version_and_why_the_others_refused(
    replicas: list[ConfmeshServer],
) -> None:
    admin = AdminClient(replicas[0].address)
    await admin.apply(
        [ChangeSpec(Layer.svc("prod", "api"), "pool", 10), ChangeSpec(Layer.svc("prod", "api"), "mode", "a")]
    )
    schemas: list[type[BaseModel]] = [Api] * 6 + [Strict] * 3 + [Moded]
    clients = [await connect(replicas[n % 3].address, f"api-{n}", schema) for n, schema in enumerate(schemas)]
    try:
        first = (await admin.scope_status("prod", "api")).current_version
        change = await admin.apply(
            [
                ChangeSpec(Layer.svc("prod", "api"), "pool", 30),
                ChangeSpec(Layer.svc("prod", "api"), "mode", "b"),
            ]
        )

        async def answered() -> bool:
            status = await AdminClient(replicas[1].address).scope_status("prod", "api", change.revision)
            return bool(status.versions) and (status.versions[0].acked, status.versions[0].nacked) == (6, 4)

        await until(answered)
        status = await AdminClient(replicas[2].address).scope_status("prod", "api")
        assert (status.instances, len(status.replicas), status.current_version) == (10, 3, change.revision)
        newest, running = status.versions
        assert (newest.version, newest.acked, newest.pending, newest.nacked) == (change.revision, 6, 0, 4)
        assert [(r.field_path, r.instances) for r in newest.rejections] == [("pool", 3), ("mode", 1)]
        assert sorted(newest.rejections[0].example_instances) == ["api-6", "api-7", "api-8"]
        assert "less than or equal to 20" in newest.rejections[0].example_error
        assert (running.version, running.acked, running.nacked) == (first, 4, 0)  # the refusers run it

        code, out, _ = await cli(replicas[1].address, "status", "--scope", "prod/api")
        assert code == 0, out
        assert "prod/api: 10 connected instance(s) on 3 replica(s)" in out
        assert f"version {change.revision}: 6 ACKed, 0 pending, 4 NACKed" in out
        assert "rejected at pool by 3 instance(s) (api-6, api-7, api-8)" in out
        assert "rejected at mode by 1 instance(s) (api-9)" in out
        code, out, _ = await cli(
            replicas[1].address, "status", "--scope", "prod/api", "--version", str(first)
        )
        assert code == 0 and f"version {first}: 4 ACKed" in out and f"version {change.revision}:" not in out
        code, out, err = await cli(replicas[1].address, "status", "--scope", "prod")
        assert code == 1 and "ENV/SERVICE" in out + err
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await admin.close()
