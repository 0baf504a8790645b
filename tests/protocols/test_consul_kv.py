"""The Consul KV HTTP API on `--http-listen`, driven by the real py-consul client and by the chapter's
own Consul code (read from ../shared/chapter at test time, skipped where absent; never copied into
the repository): initial load and merge, hot reload through a blocking query on a write made with
confmesh, a flag written with `kv.put` seen by a ConfigClient; blocking queries wake on their own key
only; cas, keys/separator, raw, 404 with an index; tokens and 403."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import consul.aio
import pytest

from confmesh.client import AdminClient, ConfigClient
from confmesh.server.app import ConfmeshServer
from tests.conftest import Tenants
from tests.helpers import eventually

DB_PASSWORD = "orders-db-pass-81c2"  # pragma: allowlist secret
CHAPTER = Path(os.environ.get("CONFMESH_CHAPTER", Path(__file__).resolve().parents[3] / "shared" / "chapter"))


def http_port(server: ConfmeshServer) -> int:
    return server.http_port


@pytest.fixture
async def kv(server: ConfmeshServer) -> AsyncIterator[consul.aio.Consul]:
    client = consul.aio.Consul(host="127.0.0.1", port=http_port(server))
    yield client
    await client.close()


@pytest.fixture
def chapter(tmp_path: Path) -> Iterator[Path]:
    """The chapter's modules, laid out as its imports expect (config/, features/), in a temp dir."""
    if not (CHAPTER / "consul_config.py").exists():
        pytest.skip(f"the chapter's code is not at {CHAPTER} (set CONFMESH_CHAPTER)")
    for package, module in (("config", "consul_config.py"), ("features", "feature_flags.py")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        shutil.copy(CHAPTER / module, tmp_path / package / module)
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] in ("config", "features")]:
            del sys.modules[name]


async def test_the_chapters_consul_config_loads_merges_and_hot_reloads(
    server: ConfmeshServer, admin: AdminClient, chapter: Path
) -> None:
    await admin.put("database.host", "db.prod.internal", env="prod")
    await admin.put("database.pool", 10, env="prod")
    await admin.put("database.pool", 25, env="prod", service="orders")
    await admin.put("features.checkout", True, env="prod", service="orders")
    consul_config = importlib.import_module("config.consul_config")
    config = consul_config.ConsulConfig(service_name="orders", environment="prod", host="127.0.0.1",
                                        port=http_port(server))  # fmt: skip
    try:
        loaded = await config.load()
        assert loaded == {
            "database": {"host": "db.prod.internal", "pool": 25},
            "features": {"checkout": True},
        }
        seen: list[tuple[Any, Any]] = []
        config.watch("database/pool", lambda new, old: seen.append((new, old)))
        await asyncio.sleep(0.3)  # the watch's first read
        put = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "confmesh.cli", "--server", server.address,
            "put", "database.pool", "40", "--env", "prod", "--service", "orders",
        )  # fmt: skip
        assert await put.wait() == 0
        await eventually(lambda: seen and seen[-1][0] == 40, timeout=10)
        assert config.get("database.pool") == 40
    finally:
        await config.close()


async def test_the_chapters_flags_written_with_kv_put_reach_a_config_client(
    server: ConfmeshServer, chapter: Path
) -> None:
    flags = {"new-checkout": {"type": "percentage", "percentage": 25}, "dark-mode": True}
    consul_config = importlib.import_module("config.consul_config")
    feature_flags = importlib.import_module("features.feature_flags")
    config = consul_config.ConsulConfig(service_name="features", environment="prod", host="127.0.0.1",
                                        port=http_port(server))  # fmt: skip
    try:
        assert await config.client.kv.put("config/prod/features/flags", json.dumps(flags))
        ff = feature_flags.FeatureFlags(config)
        await ff.initialize()
        assert ff.is_enabled("dark-mode") and set(ff.flags) == {"new-checkout", "dark-mode"}
        async with ConfigClient(
            server.address, environment="prod", service="features", instance_id="f1"
        ) as c:
            assert c.get("flags") == flags
    finally:
        await config.close()


