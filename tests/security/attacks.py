"""The attacks of the delivery-isolation issue, each as an attacker runs it, in a process of its own.

``python -m tests.security.attacks MODE SECONDS CONCURRENCY`` reads the target (addresses, tokens,
TLS files) as JSON on stdin, runs MODE until SECONDS have passed and prints one JSON line: the answers
it got, counted, and the facts the test checks (what got through must be nothing it may not do).
tests/security/isolation.py measures a bystander meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc.aio

from confmesh.changes import ChangeSpec
from confmesh.client import AdminClient, TLSConfig
from confmesh.errors import ConfmeshError
from confmesh.keys import Layer, Scope
from confmesh.server.fleet import encode
from confmesh.server.ledger import InstanceRecord
from confmesh.v1 import relay_pb2

HEAVY_RULE_VALUES = [f"v{i}" for i in range(10_000)]
HEAVY_CONTEXT = {"targetingKey": "u1", "tags": [f"t{i}" for i in range(14_000)]}


def heavy_flag(key: str) -> dict[str, Any]:
    """The reported explain attack: a `contains` rule over 10,000 values (against a 14,000-item list)."""
    return {
        "key": key,
        "variants": {"on": True, "off": False},
        "default_variant": "off",
        "rules": [
            {"id": "tags", "clauses": [{"attribute": "tags", "op": "contains", "values": HEAVY_RULE_VALUES}],
             "serve": {"variant": "on"}},
        ],
    }  # fmt: skip


@dataclass
class Attacker:
    target: dict[str, Any]
    deadline: float
    concurrency: int
    answers: Counter[str] = field(default_factory=Counter)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def admin(self, who: str, **kwargs: Any) -> AdminClient:
        return AdminClient(
            self.target["grpc"], token=self.target["tokens"][who], actor=who, timeout=30, **kwargs
        )

    def session(self, who: str | None = "reader", **headers: str) -> aiohttp.ClientSession:
        if who is not None:
            headers["Authorization"] = f"Bearer {self.target['tokens'][who]}"
        return aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30))

    async def post(self, session: aiohttp.ClientSession, path: str, body: Any, **headers: str) -> int:
        """One request; its status counted (0: no answer)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            async with session.post(
                self.target["http"] + path, data=data, headers={"Content-Type": "application/json", **headers}
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.answers[str(status)] += 1
        if status == 429:
            await asyncio.sleep(0.01)
        return status

    async def grpc(self, call: Awaitable[Any]) -> Any:
        """One gRPC call; its outcome counted as ok or the error code."""
        try:
            result = await call
        except ConfmeshError as exc:
            self.answers[exc.code] += 1
            return exc
        self.answers["ok"] += 1
        return result

    async def loops(self, body: Callable[[], Awaitable[object]]) -> None:
        async def loop() -> None:
            while self.running:
                await body()

        await asyncio.gather(*(loop() for _ in range(self.concurrency)))

    async def idle(self) -> None:
        await asyncio.sleep(max(0.0, self.deadline - time.monotonic()))


async def explain(a: Attacker) -> None:
    """1. A reader's explain of a caller-supplied flag with a huge `contains` rule."""
    body = {"env": "staging", "key": "x", "definition": heavy_flag("x"), "context": HEAVY_CONTEXT}
    async with a.session() as session:
        await a.loops(lambda: a.post(session, "/console/api/flags/explain", body))


async def ofrep(a: Attacker) -> None:
    """2. A reader's concurrent bulk OFREP evaluations over 1,000 flags and 5 heavy ones."""
    body = {"context": {"targetingKey": "u1", "tier": "gold", "tags": HEAVY_CONTEXT["tags"][:4000]}}
    async with a.session() as session:
        await a.loops(lambda: a.post(session, "/environments/staging/ofrep/v1/evaluate/flags", body))


async def rebinding(a: Attacker) -> None:
    """3. A DNS-rebinding page: its Host and Origin are its own name, on a server without a policy."""
    port = a.target["http"].rsplit(":", 1)[1]
    evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    csrf = "x" * 40  # a page sets its own cookie for its own name
    async with a.session(None, Cookie=f"cm_csrf={csrf}", **evil) as session:
        body = {"env": "prod", "service": "orders", "set": {"pool": 666}, "mode": "write"}
        await a.loops(lambda: a.post(session, "/console/api/config", body, **{"X-CSRF-Token": csrf}))


async def proposals(a: Attacker) -> None:
    """4. One staging writer floods proposals; another team's proposal is still taken."""
    async with a.admin("spammer") as spammer, a.admin("qa-writer") as qa:
        n = 0

        async def one() -> None:
            nonlocal n
            n += 1
            await a.grpc(spammer.propose_change([ChangeSpec(Layer.svc("staging", "spam"), f"k{n}", n)]))

        await a.loops(one)
        other = await qa.propose_change([ChangeSpec(Layer.svc("qa", "orders"), "pool", 3)])
        a.facts["other_team_proposed"] = bool(other.id)
        await qa.cancel_change(other.id)
        for change in await spammer.changes(states=["open", "approved"]):
            await spammer.cancel_change(change.id)


async def defaults_write(a: Attacker) -> None:
    """5. A writer of `defaults` changes what the approval-covered qa scopes resolve to, unreviewed."""
    async with a.admin("defaults-writer") as writer:
        n = 0

        async def one() -> None:
            nonlocal n
            n += 1
            await a.grpc(writer.put("timeout_ms", n, env=None, service=None))

        await a.loops(one)


async def slowloris(a: Attacker) -> None:
    """6. 800 connections from one address, each with an unfinished request, held."""
    host, port = a.target["http"].removeprefix("http://").rsplit(":", 1)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(800):
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /console/api/me HTTP/1.1\r\nHost: localhost\r\n")
            held.append((reader, writer))
        except OSError:
            a.answers["connect_refused"] += 1
    await asyncio.sleep(1.0)
    closed = await asyncio.gather(*(_closed_within(reader, 0.2) for reader, _ in held))
    a.facts["held_open"] = len(held) - sum(closed)
    await a.idle()
    for _, writer in held:
        writer.close()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        await asyncio.wait_for(reader.read(), seconds)  # an answer (408, 429) or none, then the end
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def live_streams(a: Attacker) -> None:
    """7. One identity opens live-page streams beyond its share; a revoked identity's stream ends."""
    url = a.target["http"] + "/console/api/events"
    statuses: Counter[int] = Counter()
    async with a.session() as session:
        opened = []
        for _ in range(12):
            resp = await session.get(url)
            statuses[resp.status] += 1
            if resp.status == 200:
                opened.append(resp)
            else:
                resp.release()
        a.facts["streams"] = {str(k): v for k, v in statuses.items()}
        async with a.admin("admin") as admin:
            token = await admin.create_token("doomed-reader", "reader", scopes=["staging/*"])
            async with (
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as doomed,
                doomed.get(url) as resp,
            ):
                await resp.content.readuntil(b"\n\n")  # the first update
                await admin.revoke_token("doomed-reader")
                started = time.monotonic()
                ended_with = b""
                while chunk := await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10):
                    ended_with = chunk
                    if b"denied" in chunk:
                        break
                a.facts["revoked_stream_ended_s"] = round(time.monotonic() - started, 2)
                a.facts["revoked_stream_denied"] = b"denied" in ended_with
        await a.idle()
        for resp in opened:
            resp.close()


