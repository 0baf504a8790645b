"""End to end: the example services run as processes against a real confmesh server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from confmesh.changes import parse_apply_document
from confmesh.client import AdminClient
from confmesh.server import ConfmeshServer
from confmesh.server.embedded_etcd import free_port

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def until(check: Any, timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except (httpx.HTTPError, OSError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for the example services")
        await asyncio.sleep(0.1)


@pytest.fixture
async def services(server: ConfmeshServer, admin: AdminClient) -> AsyncIterator[httpx.AsyncClient]:
    seed = parse_apply_document((EXAMPLES / "seed.yaml").read_text())
    await admin.apply(seed.changes, reason=seed.reason)
    flag = json.loads((EXAMPLES / "new-checkout.json").read_text())
    await admin.put_flags("prod", {"new-checkout": {"key": "new-checkout", **flag}})
    inventory, orders = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with (
        process(str(EXAMPLES / "inventory/service.py"), "--confmesh", server.address, "--listen", inventory),
        process(str(EXAMPLES / "orders/app.py"), "--confmesh", server.address, "--inventory", inventory,
                "--listen", orders),
    ):  # fmt: skip
        async with httpx.AsyncClient(base_url=f"http://{orders}", timeout=10) as http:

            async def up() -> bool:
                return (await http.get("/status")).status_code == 200

            await until(up)
            yield http


async def test_orders_and_inventory_agree_and_config_reloads(
    services: httpx.AsyncClient, admin: AdminClient
) -> None:
    http = services
    flows = []
    for n in range(40):
        body = (await http.post("/orders", json={"user": f"user-{n}", "sku": "book", "qty": 1})).json()
        inv = body["inventory"]
        assert inv["flow"] == body["flow"] and inv["reason"] == "PROPAGATED"
        assert inv["flag_version"] == body["flag_version"] and inv["ttl_seconds"] == 900
        flows.append(body["flow"])
    assert 5 < flows.count("new") < 35  # a 50% split, decided once per request

    # A forged decision at the edge is dropped: orders decides, inventory follows orders.
    forged = {"baggage": "cmf.f.new-checkout=1%21on%21true,cmf.set=prod"}
    await admin.set_flag_enabled("new-checkout", False, envs=["prod"])

    async def off() -> dict[str, Any] | None:
        r = await http.post("/orders", json={"user": "user-1", "sku": "book", "qty": 1}, headers=forged)
        body: dict[str, Any] = r.json()
        return body if body["reason"] == "DISABLED" else None

    body = await until(off)
    assert body["flow"] == "classic" and body["inventory"]["flow"] == "classic"

    # Hot reload: the pool follows the config, same process; a bad value is refused by the schema.
    before = (await http.get("/status")).json()
    written = await admin.put("database.pool_size", 25, env="prod", service="orders")

    async def resized() -> dict[str, Any] | None:
        status: dict[str, Any] = (await http.get("/status")).json()
        return status if status["pool_size"] == 25 else None

    after = await until(resized)
    assert after["pid"] == before["pid"] and after["version"] == written.revision and after["resizes"] == 1
    bad = await admin.put("database.pool_size", 500, env="prod", service="orders")

    async def nacked() -> bool:
        status = await admin.status()
        return any(i.last_nack.version == bad.revision for i in status.instances if i.service == "orders")

    await until(nacked)
    status = (await http.get("/status")).json()
    assert status["pool_size"] == 25 and status["version"] == written.revision


@pytest.mark.parametrize("example", ["inventory/service.py", "orders/app.py"])
async def test_an_example_that_cannot_start_says_why_in_one_line(
    server: ConfmeshServer, admin: AdminClient, example: str
) -> None:
    """The README walkthrough's defaults on the examples' server: each service's schema refuses the
    extra key, and the service exits with one line saying so (no traceback)."""
    await admin.put("database.pool.max", 10)  # the walkthrough's first write: it reaches every service
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / example), "--confmesh", server.address,
        "--listen", f"127.0.0.1:{free_port()}", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    last = err.decode().strip().splitlines()[-1]
    name = example.split("/")[0]
    assert proc.returncode == 1 and last.startswith(f"{name} cannot start: "), err.decode()
    assert "Traceback" not in err.decode()
