"""Consul KV blocking queries on confmesh: what thousands of waiting requests cost, and how fast a
change wakes the ones that watch it (and only those).

    python bench/consul_blocking.py [--waiters 2000] [--keys 200] [--writes 20]

`confmesh serve --http-listen` on its own etcd; --waiters blocking GETs (`?index=N&wait=5m`) spread
over --keys keys of one service layer, from 8 loopback addresses (the listener admits 256
connections per address). Measured: the server's CPU over 5 s with all of them waiting and nothing
changing; then --writes writes, each to one key: the time from the write's answer to each of its
waiters' answers (p50/p99), and how many waiters of other keys answered (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import etcd_and_server
from propagation import cpu_seconds

from confmesh.client import AdminClient
from confmesh.server.embedded_etcd import free_port

ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]


async def run(address: str, http: str, pid: int, waiters: int, keys: int, writes: int) -> None:
    async with AdminClient(address, actor="bench") as admin:
        for k in range(keys):
            await admin.put(f"k{k}", 0, env="bench", service="svc")
        sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, local_addr=(a, 0)),
                timeout=aiohttp.ClientTimeout(total=None),
            )
            for a in ADDRESSES
        ]
        index: dict[int, int] = {}
        for k in range(keys):
            async with sessions[0].get(f"{http}/v1/kv/config/bench/svc/k{k}") as resp:
                index[k] = int(resp.headers["X-Consul-Index"])
        woke: dict[int, list[float]] = {k: [] for k in range(keys)}

        async def wait(n: int) -> None:
            k = n % keys
            session = sessions[n % len(sessions)]
            url = f"{http}/v1/kv/config/bench/svc/k{k}?index={index[k]}&wait=5m"
            async with session.get(url) as resp:
                await resp.read()
            woke[k].append(time.perf_counter())

        tasks = [asyncio.create_task(wait(n)) for n in range(waiters)]
        await asyncio.sleep(3)  # all connected and waiting
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(5)
        idle = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
        print(f"{waiters} blocking queries waiting: server CPU {idle * 100:.2f}% of one core over 5 s")
        latencies: list[float] = []
        from_start: list[float] = []
        write_ms: list[float] = []
        for w in range(writes):
            k = w * (keys // writes)
            before = {j: len(v) for j, v in woke.items()}
            started = time.perf_counter()
            await admin.put(f"k{k}", w + 1, env="bench", service="svc")
            written = time.perf_counter()
            write_ms.append((written - started) * 1000)
            expected = waiters // keys + (1 if k < waiters % keys else 0)
            deadline = time.monotonic() + 5
            while len(woke[k]) - before[k] < expected and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # the wake times are taken by the waiters themselves
            latencies += [(t - written) * 1000 for t in woke[k][before[k] :]]
            from_start += [(t - started) * 1000 for t in woke[k][before[k] :]]
            others = sum(len(v) - before[j] for j, v in woke.items() if j != k)
            if others:
                print(f"write {w}: {others} waiters of other keys answered")
            await asyncio.sleep(0.1)
        unrelated = sum(
            len(v) for j, v in woke.items() if j not in {w * (keys // writes) for w in range(writes)}
        )

        def p(xs: list[float], q: float) -> float:
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(len(xs) * q))]

        median_write = statistics.median(write_ms)
        print(f"{writes} writes (each {median_write:.1f} ms median, committed and settled) woke "
              f"{len(latencies)} waiters: from the write's start p50 {p(from_start, 0.5):.1f} ms, p99 "
              f"{p(from_start, 0.99):.1f} ms; after its answer p50 {p(latencies, 0.5):.1f} ms, p99 "
              f"{p(latencies, 0.99):.1f} ms; waiters of unwritten keys answered: {unrelated}")  # fmt: skip
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in sessions:
            await s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--writes", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
    port = free_port()
    with etcd_and_server("--http-listen", f"127.0.0.1:{port}") as stack:
        asyncio.run(run(stack.address, f"http://127.0.0.1:{port}", stack.server.pid, args.waiters, args.keys,
                        args.writes))  # fmt: skip


if __name__ == "__main__":
    main()
