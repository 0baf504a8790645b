"""History from the audit log: rollback (also after etcd compaction), revert --since, retention."""

from __future__ import annotations

import asyncio
import math
import subprocess
import time

import pytest

from confmesh.client import AdminClient, ConfigClient, FailedPrecondition
from confmesh.keys import Layer
from confmesh.server import ConfmeshServer
from confmesh.server.history import prune_audit
from tests.cli.test_cli import cli
from tests.conftest import EtcdHandle
from tests.integration.test_schemas import Settings


async def test_rollback_restores_a_layer_after_compaction(
    server: ConfmeshServer, admin: AdminClient, etcd: EtcdHandle, prefix: str
) -> None:
    await admin.put("database.host", "db-1", env="prod", service="orders")
    v2 = (await admin.put("database.max_retries", 5, env="prod", service="orders")).revision
    await admin.put("database.max_retries", 9, env="prod", service="orders")
    await admin.put("database.timeout", 30, env="prod", service="orders")
    v5 = (await admin.delete("database.host", env="prod", service="orders")).revision
    assert server.etcd is not None
    await server.etcd.compact(v5)
    with pytest.raises(subprocess.CalledProcessError) as compacted:
        etcd.ctl("get", f"{prefix}/config/service/prod/orders/database.host", f"--rev={v2}")
    assert "compacted" in compacted.value.stderr

    async with ConfigClient(server.address, environment="prod", service="orders") as client:
        code, out, err = await cli(server.address, "rollback", "--env", "prod", "--service", "orders",
                                   "--to", str(v2), "--reason", "bad deploy")  # fmt: skip
        assert code == 0, err
        now = int(out.split("now version ")[1].split()[0])
        assert now > v5
        await client.wait_for_version(now, timeout=10)
        assert client.raw == {"database": {"host": "db-1", "max_retries": 5}}
    _, layer = await admin.get_layer(Layer.svc("prod", "orders"))
    assert layer == {"database.host": "db-1", "database.max_retries": 5}
    (record,) = (await admin.audit(limit=1)).records
    assert record.source == f"Rollback service/prod/orders to {v2}" and record.reason == "bad deploy"

    code, out, _ = await cli(server.address, "history", "--env", "prod", "--service", "orders")
    assert (
        code == 0
        and f"version {now}" in out
        and f"version {v2}" in out
        and "database.max_retries  9 -> 5" in out
    )
    with pytest.raises(FailedPrecondition, match="nothing to undo"):
        await admin.rollback(v2, env="prod", service="orders")


async def test_revert_undoes_the_last_minutes_of_config_and_flags(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put("replicas", 3, env="prod")
    await admin.put_flags(
        "prod", {"checkout": {"variants": {"on": True, "off": False}, "default_variant": "off"}}
    )
    await asyncio.sleep(2.5)
    recent = time.time()
    await admin.put("replicas", 30, env="prod", reason="oops")
    await admin.put("pool", 8, env="prod", service="orders")
    await admin.set_flag_enabled("checkout", False, envs=["prod"])
    await admin.put("replicas", 4, env="staging")  # another environment: untouched
    # A window that covers the recent changes and not the ones 2.5 s older, however slow this runs.
    result = await admin.revert("prod", math.ceil(time.time() - recent))
    assert sorted(result.changed) == ["env/prod/replicas", "flags/prod/checkout", "service/prod/orders/pool"]
    assert (await admin.get_layer(Layer.env("prod")))[1] == {"replicas": 3}
    assert (await admin.get_layer(Layer.svc("prod", "orders")))[1] == {}
    assert (await admin.get_flags("prod"))[1]["checkout"].get("enabled", True) is True
    assert (await admin.get_layer(Layer.env("staging")))[1] == {"replicas": 4}
    code, out, err = await cli(server.address, "revert", "--env", "staging", "--since", "1h")
    assert code == 0, err
    assert "reverted 1 key(s) in staging" in out
    assert (await admin.get_layer(Layer.env("staging")))[1] == {}
    code, _, err = await cli(server.address, "revert", "--env", "staging", "--since", "soon")
    assert code == 1 and "--since takes a duration" in err


async def test_history_refuses_what_it_cannot_restore(server: ConfmeshServer, admin: AdminClient) -> None:
    await admin.put("database.host", "db", env="prod", service="orders")
    await admin.put_schema("prod", "orders", Settings.model_json_schema())
    plaintext = "pw-one-0123"  # pragma: allowlist secret
    first = await admin.put("database.password", plaintext, env="prod", service="orders")
    second = await admin.put("database.password", {"$secret": "env:DB"}, env="prod", service="orders")
    # While etcd keeps the revision, rollback reads it back exactly, secret values included.
    await admin.rollback(first.revision, env="prod", service="orders")
    orders = Layer.svc("prod", "orders")
    assert server.store.entries(orders)["database.password"] == plaintext
    # Once etcd compacted it, only the audit log is left, and it keeps secrets redacted.
    await admin.put("database.password", {"$secret": "env:DB"}, env="prod", service="orders")
    assert server.etcd is not None
    await server.etcd.compact(server.store.revision)
    with pytest.raises(FailedPrecondition, match=r"secret value .* keeps it redacted"):
        await admin.rollback(second.revision - 1, env="prod", service="orders")
    await prune_audit(server.etcd, server.layout, retention_seconds=0)
    with pytest.raises(FailedPrecondition, match="older than the kept history"):
        await admin.rollback(first.revision, env="prod", service="orders")


async def test_rollback_never_guesses_over_an_out_of_band_write(
    server: ConfmeshServer, admin: AdminClient, etcd: EtcdHandle, prefix: str
) -> None:
    key = f"{prefix}/config/env/prod/timeout"
    r1 = (await admin.put("timeout", 1, env="prod")).revision
    etcd.ctl("put", key, "2")
    await admin.put("timeout", 3, env="prod")
    # etcd still keeps r1: the layer is read back as it was, the out-of-band 2 skipped over.
    await admin.rollback(r1, env="prod")
    assert (await admin.get_layer(Layer.env("prod")))[1] == {"timeout": 1}

    # Only an out-of-band write after r2: still restored exactly, not "nothing to undo".
    r2 = (await admin.put("timeout", 4, env="prod")).revision
    etcd.ctl("put", key, "5")
    await admin.rollback(r2, env="prod")
    assert (await admin.get_layer(Layer.env("prod")))[1] == {"timeout": 4}

    # Once etcd compacted r3, the audit log alone cannot account for the out-of-band 6: refused.
    r3 = (await admin.put("timeout", 5, env="prod")).revision
    etcd.ctl("put", key, "6")
    last = (await admin.put("timeout", 7, env="prod")).revision
    assert server.etcd is not None
    await server.etcd.compact(last)
    with pytest.raises(FailedPrecondition, match="changed out of band") as refused:
        await admin.rollback(r3, env="prod")
    assert refused.value.code == "history_incomplete"
    code, _, err = await cli(server.address, "rollback", "--env", "prod", "--to", str(r3))
    assert code == 1 and "changed out of band" in err
    assert (await admin.get_layer(Layer.env("prod")))[1] == {"timeout": 7}  # nothing written
    # With no out-of-band write since, the audit log restores r4 after compaction too.
    r4 = (await admin.put("timeout", 8, env="prod")).revision
    await admin.put("timeout", 9, env="prod")
    await server.etcd.compact(server.store.revision)
    await admin.rollback(r4, env="prod")
    assert (await admin.get_layer(Layer.env("prod")))[1] == {"timeout": 8}