async def scheduled(a: Attacker) -> None:
    """8 and 11. A writer's 45 changes fall due at once; a revoked writer's approved change falls due;
    another team's approved change, due just after, applies without waiting for them all."""
    at = time.time() + 1.0
    async with (
        a.admin("scheduler") as spammer,
        a.admin("qa-writer") as qa,
        a.admin("admin") as admin,
        a.admin("admin2") as admin2,
    ):
        for n in range(45):
            await a.grpc(
                spammer.propose_change([ChangeSpec(Layer.svc("staging", "sched"), f"k{n}", n)], apply_at=at)
            )
        token = await admin.create_token("doomed-writer", "writer", scopes=["qa/*"])
        async with AdminClient(a.target["grpc"], token=token, actor="doomed-writer") as doomed:
            late = await doomed.propose_change(
                [ChangeSpec(Layer.svc("qa", "orders"), "doomed", 1)], apply_at=at
            )
        await admin2.review_change(late.id, approve=True)
        await admin.revoke_token("doomed-writer")
        prod = await qa.propose_change(
            [ChangeSpec(Layer.svc("qa", "orders"), "sale", True)], apply_at=at + 0.1
        )
        await admin2.review_change(prod.id, approve=True)
        found = await settled(qa, prod.id)
        a.facts["other_team_waited_s"] = round(found.applied_at.ToNanoseconds() / 1e9 - (at + 0.1), 2)
        a.facts["revoked_change_applied"] = (await settled(qa, late.id)).applied_revision != 0
        await a.idle()


