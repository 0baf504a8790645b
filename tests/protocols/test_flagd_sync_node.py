"""flagd's sync protocol consumed by OpenFeature's Node in-process provider (@openfeature/flagd-provider)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from confmesh.client import AdminClient, ConfigClient
from confmesh.server import ConfmeshServer
from tests.protocols.test_flagd_sync import GATED, KILL, ROLLOUT, USERS

# flagd-core for JS (4.x) still buckets the string, not its CBOR as Python's flagd-core 2.x does:
# a rollout meant for Node flagd consumers is stored with confmesh's string bucketing (v2).
ROLLOUT_V2 = {k: v for k, v in ROLLOUT.items() if k != "bucketing"}

NODE_DIR = Path(__file__).resolve().parents[1] / "interop" / "node"


class NodeProvider:
    """One `flagd_inprocess.mjs` process: a JSON command per line in, a JSON answer per line out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def read(self, timeout: float = 20.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        assert line, "the node flagd provider exited"
        got: dict[str, Any] = json.loads(line)
        assert got["event"] != "error", got
        return got

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")

    async def ask(self, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return await self.read()


@pytest.fixture
async def node_flagd(server: ConfmeshServer) -> AsyncIterator[NodeProvider]:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must run the Node flagd provider: `npm ci --prefix tests/interop/node`")
        pytest.skip("node or tests/interop/node/node_modules missing (npm ci --prefix tests/interop/node)")
    host, _, port = server.address.rpartition(":")
    proc = await asyncio.create_subprocess_exec(
        "node", "flagd_inprocess.mjs", host, port, "flagSetId=prod",
        cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    node = NodeProvider(proc)
    try:
        assert (await node.read())["event"] == "ready"
        yield node
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_node_flagd_provider_evaluates_confmesh_flags_and_sees_a_kill_fast(
    server: ConfmeshServer, admin: AdminClient, node_flagd: NodeProvider
) -> None:
    await admin.put_flags("prod", {"rollout": ROLLOUT_V2, "kill": KILL, "gated": GATED})
    seen = await node_flagd.ask(op="await", flag="kill", value=True, timeout_ms=10_000)
    assert seen["ok"], seen

    rollout = await node_flagd.ask(
        op="details", type="string", flag="rollout", default="none", context={"user": {"id": "u-1"}}
    )
    assert rollout["value"] in ("new", "old") and rollout["reason"] == "TARGETING_MATCH", rollout
    gone = await node_flagd.ask(op="details", type="boolean", flag="gated", default=False)
    assert gone["errorCode"] == "FLAG_NOT_FOUND", gone  # prerequisites do not export: left out

    node_flagd.send(op="await", flag="kill", value=False, timeout_ms=5_000)
    started = time.monotonic()
    await admin.set_flag_enabled("kill", False, envs=["prod"])
    killed = await node_flagd.read()
    assert killed["ok"] and time.monotonic() - started < 1.0, killed

    # 10,000 users: the Node provider and confmesh's own client agree on every one.
    theirs = (await node_flagd.ask(op="rollout", flag="rollout", users=USERS))["values"]
    async with ConfigClient(server.address, environment="prod", service="orders") as client:
        await client.wait_for_version(0, timeout=5)
        users = [f"user-{n}" for n in range(USERS)]
        flags = client.flags
        ours = [flags.get_str("rollout", "none", {"targetingKey": u, "user": {"id": u}}) for u in users]
    differ = [(n, a, b) for n, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not differ, f"{len(differ)} of {USERS} users differ, e.g. {differ[:3]}"
    assert 0.25 < ours.count("new") / USERS < 0.35
