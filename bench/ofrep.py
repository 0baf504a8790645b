"""OFREP bulk evaluation over HTTP against the same evaluations in process: the price of the hop.

    pip install -e '.[bench]' && python bench/ofrep.py [--clients 100] [--seconds 10] [--workers 1]

One `confmesh serve --http-listen` process on a throwaway etcd, with FLAGS (10
flags: on/off, rules on an attribute, percentage splits). `--clients`
concurrent HTTP clients (aiohttp, one connection each, in this process) POST
``/environments/bench/ofrep/v1/evaluate/flags`` with a different user's
context each time, for `--seconds`. Printed: requests per second, flag
evaluations per second (requests x 10), and the median and p99 latency of a
request. Beside it, ``client.flags`` evaluates the same 10 flags for the same
contexts in this process (a ConfigClient on the same server), as evaluations
per second and per 10-flag "bulk". Load generator and server share the
machine's cores, so the HTTP figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from typing import Any

import aiohttp
from _harness import etcd_and_server

from confmesh.client import AdminClient, ConfigClient
from confmesh.server.embedded_etcd import free_port

FLAGS: dict[str, Any] = {
    **{f"on-{n}": {"variants": {"on": True, "off": False}, "default_variant": "on"} for n in range(3)},
    **{f"tier-{n}": {"variants": {"on": True, "off": False}, "default_variant": "off",
                     "rules": [{"id": "paid", "clauses": [{"attribute": "tier", "op": "in",
                                                           "values": ["premium", "enterprise"]}],
                                "serve": {"variant": "on"}}]} for n in range(3)},
    **{f"split-{n}": {"variants": {"a": "a", "b": "b"}, "default_variant": "a",
                      "rules": [{"id": "half", "serve": {"split": [{"variant": "a", "percent": 25},
                                                                 {"variant": "b", "percent": 75}]}}]}
       for n in range(4)},
}  # fmt: skip
USERS = 10_000


def context(n: int) -> dict[str, Any]:
    return {"targetingKey": f"user-{n % USERS}", "tier": "premium" if n % 2 else "free"}


async def http_load(url: str, clients: int, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    requests = 0
    deadline = time.perf_counter() + seconds

    async def one(index: int) -> None:
        nonlocal requests
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            n = index
            while time.perf_counter() < deadline:
                body = json.dumps({"context": context(n)})
                start = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies.append(time.perf_counter() - start)
                requests += 1
                n += clients

    await asyncio.gather(*(one(i) for i in range(clients)))
    return requests, latencies


async def in_process(address: str, repeats: int) -> list[float]:
    """Seconds per 10-flag evaluation, one figure per pass over USERS contexts."""
    contexts = [context(n) for n in range(USERS)]
    keys = list(FLAGS)
    passes = []
    async with ConfigClient(address, environment="bench", service="svc") as client:
        flags = client.flags
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for ctx in contexts:
                for key in keys:
                    if key.startswith("split"):
                        flags.get_str(key, "?", ctx)
                    else:
                        flags.get_bool(key, False, ctx)
            passes.append((time.perf_counter() - start) / USERS)
    return passes[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    http_port = free_port()
    with etcd_and_server("--http-listen", f"127.0.0.1:{http_port}", "--workers", str(args.workers)) as stack:

        async def run() -> tuple[int, list[float], list[float]]:
            async with AdminClient(stack.address, actor="bench") as admin:
                await admin.put_flags("bench", FLAGS)
            url = f"http://127.0.0.1:{http_port}/environments/bench/ofrep/v1/evaluate/flags"
            await http_load(url, args.clients, 1.0)  # warm-up
            requests, latencies = await http_load(url, args.clients, args.seconds)
            local = await in_process(stack.address, args.repeats)
            return requests, latencies, local

        requests, latencies, local = asyncio.run(run())
    latencies.sort()
    rps = requests / args.seconds
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1e3
    per_bulk = statistics.median(local)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"OFREP bulk ({len(FLAGS)} flags), {args.clients} clients, {args.seconds:.0f} s, "
          f"server workers {args.workers}:")  # fmt: skip
    print(f"  {rps:,.0f} requests/s = {rps * len(FLAGS):,.0f} flag evaluations/s; "
          f"latency median {p50:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip
    print(f"client.flags in process, same {len(FLAGS)} flags and contexts (median of {args.repeats} passes):")
    print(f"  {1 / per_bulk:,.0f} bulks/s = {len(FLAGS) / per_bulk:,.0f} flag evaluations/s; "
          f"{per_bulk * 1e6:.2f} us per bulk ({per_bulk / len(FLAGS) * 1e9:.0f} ns per flag)")  # fmt: skip
    ratio = (len(FLAGS) / per_bulk) / (rps * len(FLAGS))
    print(f"  in process / OFREP: {ratio:,.0f}x the evaluations per second")


if __name__ == "__main__":
    main()