async def settled(client: AdminClient, change_id: str) -> Any:
    """The change request once it has applied or failed (at most 10 s)."""
    for _ in range(200):
        found = await client.change(change_id)
        if found.applied_revision or found.error:
            return found
        await asyncio.sleep(0.05)
    raise TimeoutError(f"change {change_id} neither applied nor failed")


async def propose_big(a: Attacker) -> None:
    """9. Console proposals past the limits: 1,200 changes, an apply that can never fit etcd's request
    limit, an apply_at of 1e20."""
    layer = "staging/big"
    bodies = [
        {"changes": [{"layer": layer, "key": f"k{n}", "value": n} for n in range(1200)]},
        {"changes": [{"layer": layer, "key": f"v{n}", "value": "x" * 200_000} for n in range(4)]},
        {"changes": [{"layer": layer, "key": "k", "value": 1}], "apply_at": 1e20},
    ]
    async with a.session("proposer") as session:
        n = 0

        async def one() -> None:
            nonlocal n
            n += 1
            await a.post(session, "/console/api/propose", bodies[n % len(bodies)])

        await a.loops(one)


async def tls_without_certificate(a: Attacker) -> None:
    """10. OFREP and gRPC from a client without a certificate, on a mutual-TLS server."""
    tls = a.target["tls"]
    context = ssl.create_default_context(cafile=tls["ca"])
    url = a.target["http"].replace("http://", "https://") + "/environments/prod/ofrep/v1/configuration"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def https() -> None:
            try:
                async with session.get(url, ssl=context) as resp:
                    a.answers[str(resp.status)] += 1
            except (aiohttp.ClientError, ssl.SSLError, OSError):
                a.answers["handshake_refused"] += 1

        async def grpc_call() -> None:
            async with AdminClient(a.target["grpc"], tls=TLSConfig(ca=tls["ca"]), timeout=2) as nocert:
                await a.grpc(nocert.status())

        n = 0

        async def one() -> None:
            nonlocal n
            n += 1
            await (https() if n % 2 else grpc_call())

        await a.loops(one)


async def kill_loop(a: Attacker) -> None:
    """12. Kill an already-killed flag again and again; kill a flag whose off variant serves true under
    an approval rule."""
    async with a.admin("staging-writer") as writer, a.admin("qa-writer") as qa:
        await writer.set_flag_enabled("f0", False, envs=["staging"])
        before, _ = await writer.get_flags("staging")

        async def one() -> None:
            await a.grpc(writer.set_flag_enabled("f0", False, envs=["staging"]))
            await a.grpc(qa.set_flag_enabled("inverted", False, envs=["qa"]))

        await a.loops(one)
        after, _ = await writer.get_flags("staging")
        a.facts["kill_writes"] = after - before
        _, qa_flags = await qa.get_flags("qa")
        a.facts["inverted_still_enabled"] = qa_flags["inverted"].get("enabled", True)


async def big_change(a: Attacker) -> None:
    """13. Readers re-reading a 1,000-change request; a reader's denied requests, many paths."""
    async with a.admin("proposer") as proposer:
        big = await proposer.propose_change(
            [ChangeSpec(Layer.svc("staging", "big"), f"k{n}", "v" * 100) for n in range(1000)]
        )
    readers = [a.admin("reader") for _ in range(4)]
    for r in readers:
        await r.__aenter__()
    try:
        n = 0

        async def one() -> None:
            nonlocal n
            n += 1
            read = await a.grpc(readers[n % 4].change(big.id))
            if not isinstance(read, ConfmeshError):
                a.facts["bytes_per_read"] = read.ByteSize()

        async with a.session() as session:

            async def denied() -> None:
                async with session.get(
                    a.target["http"] + f"/console/api/config?env=prod&service=s{n}"
                ) as resp:
                    await resp.read()
                    a.answers[f"console_{resp.status}"] += 1

            async def both() -> None:
                await one()
                await denied()

            await a.loops(both)
    finally:
        for r in readers:
            await r.close()
        async with a.admin("proposer") as proposer:
            await proposer.cancel_change(big.id)


