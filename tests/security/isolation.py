"""Attack a server's control plane while a bystander measures its delivery plane.

The attacker runs in its own process (``python -m tests.security.isolation flood ...``), so its own
work never shares the bystander's event loop; the server runs in a third process. The bystander
measures, during the attack, the Watch push latency of a ConfigClient (a write's return to the
client holding its version) and the latency of gRPC health checks. bench/isolation.py prints the
same figures; tests/security/test_delivery_isolation.py asserts the bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from confmesh.client import AdminClient, ConfigClient
from confmesh.errors import ConfmeshError
from tests.helpers import ServerProcess

# The reported explain attack: a `contains` rule over 10,000 values against a 14,000-item list.
HEAVY_RULE_VALUES = [f"v{i}" for i in range(10_000)]
HEAVY_CONTEXT = {"targetingKey": "u1", "tags": [f"t{i}" for i in range(14_000)]}
GRANTS = {
    "admin": {"role": "admin"},
    "reader": {"role": "reader", "scopes": ["staging/*"]},
    "orders-service": {"role": "service", "environment": "prod", "service": "orders"},
}


def heavy_flag(key: str) -> dict[str, Any]:
    return {
        "key": key,
        "variants": {"on": True, "off": False},
        "default_variant": "off",
        "rules": [
            {"id": "tags", "clauses": [{"attribute": "tags", "op": "contains", "values": HEAVY_RULE_VALUES}],
             "serve": {"variant": "on"}},
        ],
    }  # fmt: skip


def ordinary_flags(n: int) -> dict[str, Any]:
    return {
        f"f{i}": {
            "key": f"f{i}",
            "variants": {"on": True, "off": False},
            "default_variant": "off",
            "rules": [
                {
                    "id": "r",
                    "clauses": [{"attribute": "tier", "op": "in", "values": ["gold", "beta"]}],
                    "serve": {"split": [{"variant": "on", "percent": 30}, {"variant": "off", "percent": 70}]},
                }
            ],
        }
        for i in range(n)
    }


@dataclass
class Target:
    server: ServerProcess
    http: str
    tokens: dict[str, str]


# Runs `confmesh` from another checkout's code roots (bench/isolation.py's "before"): argv[1] is the root.
BOOT = (
    "import sys; root = sys.argv.pop(1); "
    "sys.path[:0] = [f'{root}/core', f'{root}/server', f'{root}/client']; "
    "from confmesh.cli import main; main()"
)


@asynccontextmanager
async def target(
    etcd_endpoint: str, prefix: str, tmp: Path, code: Path | None = None
) -> AsyncIterator[Target]:
    """A policy-enforcing `confmesh serve` process with --http-listen, tokens, 1,000 staging flags and
    5 heavy ones, and a prod/orders config. `code`: another checkout to run the server from."""
    from confmesh.keys import KeyLayout
    from confmesh.server.access import Grant, new_token
    from confmesh.server.embedded_etcd import free_port
    from confmesh.server.etcd import Etcd
    from confmesh.server.records import store_token

    policy = tmp / "policy.yaml"
    policy.write_text("identities: {}\n")
    etcd = Etcd([etcd_endpoint])
    await etcd.connect()
    tokens = {}
    try:
        for name, grant in GRANTS.items():
            record, token = new_token(name, Grant.model_validate(grant), "isolation")
            await store_token(etcd, KeyLayout(prefix), record, actor="isolation", reason="fixture")
            tokens[name] = token
    finally:
        await etcd.close()
    http_port = free_port()
    server = ServerProcess(
        etcd_endpoint, prefix, "--policy", str(policy), "--http-listen", f"127.0.0.1:{http_port}"
    )
    if code is not None:  # [python, -m, confmesh.cli, ...] -> [python, -c, BOOT, root, ...]
        server.args[1:3] = ["-c", BOOT, str(code)]
    await server.start()
    try:
        async with AdminClient(server.address, token=tokens["admin"]) as admin:
            await admin.put_flags("staging", ordinary_flags(1000))
            await admin.put_flags("staging", {f"heavy{i}": heavy_flag(f"heavy{i}") for i in range(5)})
            await admin.put("pool", 1, env="prod", service="orders")
        yield Target(server, f"http://127.0.0.1:{http_port}", tokens)
    finally:
        await server.stop()


async def flood(mode: str, url: str, token: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """Send `mode` requests from `concurrency` loops for `seconds`; count the answers by status."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    if mode == "explain":
        path = "/console/api/flags/explain"
        body = {"env": "staging", "key": "x", "definition": heavy_flag("x"), "context": HEAVY_CONTEXT}
    elif mode == "ofrep":
        path = "/environments/staging/ofrep/v1/evaluate/flags"
        body = {"context": {"targetingKey": "u1", "tier": "gold", "tags": HEAVY_CONTEXT["tags"][:4000]}}
    else:
        raise SystemExit(f"unknown mode {mode}")
    data = json.dumps(body).encode()
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def loop() -> None:
            while time.monotonic() < deadline:
                try:
                    json_type = {"Content-Type": "application/json"}
                    async with session.post(url + path, data=data, headers=json_type) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                        if resp.status == 429:
                            await asyncio.sleep(0.01)
                except (aiohttp.ClientError, TimeoutError):
                    statuses[0] += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return {str(k): v for k, v in sorted(statuses.items())}


