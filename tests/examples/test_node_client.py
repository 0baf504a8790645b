"""The Node.js reference client (examples/node) on a live server: vectors, deltas, NACKs, resume, flags."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from confmesh.client import AdminClient, ConfigClient
from confmesh.server import ConfmeshServer

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"
USERS = 300
SPLIT = {"variants": {"new": "new", "old": "old"}, "default_variant": "old",
         "rules": [{"id": "third", "serve": {"split": [{"variant": "new", "percent": 33.5},
                                                      {"variant": "old", "percent": 66.5}]}}]}  # fmt: skip
TRICKY = {
    "sample_rate": 0.00001,
    "big": 1e16,
    "ratio": 9.5e15,
    "tiny": 1e-7,
    "huge": 1e21,
    "keys": {"😀": {"\uffff": [{"b": 1, "a": 2, "😀": 3, "\uffff": 4}]}},
}


def node_ready() -> None:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must run the Node client: node and `npm ci --prefix examples/node` are needed")
        pytest.skip("node or examples/node/node_modules missing (npm ci --prefix examples/node)")


def test_the_node_client_passes_its_own_tests() -> None:
    node_ready()
    result = subprocess.run(
        ["node", "--test", "test/"], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


class NodeWatch:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def next(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                assert line, "the node client exited"
                got = json.loads(line)
                if got["event"] == event:
                    return got
                assert got["event"] in ("error", "current", "applied", "rejected"), got

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def start_node(server: ConfmeshServer, *args: str) -> NodeWatch:
    proc = await asyncio.create_subprocess_exec(
        "node", "watch.js", "--address", server.address, "--env", "prod", "--service", "orders", *args,
        cwd=NODE_DIR, stdout=subprocess.PIPE,
    )  # fmt: skip
    return NodeWatch(proc)


async def instance(admin: AdminClient, instance_id: str) -> Any:
    for _ in range(250):
        records = [i for i in (await admin.status()).instances if i.instance_id == instance_id]
        if records:
            return records[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{instance_id} is not in status")


async def until(admin: AdminClient, instance_id: str, check: Any) -> Any:
    record = None
    for _ in range(250):
        record = await instance(admin, instance_id)
        if check(record):
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"{instance_id}: {record}")


async def test_the_node_client_against_a_live_server(
    server: ConfmeshServer, admin: AdminClient, tmp_path: Path
) -> None:
    node_ready()
    for key, value in TRICKY.items():
        await admin.put(f"metrics.{key}", value, env="prod")
    await admin.put("database", {"host": "db", "pool": {"max": 50}}, env="prod")
    await admin.put_flags("prod", {"split": SPLIT})
    state = tmp_path / "state.json"
    node = await start_node(server, "--instance", "node-1", "--state", str(state), "--max-pool", "500",
                            "--flag", "split", "--users", str(USERS))  # fmt: skip
    try:
        first = await node.next("applied")
        expected = await admin.snapshot("prod", "orders")
        assert (first["version"], first["hash"]) == (expected.version, expected.hash)
        assert first["hash"].startswith("jcs-leafsum256:") and not first["delta"]
        await until(admin, "node-1", lambda r: r.acked_version == first["version"])

        # Flags: the same answers as the Python SDK.
        async with ConfigClient(server.address, environment="prod", service="orders") as client:
            python = {
                f"user-{n}": client.flags.get_str("split", "?", {"targetingKey": f"user-{n}"})
                for n in range(USERS)
            }
        assert first["flag"] == python

        # A one-key change arrives as a delta and patches to the server's hash.
        result = await admin.put("metrics.sample_rate", 0.00002, env="prod")
        second = await node.next("applied")
        assert second["delta"] and second["version"] == result.revision
        assert second["hash"] == (await admin.snapshot("prod", "orders")).hash
        assert second["config"]["metrics"]["sample_rate"] == 0.00002
        await until(admin, "node-1", lambda r: r.acked_version == second["version"])

        # A value its validator refuses: NACK with the field path; it keeps running the last good one.
        bad = await admin.put("database.pool.max", 100000, env="prod")
        rejected = await node.next("rejected")
        assert rejected["version"] == bad.revision and rejected["fields"] == ["database.pool.max"]
        record = await until(admin, "node-1", lambda r: r.HasField("last_nack"))
        assert record.acked_version == second["version"]
        assert list(record.last_nack.field_paths) == ["database.pool.max"]
        good = await admin.put("database.pool.max", 60, env="prod")
        third = await node.next("applied")
        assert third["version"] == good.revision and third["config"]["database"]["pool"]["max"] == 60
    finally:
        await node.stop()

    # Resume: current, nothing is re-sent; behind by one write, a delta brings it up. The replica
    # keeps a scope's recent changes while an instance of it is connected: here, a Python one.
    async with ConfigClient(server.address, environment="prod", service="orders"):
        node = await start_node(server, "--instance", "node-1", "--state", str(state))
        try:
            assert (await node.next("current"))["version"] == third["version"]
        finally:
            await node.stop()
        later = await admin.put("metrics.tiny", 2e-7, env="prod")
        node = await start_node(server, "--instance", "node-1", "--state", str(state))
        try:
            resumed = await node.next("applied")
            assert resumed["delta"] and resumed["version"] == later.revision
            assert resumed["config"]["metrics"]["tiny"] == 2e-7
        finally:
            await node.stop()