async def ofrep_nits(a: Attacker) -> None:
    """14. OFREP requests that must be refused cleanly: NaN in a context, `If-None-Match: *` on the bulk
    call, a bad environment name."""
    async with a.session() as session:
        n = 0

        async def one() -> None:
            nonlocal n
            n += 1
            kind = n % 3
            if kind == 0:
                path, body, headers = (
                    "/environments/staging/ofrep/v1/evaluate/flags",
                    b'{"context": {"x": NaN}}',
                    {},
                )
            elif kind == 1:
                path, body, headers = (
                    "/environments/staging/ofrep/v1/evaluate/flags",
                    {"context": {}},
                    {"If-None-Match": "*"},
                )
            else:
                path, body, headers = (
                    "/environments/Bad%20Env/ofrep/v1/evaluate/flags/f0",
                    {"context": {}},
                    {},
                )
            status = await a.post(session, path, body, **headers)
            a.answers[f"kind{kind}_{status}"] += 1

        await a.loops(one)


def _fake_report(n: int) -> bytes:
    """A fleet report of `n` made-up instances, half staging, half prod, in chunks of 1,000."""
    scopes = (Scope("staging", "api"), Scope("prod", "orders"))
    records = [
        InstanceRecord(i, f"fake-{i}", scopes[i % 2], "p", {"k": "v" * 50}, 1.0, 1.0) for i in range(n)
    ]
    report = relay_pb2.FleetReport(chunks=[relay_pb2.FleetChunk(summary=v) for v in encode(records)])
    return relay_pb2.MirrorRequest(fleet=report).SerializeToString()


async def mirror(a: Attacker) -> None:
    """15. Relays with a staging reader's token: fleet reports of 20,000 made-up instances (prod ones
    among them) as fast as they can; one the same once a second, as a relay does; one asks to carry
    prod; one never reads what it is sent."""
    token = (("authorization", f"Bearer {a.target['tokens']['reader']}"),)
    report = await asyncio.to_thread(_fake_report, 20_000)

    def hello(relay_id: str, *scopes: str) -> bytes:
        msg = relay_pb2.MirrorRequest(hello=relay_pb2.MirrorHello(relay_id=relay_id, scopes=scopes))
        return msg.SerializeToString()

    async with grpc.aio.insecure_channel(a.target["grpc"]) as channel:
        mirror_call = channel.stream_stream("/confmesh.v1.RelayService/Mirror")

        async def read_until_deadline(call: Any) -> None:
            """Read what the server sends until the attack's time is up (or the stream ends)."""
            while a.running:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.01, a.deadline - time.monotonic())):
                        if await call.read() is grpc.aio.EOF:
                            return

        async def flood(index: int) -> None:
            async def out() -> Any:
                yield hello(f"flood-{index}")
                while a.running:
                    yield report
                    await asyncio.sleep(0.02)

            call = mirror_call(out(), metadata=token)
            try:
                await read_until_deadline(call)
                a.answers["ok"] += 1
            except grpc.aio.AioRpcError as exc:
                a.answers[exc.code().name] += 1
            finally:
                call.cancel()

        async def honest() -> None:
            async def out() -> Any:
                yield hello("honest")
                while a.running:
                    yield report
                    await asyncio.sleep(1.1)

            call = mirror_call(out(), metadata=token)
            try:
                await read_until_deadline(call)
            except grpc.aio.AioRpcError as exc:
                a.facts["honest_ended"] = exc.code().name
            finally:
                call.cancel()

        async def wants_prod() -> None:
            async def out() -> Any:
                yield hello("greedy", "prod/*")
                await asyncio.sleep(30)

            call = mirror_call(out(), metadata=token)
            try:
                await call.read()
            except grpc.aio.AioRpcError as exc:
                a.facts["prod_refused"] = exc.code().name
            finally:
                call.cancel()

        async def never_reads() -> None:
            async def out() -> Any:
                yield hello("sleeper")
                await asyncio.sleep(30)

            # A connection of its own: a stream that is never read stalls its whole connection.
            async with grpc.aio.insecure_channel(a.target["grpc"]) as own:
                call = own.stream_stream("/confmesh.v1.RelayService/Mirror")(out(), metadata=token)
                await a.idle()
                call.cancel()

        await asyncio.gather(*(flood(i) for i in range(a.concurrency)), honest(), wants_prod(), never_reads())
        async with a.admin("admin") as admin:
            status = await admin.status()
        relayed = [i for i in status.instances if i.relay_path == "honest"]
        a.facts["flooders_kept"] = sum(i.relay_path.startswith("flood-") for i in status.instances)
        a.facts["relayed_prod"] = sum(i.environment == "prod" for i in relayed)
        a.facts["relayed_staging"] = sum(i.environment == "staging" for i in relayed)


