"""Failure modes with real etcd and real servers; every test is bounded in time."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from confmesh.client import AdminClient, ConfigClient, StartupError, Unavailable
from confmesh.server import ConfmeshServer, EmbeddedEtcd, ServerSettings
from confmesh.v1 import config_pb2
from tests.conftest import EtcdHandle
from tests.helpers import RawWatch, eventually
from tests.reliability.conftest import ServerProcess
from tests.reliability.history import assert_converged, check_history, etcd_compact, etcd_put


class Settings(BaseModel):
    n: int = 0
    blob: str = ""


def client(target: str, name: str, **kw: Any) -> ConfigClient[Settings]:
    options: dict[str, Any] = {"backoff_initial": 0.05, "backoff_max": 0.5, "history_size": 10_000}
    return ConfigClient(
        target, environment="prod", service="api", schema=Settings, instance_id=name, **(options | kw)
    )


async def test_etcd_down_serves_last_state_marked_stale_and_converges_when_back(
    private_etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    ep = private_etcd.endpoint
    server = ConfmeshServer(ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[ep], prefix="/cm"))
    await server.start()
    try:
        async with AdminClient(server.address) as admin:
            await admin.put("n", 1, env="prod")
            first = client(server.address, "before")
            await first.start()
            assert first.config.n == 1 and not first.server_stale

            private_etcd.kill()
            await eventually(lambda: first.server_stale, timeout=10)
            started = time.monotonic()
            with pytest.raises(Unavailable, match="unreachable"):
                await admin.put("n", 2, env="prod")
            assert time.monotonic() - started < 5  # fails fast, with a clear message
            assert (await admin.status()).stale

            # A client that connects now still gets the last state, marked stale.
            late = client(server.address, "during")
            await late.start()
            assert late.config.n == 1 and late.server_stale

            back = EmbeddedEtcd(
                private_etcd.data_dir, client_port=private_etcd.client_port, peer_port=private_etcd.peer_port
            )
            await back.start()
            try:
                # A write straight to etcd the moment it is back: nobody may miss it.
                await etcd_put([ep], "/cm/config/env/prod/n", "3")
                await eventually(lambda: not server.source.stale, timeout=15)  # type: ignore[union-attr]
                result = await admin.put("blob", "after", env="prod")
                for c in (first, late):
                    await c.wait_for_version(result.revision, timeout=10)
                    assert (c.config.n, c.config.blob) == (3, "after")
                    assert not c.server_stale
                await assert_converged([first, late], [ep], "/cm")
            finally:
                await first.close()
                await late.close()
                await back.stop()
    finally:
        await server.stop()


async def test_a_killed_replica_fails_clients_over_with_a_clean_history(
    etcd: EtcdHandle, prefix: str, servers: list[ServerProcess]
) -> None:
    a = await ServerProcess(etcd.endpoint, prefix).start()
    servers.append(a)
    b = await ServerProcess(etcd.endpoint, prefix).start()
    servers.append(b)
    target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"  # pick_first: everyone starts on a
    async with AdminClient(b.address) as admin:
        await admin.put("n", 0, env="prod")
        clients = [client(target, f"c{i}") for i in range(10)]
        await asyncio.gather(*(c.start() for c in clients))
        try:
            for n in range(1, 41):
                await admin.put("n", n, env="prod")
                if n == 15:
                    a.signal(signal.SIGKILL)
                await asyncio.sleep(0.02)
            await assert_converged(clients, [etcd.endpoint], prefix)
            assert all(c.config.n == 40 for c in clients)
            assert all(c.reconnects >= 1 for c in clients)
            # Pushes on both sides of the failover came as deltas: the history is clean with them.
            assert all(c.deltas_applied > 10 for c in clients)
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def test_a_restarted_client_starts_from_its_cache_while_the_server_is_down(
    etcd: EtcdHandle, prefix: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" / "api.json"
    settings = ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix)
    server = ConfmeshServer(settings)
    await server.start()
    port = server.port
    async with AdminClient(server.address) as admin:
        written = await admin.put("n", 7, env="prod")
    async with client(server.address, "x", cache_path=cache) as live:
        assert live.version == written.revision and not live.cached
    await server.stop()

    saved = json.loads(cache.read_text())
    assert saved["version"] == written.revision and saved["config"] == {"n": 7}

    restarted = client(f"127.0.0.1:{port}", "x", cache_path=cache, startup_timeout=0.5)
    await restarted.start()
    try:
        assert restarted.cached and restarted.config.n == 7 and restarted.version == written.revision
        with pytest.raises(StartupError, match="beyond max_cache_age"):
            await client(
                f"127.0.0.1:{port}", "y", cache_path=cache, startup_timeout=0.3, max_cache_age=0.0
            ).start()
        tampered = tmp_path / "tampered.json"
        tampered.write_text(cache.read_text().replace('"n": 7', '"n": 8'))
        with pytest.raises(StartupError, match="not reachable"):
            await client(f"127.0.0.1:{port}", "z", cache_path=tampered, startup_timeout=0.3).start()

        back = ConfmeshServer(
            ServerSettings(listen=f"127.0.0.1:{port}", etcd_endpoints=[etcd.endpoint], prefix=prefix)
        )
        await back.start()
        try:
            await eventually(lambda: not restarted.cached, timeout=10)  # resumed: current, nothing re-sent
            assert [h.version for h in restarted.history] == []
            async with AdminClient(back.address) as admin:
                newer = await admin.put("n", 8, env="prod")
            await restarted.wait_for_version(newer.revision, timeout=5)
            assert restarted.config.n == 8
        finally:
            await back.stop()
    finally:
        await restarted.close()


async def test_a_watch_from_a_compacted_revision_relists_and_converges(etcd: EtcdHandle, prefix: str) -> None:
    server = ConfmeshServer(
        ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix)
    )
    await server.start()
    try:
        async with AdminClient(server.address) as admin, client(server.address, "c") as c:
            await admin.put("n", 1, env="prod")
            await eventually(lambda: c.config.n == 1)
            source = server.source
            assert source is not None
            relists = source.relists

            consume = source._consume

            async def compact_then_watch(watch_prefix: str, list_revision: int) -> None:
                """Between the list and its watch, 20 writes and a compaction past them all."""
                del source._consume  # once
                for n in range(2, 22):
                    revision = await etcd_put([etcd.endpoint], f"{prefix}/config/env/prod/n", str(n))
                await etcd_compact([etcd.endpoint], revision)
                await consume(watch_prefix, list_revision)

            source._consume = compact_then_watch  # type: ignore[method-assign]
            source.request_relist("test: force a list, then compact before the watch starts")
            await eventually(lambda: c.config.n == 21, timeout=15)
            assert source.relists >= relists + 2  # the forced one, and the one after compaction
            await assert_converged([c], [etcd.endpoint], prefix)
    finally:
        await server.stop()


async def test_a_stuck_consumer_does_not_slow_the_others(server: ConfmeshServer, admin: AdminClient) -> None:
    await admin.put("n", 0, env="prod")
    stuck = RawWatch(server.address)
    stuck.subscribe("prod", "api", instance_id="stuck")  # and never reads again
    await eventually(lambda: any(r.instance_id == "stuck" for r in server.ledger.records()))
    big = "x" * 60_000
    async with client(server.address, "fast") as fast:
        started = time.monotonic()
        for n in range(1, 101):  # 6 MB of snapshots: far beyond what flow control lets through
            last = await admin.put("blob", f"{n}-{big}", env="prod")
        await fast.wait_for_version(last.revision, timeout=20)
        assert fast.config.blob.startswith("100-")
        assert time.monotonic() - started < 20
        (record,) = [r for r in server.ledger.records() if r.instance_id == "stuck"]
        assert server.config_service is not None
        (sub,) = [s for s in server.config_service.streams if s.id == record.stream_id]
        assert record.sent_version < last.revision  # it really is stuck
        # What the server holds for it: one pending (coalesced) snapshot at most, the newest.
        assert sub.pending is None or sub.pending.version == last.revision
    await stuck.close()


async def test_shutdown_drains_streams_to_another_replica_without_leaking_tasks(
    etcd: EtcdHandle, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    def settings() -> ServerSettings:
        return ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix)

    a, b = ConfmeshServer(settings()), ConfmeshServer(settings())
    await a.start()
    await b.start()
    target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
    try:
        async with AdminClient(b.address) as admin:
            await admin.put("n", 1, env="prod")
            clients = [client(target, f"c{i}", backoff_initial=2.0) for i in range(5)]
            await asyncio.gather(*(c.start() for c in clients))
            assert a.plane.count() == 5
            caplog.set_level(logging.INFO, logger="confmesh.client")
            started = time.monotonic()
            await a.stop()
            await eventually(lambda: b.plane.count() == 5, timeout=5)
            assert time.monotonic() - started < 1.5  # no backoff: draining moves clients at once
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "confmesh" in r.name]
            result = await admin.put("n", 2, env="prod")
            await asyncio.gather(*(c.wait_for_version(result.revision, timeout=5) for c in clients))
            await assert_converged(clients, [etcd.endpoint], prefix)
            leaked = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("confmesh-etcd")]
            assert sorted(leaked) == ["confmesh-etcd-resync", "confmesh-etcd-source"]  # b's only
            await asyncio.gather(*(c.close() for c in clients))
    finally:
        await a.stop()
        await b.stop()


async def test_a_lost_push_is_repaired_by_the_clients_report(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put("n", 1, env="prod")
    async with client(server.address, "c", report_interval=0.2) as c:
        encoded = server.config_service.encoded  # type: ignore[union-attr]
        response = encoded.response

        eaten_versions: list[int] = []

        def eaten(*args: Any, **kwargs: Any) -> bytes:
            """A proxy eats the next push: the server sent it, the client gets a heartbeat."""
            del encoded.response  # once
            eaten_versions.append(args[0].version)
            response(*args, **kwargs)
            return config_pb2.WatchResponse(heartbeat=config_pb2.Heartbeat()).SerializeToString()

        encoded.response = eaten  # type: ignore[method-assign]
        result = await admin.put("n", 2, env="prod")
        await c.wait_for_version(result.revision, timeout=5)
        assert c.config.n == 2 and eaten_versions == [result.revision]
        check_history(c)


async def test_a_nacked_version_is_not_resent_on_every_report(
    server: ConfmeshServer, admin: AdminClient, caplog: pytest.LogCaptureFixture
) -> None:
    class Strict(BaseModel):
        n: int

    await admin.put("n", 1, env="prod")
    async with ConfigClient(
        server.address, environment="prod", service="api", schema=Strict, report_interval=0.1
    ) as c:
        caplog.set_level(logging.WARNING, logger="confmesh.client")
        bad = await admin.put("n", "not a number", env="prod")
        await eventually(lambda: c.last_rejection is not None and c.last_rejection.version == bad.revision)
        await asyncio.sleep(1.0)  # ~10 reports
        rejections = [
            r for r in caplog.records if r.name == "confmesh.client" and "rejected" in r.getMessage()
        ]
        assert len(rejections) == 1
        assert c.config.n == 1


async def test_an_event_lost_between_etcd_and_the_server_is_repaired_by_resync(
    etcd: EtcdHandle, prefix: str
) -> None:
    server = ConfmeshServer(
        ServerSettings(
            listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix, resync_interval=0.5
        )
    )
    await server.start()
    try:
        async with AdminClient(server.address) as admin, client(server.address, "c") as c:
            await admin.put("n", 1, env="prod")
            await eventually(lambda: c.config.n == 1)
            assert server.source is not None
            apply = server.store.apply

            def lossy(events: Any) -> Any:
                """The watch loses one event, as etcd3aio's reconnecting watch can."""
                del server.store.apply  # once
                return apply(list(events)[1:])

            server.store.apply = lossy  # type: ignore[method-assign]
            await etcd_put([etcd.endpoint], f"{prefix}/config/env/prod/n", "2")
            await eventually(lambda: c.config.n == 2, timeout=10)
            assert server.source.divergences >= 1
            await assert_converged([c], [etcd.endpoint], prefix)
    finally:
        await server.stop()


async def test_a_silent_watch_is_replaced(etcd: EtcdHandle, prefix: str) -> None:
    server = ConfmeshServer(
        ServerSettings(
            listen="127.0.0.1:0",
            etcd_endpoints=[etcd.endpoint],
            prefix=prefix,
            progress_interval=60,
            watch_idle_timeout=0.5,
        )
    )
    await server.start()
    try:
        assert server.source is not None
        relists = server.source.relists
        await eventually(lambda: server.source.relists > relists, timeout=5)  # type: ignore[union-attr]
    finally:
        await server.stop()
