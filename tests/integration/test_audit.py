"""The audit log: one record per change, in the change's own transaction."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from confmesh.client import AdminClient, InvalidArgument
from confmesh.server import ConfmeshServer
from confmesh.server.etcd import Etcd
from tests.cli.test_cli import cli
from tests.conftest import EtcdHandle


async def test_every_change_is_audited_with_old_and_new_values(
    server: ConfmeshServer, admin: AdminClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="confmesh.audit")
    first = await admin.put("db.pool.max", 10, env="prod", reason="initial")
    second = await admin.put("db.pool.max", 20, env="prod", reason="sale")
    gone = await admin.delete("db", env="prod", reason="cleanup")
    flag = await admin.put_flags(
        "prod", {"f": {"variants": {"on": True, "off": False}, "default_variant": "on", "off_variant": "off"}}
    )
    killed = await admin.set_flag_enabled("f", False)
    with pytest.raises(InvalidArgument):
        await admin.put("bad key", 1)  # refused: no record

    records = (await admin.audit()).records
    assert [r.revision for r in records] == [
        killed.revision,
        flag.revision,
        gone.revision,
        second.revision,
        first.revision,
    ]  # newest first, same revision as the change
    sale = records[3]
    assert (sale.actor, sale.reason, sale.source) == ("tests", "sale", "Put")
    (change,) = sale.changes
    assert (change.key, change.op, change.old_value.number_value, change.new_value.number_value) == (
        "db.pool.max",
        "put",
        10,
        20,
    )
    assert records[2].changes[0].op == "delete" and not records[2].changes[0].HasField("new_value")
    assert records[0].source == "SetFlagEnabled(kill)"
    assert records[0].changes[0].new_value.struct_value.fields["enabled"].bool_value is False

    assert [r.revision for r in (await admin.audit(key_prefix="db.", env="prod")).records] == [
        gone.revision,
        second.revision,
        first.revision,
    ]
    assert (await admin.audit(env="staging", key_prefix="db.")).records == []

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "confmesh.audit"]
    assert [line["revision"] for line in lines] == [
        first.revision,
        second.revision,
        gone.revision,
        flag.revision,
        killed.revision,
    ]

    code, out, _ = await cli(server.address, "audit", "--key", "db.")
    assert code == 0 and "env/prod:db.pool.max  10 -> 20" in out and "cleanup" in out


async def test_newest_first_pages_through_every_key_in_descending_order(
    etcd: EtcdHandle, prefix: str
) -> None:
    for n in range(11):
        await asyncio.to_thread(etcd.ctl, "put", f"{prefix}/audit/{n:03d}", str(n))
    client = Etcd([etcd.endpoint])
    await client.connect()
    try:
        keys = [kv.key async for kv in client.newest_first(f"{prefix}/audit/", page=3)]
    finally:
        await client.close()
    assert keys == [f"{prefix}/audit/{n:03d}" for n in range(10, -1, -1)]