async def consul_kv(a: Attacker) -> None:
    """16. The Consul KV API: a reader lists a 2,000-key layer recursively as fast as it can, holds
    200 blocking queries on keys nobody writes, and reads prod (403); a writer PUTs values of 200 KB
    (taken) and 400 KB (past the 256 KiB value limit: refused, 400)."""
    kv = f"{a.target['http']}/v1/kv"
    async with a.admin("staging-writer") as writer:
        layer = Layer.svc("staging", "consul")
        # Set-up, not the attack: in 20 writes of 100 (a 1,000-change write is a cost of its own), so
        # what the bystander measures is the Consul API.
        for start in range(0, 2000, 100):
            await writer.apply(
                [ChangeSpec(layer, f"k{i:04d}.value", "x" * 40) for i in range(start, start + 100)]
            )
    reader_token = {"X-Consul-Token": a.target["tokens"]["reader"]}
    writer_token = {"X-Consul-Token": a.target["tokens"]["staging-writer"]}
    async with (
        aiohttp.ClientSession(headers=reader_token) as reader,
        # The blocking queries hold 200 connections of their own (a session's default is 100 in all).
        aiohttp.ClientSession(headers=reader_token, connector=aiohttp.TCPConnector(limit=0)) as waiting,
        aiohttp.ClientSession(headers=writer_token) as writer_session,
    ):

        async def list_all() -> None:
            try:
                async with reader.get(f"{kv}/config/staging/consul/?recurse") as resp:
                    body = await resp.json() if resp.status == 200 else None
                    a.answers[f"list_{resp.status}"] += 1
                    if body is not None:
                        a.facts["listed"] = len(body)
            except (aiohttp.ClientError, TimeoutError):
                a.answers["list_0"] += 1

        async def blocked(n: int) -> None:
            url = f"{kv}/config/staging/consul/idle{n}?index=1&wait=10s"
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(max(0.1, a.deadline - time.monotonic())), waiting.get(url) as resp:
                    a.answers[f"blocked_{resp.status}"] += 1

        async def big_puts() -> None:
            size = 200_000
            while a.running:
                async with writer_session.put(f"{kv}/config/staging/consul/big", data=b"y" * size) as resp:
                    a.answers[f"put{size // 1000}k_{resp.status}"] += 1
                size = 600_000 - size  # 200 KB, then 400 KB, ...
                await asyncio.sleep(0.2)

        async with reader.get(f"{kv}/config/prod/orders/pool") as resp:
            a.facts["prod_read"] = resp.status
        await asyncio.gather(a.loops(list_all), big_puts(), *(blocked(n) for n in range(200)))


ATTACKS: dict[str, Callable[[Attacker], Awaitable[None]]] = {
    "explain": explain,
    "ofrep": ofrep,
    "rebinding": rebinding,
    "proposals": proposals,
    "defaults": defaults_write,
    "slowloris": slowloris,
    "live": live_streams,
    "scheduled": scheduled,
    "propose-big": propose_big,
    "tls": tls_without_certificate,
    "kill": kill_loop,
    "big-change": big_change,
    "ofrep-nits": ofrep_nits,
    "mirror": mirror,
    "consul": consul_kv,
}


async def run(mode: str, target: dict[str, Any], seconds: float, concurrency: int) -> dict[str, Any]:
    attacker = Attacker(target, time.monotonic() + seconds, concurrency)
    await ATTACKS[mode](attacker)
    return {"answers": dict(sorted(attacker.answers.items())), "facts": attacker.facts}


def main() -> None:
    mode, seconds, concurrency = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    target = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run(mode, target, seconds, concurrency))))


if __name__ == "__main__":
    main()