async def test_blocking_queries_wake_on_their_own_key_only(
    server: ConfmeshServer, admin: AdminClient, kv: consul.aio.Consul
) -> None:
    await admin.put("a", 1, env="prod", service="orders")
    await admin.put("b", 1, env="prod", service="orders")
    index, item = await kv.kv.get("config/prod/orders/a")
    assert item is not None and item["Value"] == b"1" and int(index) == item["ModifyIndex"]

    async def after_unrelated() -> float:
        start = time.perf_counter()
        again, _ = await kv.kv.get("config/prod/orders/a", index=index, wait="1s")
        assert again == index  # the wait ran out; nothing it reads changed
        return time.perf_counter() - start

    waiting = asyncio.create_task(after_unrelated())
    await asyncio.sleep(0.2)
    await admin.put("b", 2, env="prod", service="orders")
    assert await waiting >= 0.9

    woken = asyncio.create_task(kv.kv.get("config/prod/orders/a", index=index, wait="30s"))
    await asyncio.sleep(0.2)
    start = time.perf_counter()
    written = await admin.put("a", 2, env="prod", service="orders")
    new_index, item = await asyncio.wait_for(woken, 5)
    assert time.perf_counter() - start < 1.0
    assert int(new_index) == written.revision and item is not None and item["Value"] == b"2"

    # A delete wakes it too, with a newer index (a tombstone), and reads as missing.
    gone = asyncio.create_task(kv.kv.get("config/prod/orders/a", index=new_index, wait="30s"))
    await asyncio.sleep(0.2)
    await admin.delete("a", env="prod", service="orders")
    last, item = await asyncio.wait_for(gone, 5)
    assert item is None and int(last) > int(new_index)


async def test_listing_raw_cas_and_missing_keys(server: ConfmeshServer, kv: consul.aio.Consul) -> None:
    assert await kv.kv.put("config/prod/global/db/host", "db.internal")
    assert await kv.kv.put("config/prod/global/db/pool", "10")
    assert await kv.kv.put("config/prod/orders/timeout", "2.5")
    _, keys = await kv.kv.get("config/prod/", keys=True, separator="/")
    assert keys == ["config/prod/global/", "config/prod/orders/"]
    _, items = await kv.kv.get("config/prod/global", recurse=True)
    assert [(i["Key"], i["Value"]) for i in items] == [
        ("config/prod/global/db/host", b"db.internal"), ("config/prod/global/db/pool", b"10")]  # fmt: skip
    index, missing = await kv.kv.get("config/prod/orders/nope")
    assert missing is None and int(index) >= 1
    base = f"http://127.0.0.1:{http_port(server)}/v1/kv"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/config/prod/orders/timeout?raw") as resp:
            assert resp.status == 200 and await resp.read() == b"2.5"
            assert resp.headers["X-Consul-KnownLeader"] == "true" and "X-Consul-LastContact" in resp.headers
        async with session.get(f"{base}/config/prod/orders/nope") as resp:
            assert resp.status == 404 and int(resp.headers["X-Consul-Index"]) >= 1
        async with session.put(f"{base}/not/mapped/here", data=b"1") as resp:
            assert resp.status == 400 and "not a key this server maps" in await resp.text()
        async with session.put(f"{base}/config/prod/orders/timeout?acquire=abc", data=b"1") as resp:
            assert resp.status == 400
    _, item = await kv.kv.get("config/prod/orders/timeout")
    assert item is not None
    assert not await kv.kv.put("config/prod/orders/timeout", "3", cas=item["ModifyIndex"] + 1)
    assert await kv.kv.put("config/prod/orders/timeout", "3", cas=item["ModifyIndex"])
    assert not await kv.kv.put("config/prod/orders/timeout", "4", cas=0)  # exists already
    assert await kv.kv.put("config/prod/orders/fresh", "x", cas=0)
    assert await kv.kv.delete("config/prod/orders/fresh")
    _, item = await kv.kv.get("config/prod/orders/timeout")
    assert item is not None and item["Value"] == b"3"


