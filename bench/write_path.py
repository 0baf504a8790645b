"""Sustained write rate: AdminService Put through confmesh vs raw etcd puts, same client machine.

    python bench/write_path.py [--seconds 5] [--concurrency 1,16]

A confmesh Put is validated, read-at-revision, written in one guarded etcd
transaction with its layer marker, and answered once the server's cache has
it (read-your-writes); a raw put is one etcd Put. Reports writes per second
(median of 3 runs) and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _harness import etcd_and_server


async def rate(put: object, seconds: float, concurrency: int) -> float:
    count = 0
    deadline = time.monotonic() + seconds

    async def loop(worker: int) -> None:
        nonlocal count
        n = 0
        while time.monotonic() < deadline:
            await put(worker, n)  # type: ignore[operator]
            n += 1
            count += 1

    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    return count / seconds


async def measure(address: str, endpoint: str, seconds: float, concurrency: int) -> tuple[float, float]:
    from etcd3aio import Etcd3Client

    from confmesh.client import AdminClient

    async with AdminClient(address) as admin, Etcd3Client([endpoint]) as etcd:
        assert etcd.kv is not None
        kv = etcd.kv

        async def via_confmesh(worker: int, n: int) -> None:
            await admin.put(f"bench.w{worker}", n, env="bench")

        async def via_etcd(worker: int, n: int) -> None:
            await kv.put(f"/raw/bench/w{worker}", str(n))

        ours = [await rate(via_confmesh, seconds, concurrency) for _ in range(3)]
        raw = [await rate(via_etcd, seconds, concurrency) for _ in range(3)]
    return statistics.median(ours), statistics.median(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args()
    with etcd_and_server() as stack:
        for c in (int(x) for x in args.concurrency.split(",")):
            ours, raw = asyncio.run(measure(stack.address, stack.etcd_endpoint, args.seconds, c))
            print(
                f"concurrency {c:>3}: confmesh Put {ours:8.0f}/s   raw etcd put {raw:8.0f}/s   "
                f"ratio {ours / raw:.2f}"
            )


if __name__ == "__main__":
    main()
