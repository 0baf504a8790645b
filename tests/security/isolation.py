"""Attack a server's control plane while a bystander measures its delivery plane.

The attacker runs in its own process (tests/security/attacks.py), so its own work never shares the
bystander's event loop; the server runs in a third process. The bystander measures, during the
attack, the Watch push latency of a ConfigClient (a write's return to the client holding its version)
and the latency of gRPC health checks. bench/isolation.py prints the same figures;
tests/security/test_delivery_isolation.py asserts the bounds, attack by attack.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from confmesh.changes import ChangeSpec
from confmesh.client import AdminClient, ConfigClient, TLSConfig
from confmesh.errors import ConfmeshError
from confmesh.keys import Layer
from tests.helpers import ServerProcess
from tests.security.attacks import heavy_flag

GRANTS = {
    "admin": {"role": "admin"},
    "admin2": {"role": "admin"},
    "reader": {"role": "reader", "scopes": ["staging/*"]},
    "orders-service": {"role": "service", "environment": "prod", "service": "orders"},
    "staging-writer": {"role": "writer", "scopes": ["staging/*"], "flags": ["staging"]},
    "spammer": {"role": "writer", "scopes": ["staging/*"], "flags": ["staging"]},
    "scheduler": {"role": "writer", "scopes": ["staging/*"]},
    "proposer": {"role": "writer", "scopes": ["staging/*"]},
    "qa-writer": {"role": "writer", "scopes": ["qa", "qa/*"], "flags": ["qa"]},
    "defaults-writer": {"role": "writer", "scopes": ["defaults"]},
}
# qa is under an approval rule; the bystander's prod/orders is not (it writes every 100 ms).
POLICY = """identities: {}
approvals:
  - name: qa
    scopes: ["qa", "qa/*"]
    flags: ["qa"]
    approvers: 1
"""


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
    tls: dict[str, str] | None = None

    def client_tls(self) -> TLSConfig | None:
        if self.tls is None:
            return None
        return TLSConfig(ca=self.tls["ca"], cert=self.tls["client_cert"], key=self.tls["client_key"])

    def as_json(self) -> str:
        return json.dumps(
            {"grpc": self.server.address, "http": self.http, "tokens": self.tokens, "tls": self.tls}
        )


# Runs `confmesh` from another checkout's code roots (bench/isolation.py's "before"): argv[1] is the root.
BOOT = (
    "import sys; root = sys.argv.pop(1); "
    "sys.path[:0] = [f'{root}/core', f'{root}/server', f'{root}/client']; "
    "from confmesh.cli import main; main()"
)


@asynccontextmanager
async def target(
    etcd_endpoint: str, prefix: str, tmp: Path, code: Path | None = None, *, kind: str = "policy"
) -> AsyncIterator[Target]:
    """A `confmesh serve` process with --http-listen and a prod/orders config.

    kind ``policy``: policy-enforcing, tokens for GRANTS, an approval rule over qa, 1,000 staging flags
    and 5 heavy ones; ``open``: no policy (the development default); ``mtls``: a policy and mutual TLS
    on both listeners. `code`: another checkout to run the server from.
    """
    from confmesh.server.embedded_etcd import free_port

    tokens = await _tokens(etcd_endpoint, prefix) if kind != "open" else {}
    extra = ["--http-listen", f"127.0.0.1:{(http_port := free_port())}"]
    if kind != "open":
        (tmp / "policy.yaml").write_text(POLICY)
        extra += ["--policy", str(tmp / "policy.yaml")]
    tls = _pki(tmp) if kind == "mtls" else None
    if tls is not None:
        extra += [
            "--tls-cert",
            tls["server_cert"],
            "--tls-key",
            tls["server_key"],
            "--tls-client-ca",
            tls["ca"],
        ]
    server = ServerProcess(etcd_endpoint, prefix, *extra)
    if code is not None:  # [python, -m, confmesh.cli, ...] -> [python, -c, BOOT, root, ...]
        server.args[1:3] = ["-c", BOOT, str(code)]
    await server.start()
    t = Target(server, f"http://127.0.0.1:{http_port}", tokens, tls)
    try:
        async with AdminClient(server.address, token=tokens.get("admin"), tls=t.client_tls()) as admin:
            await admin.put("pool", 1, env="prod", service="orders")
            if kind == "policy":
                await _policy_fixture(t, admin)
        yield t
    finally:
        await server.stop()


async def _tokens(etcd_endpoint: str, prefix: str) -> dict[str, str]:
    from confmesh.keys import KeyLayout
    from confmesh.server.access import Grant, new_token
    from confmesh.server.etcd import Etcd
    from confmesh.server.records import store_token

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
    return tokens


async def _policy_fixture(t: Target, admin: AdminClient) -> None:
    await admin.put_flags("staging", ordinary_flags(1000))
    await admin.put_flags("staging", {f"heavy{i}": heavy_flag(f"heavy{i}") for i in range(5)})
    inverted = {"variants": {"on": True, "off": False}, "default_variant": "off", "off_variant": "on"}
    qa = [
        ChangeSpec(Layer.svc("qa", "orders"), "pool", 1),
        ChangeSpec(Layer.flags("qa"), "inverted", inverted),
    ]
    change = await admin.propose_change(qa)
    async with AdminClient(t.server.address, token=t.tokens["admin2"]) as admin2:
        await admin2.review_change(change.id, approve=True)
    await admin.apply_change(change.id)


def _pki(tmp: Path) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("bystander.prod.svc")
    files = {
        "ca": ca.cert_pem, "server_cert": server.cert_chain_pems[0], "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0], "client_key": client.private_key_pem,
    }  # fmt: skip
    for name, blob in files.items():
        blob.write_to_path(str(tmp / f"{name}.pem"))
    return {name: str(tmp / f"{name}.pem") for name in files}


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
        tls = t.client_tls()
        if tls is None:
            channel = grpc.aio.insecure_channel(t.server.address)
        else:
            channel = grpc.aio.secure_channel(t.server.address, tls.credentials())
        async with channel:
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
        AdminClient(t.server.address, token=t.tokens.get("admin"), tls=t.client_tls()) as admin,
        ConfigClient(
            t.server.address,
            environment="prod",
            service="orders",
            token=t.tokens.get("orders-service"),
            tls=t.client_tls(),
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
    """The attack in its own process, the bystander here; both figures."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.security.attacks", mode, str(seconds), str(concurrency),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    done = asyncio.ensure_future(proc.communicate(t.as_json().encode()))
    seen = await measure(t, done, seconds)
    out, _ = done.result()
    assert proc.returncode == 0, f"the {mode} attacker failed: {out.decode()[-2000:]}"
    return seen, json.loads(out.decode().strip().splitlines()[-1])