@dataclass
class Bystander:
    """Watch push and health latencies (ms) seen while something else runs."""

    push_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    health_failures: int = 0
    push_failures: int = 0

    @staticmethod
    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def summary(self) -> dict[str, float]:
        return {
            "push_p50_ms": round(self.p(self.push_ms, 0.5), 1),
            "push_p99_ms": round(self.p(self.push_ms, 0.99), 1),
            "health_p50_ms": round(self.p(self.health_ms, 0.5), 1),
            "health_p99_ms": round(self.p(self.health_ms, 0.99), 1),
            "pushes": len(self.push_ms),
            "health_checks": len(self.health_ms),
            "health_failures": self.health_failures,
            "push_failures": self.push_failures,
        }


async def measure(t: Target, during: asyncio.Future[Any] | None, seconds: float) -> Bystander:
    """Writes to prod/orders every 100 ms and health checks every 20 ms, until `during` ends (or for
    `seconds` when there is none)."""
    seen = Bystander()
    stop = asyncio.Event()

    async def health() -> None:
        async with grpc.aio.insecure_channel(t.server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    seen.health_ms.append((time.perf_counter() - start) * 1000)
                except grpc.aio.AioRpcError:
                    seen.health_failures += 1
                    seen.health_ms.append(2000.0)
                await asyncio.sleep(0.02)

    async def pushes(admin: AdminClient, client: ConfigClient[Any]) -> None:
        n = 1
        while not stop.is_set():
            n += 1
            start = time.perf_counter()
            try:
                revision = (await admin.put("pool", n, env="prod", service="orders")).revision
                await client.wait_for_version(revision, timeout=30)
            except (ConfmeshError, TimeoutError):
                seen.push_failures += 1  # the write or its push did not make it: counted at its full time
            seen.push_ms.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.1)

    async with (
        AdminClient(t.server.address, token=t.tokens["admin"]) as admin,
        ConfigClient(
            t.server.address, environment="prod", service="orders", token=t.tokens["orders-service"]
        ) as client,  # fmt: skip
    ):
        tasks = [asyncio.create_task(health()), asyncio.create_task(pushes(admin, client))]
        if during is not None:
            await during
        else:
            await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return seen


async def attack(t: Target, mode: str, seconds: float, concurrency: int) -> tuple[Bystander, dict[str, Any]]:
    """The flood in its own process, the bystander here; both figures."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.security.isolation", "flood", mode, t.http, t.tokens["reader"],
        str(seconds), str(concurrency), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    done = asyncio.ensure_future(proc.communicate())
    seen = await measure(t, done, seconds)
    out, _ = done.result()
    return seen, json.loads(out.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["flood"])
    parser.add_argument("mode")
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("seconds", type=float)
    parser.add_argument("concurrency", type=int)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(flood(args.mode, args.url, args.token, args.seconds, args.concurrency))))


if __name__ == "__main__":
    main()