async def test_consul_tokens_are_confmesh_tokens_and_a_denied_read_is_403(tenants: Tenants) -> None:
    port = tenants.server.http_port
    async with AdminClient(tenants.address, token=tenants.tokens["admin"]) as admin:
        await admin.put("secret", "payments-only", env="prod", service="payments")
        await admin.put("pool", 5, env="prod", service="orders")
        await admin.put_schema("prod", "orders", {"type": "object", "properties": {
            "dbpass": {"type": "string", "format": "password"}}})  # fmt: skip
        await admin.put("dbpass", DB_PASSWORD, env="prod", service="orders")
    reader = consul.aio.Consul(host="127.0.0.1", port=port, token=tenants.tokens["orders-reader"])
    service = consul.aio.Consul(host="127.0.0.1", port=port, token=tenants.tokens["orders-service"])
    anonymous = consul.aio.Consul(host="127.0.0.1", port=port)
    try:
        _, item = await reader.kv.get("config/prod/orders/pool")
        assert item is not None and item["Value"] == b"5"
        with pytest.raises(consul.ACLPermissionDenied):
            await reader.kv.get("config/prod/payments/secret")
        _, items = await reader.kv.get("config/prod/", recurse=True)
        assert {i["Key"] for i in items} == {
            "config/prod/orders/pool",
            "config/prod/orders/dbpass",
        }  # no payments
        with pytest.raises(consul.ACLPermissionDenied):
            await reader.kv.put("config/prod/orders/pool", "6")  # a reader cannot write
        with pytest.raises(consul.ACLPermissionDenied):
            await anonymous.kv.get("config/prod/orders/pool")
        # A service reads the layers a Consul client of its scope loads, and no others.
        _, item = await service.kv.get("config/prod/orders/pool")
        assert item is not None
        # A schema's secret is the service's own (as on its Watch stream); others see it redacted.
        _, own = await service.kv.get("config/prod/orders/dbpass")
        _, shown = await reader.kv.get("config/prod/orders/dbpass")
        assert own is not None and own["Value"] == DB_PASSWORD.encode()
        assert shown is not None and shown["Value"] == b"<redacted>"
        _, listed = await reader.kv.get("config/prod/orders", recurse=True)
        assert DB_PASSWORD.encode() not in json.dumps([str(i) for i in listed]).encode()
        assert (await service.kv.get("config/prod/global", recurse=True))[1] is None
        with pytest.raises(consul.ACLPermissionDenied):
            await service.kv.get("config/prod/payments/secret")
    finally:
        await service.close()
        await reader.close()
        await anonymous.close()


NODE_DIR = Path(__file__).resolve().parents[1] / "interop" / "node"


class NodeDriver:
    """One of tests/interop/node's chapter drivers, against the server's Consul API: `start` returns
    a reader of its JSON lines (the chapter's own log lines go to stdout too, and are skipped)."""

    def __init__(self, script: str, server: ConfmeshServer, **env: str) -> None:
        self.script, self.server, self.env = script, server, env
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        env = {**os.environ, "CONSUL_HOST": "127.0.0.1", "CONSUL_PORT": str(http_port(self.server)),
               "NODE_PATH": str(NODE_DIR / "node_modules"), **self.env}  # fmt: skip
        self.proc = proc = await asyncio.create_subprocess_exec(
            "node", str(NODE_DIR / self.script), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        stdout, stderr = proc.stdout, proc.stderr

        async def line() -> dict[str, Any]:
            while True:
                raw = await asyncio.wait_for(stdout.readline(), 15)
                assert raw, (await stderr.read()).decode()[-2000:]
                if raw.startswith(b"{"):
                    return json.loads(raw)  # type: ignore[no-any-return]

        return line

    async def stop(self) -> None:
        if self.proc is None or self.proc.stdin is None:
            return
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()


async def test_the_chapters_node_consul_config_loads_and_hot_reloads(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    if not (CHAPTER / "consul-config.js").exists():
        pytest.skip(f"the chapter's code is not at {CHAPTER} (set CONFMESH_CHAPTER)")
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "consul").exists():
        pytest.skip("node or the npm consul client is missing (npm ci --prefix tests/interop/node)")
    await admin.put("database.host", "db.prod.internal", env="prod")
    await admin.put("database.pool", 25, env="prod", service="orders")
    driver = NodeDriver("chapter-consul.cjs", server, CONFMESH_CHAPTER=str(CHAPTER))
    line = await driver.start()
    try:
        loaded = await line()
        assert loaded == {"event": "loaded", "config": {"database": {"host": "db.prod.internal", "pool": 25}}}
        await asyncio.sleep(0.5)  # the watch's first read
        await admin.put("database.pool", 40, env="prod", service="orders")
        change = await line()
        while change.get("newValue") != 40:  # a watch may report the value it started with first
            change = await line()
        assert change["event"] == "change"
    finally:
        await driver.stop()


async def test_the_chapters_node_feature_flags_follow_flags_written_with_confmesh(
    server: ConfmeshServer, admin: AdminClient, tmp_path: Path
) -> None:
    if not (CHAPTER / "feature-flags.js").exists():
        pytest.skip(f"the chapter's code is not at {CHAPTER} (set CONFMESH_CHAPTER)")
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "consul").exists():
        pytest.skip("node or the npm consul client is missing (npm ci --prefix tests/interop/node)")
    (tmp_path / "config").mkdir()
    shutil.copy(CHAPTER / "feature-flags.js", tmp_path / "feature-flags.js")
    shutil.copy(CHAPTER / "consul-config.js", tmp_path / "config" / "consul-config.js")
    await admin.put("flags", {"dark-mode": False}, env="prod", service="features")
    driver = NodeDriver("chapter-flags.cjs", server, CHAPTER_LAYOUT=str(tmp_path))
    line = await driver.start()
    try:
        first = await line()
        assert first["event"] == "initialized" and first["darkMode"] is False
        await asyncio.sleep(0.5)
        flags = {"dark-mode": True, "new-checkout": {"type": "percentage", "percentage": 10}}
        await admin.put("flags", flags, env="prod", service="features")
        changed = await line()
        while not changed["darkMode"]:
            changed = await line()
        assert set(changed["flags"]) == {"dark-mode", "new-checkout"}
    finally:
        await driver.stop()


async def test_the_resolved_view_reads_what_a_service_resolves_to_and_wakes_on_any_layer(
    server: ConfmeshServer, admin: AdminClient, kv: consul.aio.Consul
) -> None:
    await admin.put("database.pool", 10)  # defaults
    await admin.put("database.host", "db.prod", env="prod")
    await admin.put("database.pool", 25, env="prod", service="orders")
    index, items = await kv.kv.get("resolved/prod/orders/", recurse=True)
    assert {i["Key"].removeprefix("resolved/prod/orders/"): i["Value"] for i in items} == {
        "database/host": b"db.prod", "database/pool": b"25"}  # fmt: skip
    resolved = await admin.resolve("prod", "orders")
    assert int(index) == resolved.version
    woken = asyncio.create_task(kv.kv.get("resolved/prod/orders/database/host", index=index, wait="30s"))
    await asyncio.sleep(0.2)
    written = await admin.put("database.host", "db2.prod", env="prod")  # the environment layer
    new_index, item = await asyncio.wait_for(woken, 5)
    assert int(new_index) == written.revision and item is not None and item["Value"] == b"db2.prod"
    with pytest.raises(consul.ConsulException):
        await kv.kv.put("resolved/prod/orders/database/pool", "1")  # read-only
