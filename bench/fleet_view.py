"""What the fleet view costs etcd: operations per second per replica, at 1,000 and 10,000 instances.

    python bench/fleet_view.py [--instances 1000,10000] [--ack-rates 10,1000] [--seconds 10]

One replica's real FleetPublisher (2 s interval, as `serve` defaults) publishes a ledger of N
connected instances to a real etcd while ACKs arrive at R per second (each moves one instance to
a new version, as a rollout does). Reported per configuration: etcd transactions and lease
renewals per second, bytes written per second, and the CPU one publish costs. The goal: etcd
load independent of the ACK rate, a few operations per replica per interval.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from confmesh.keys import KeyLayout, Scope
from confmesh.server.embedded_etcd import EmbeddedEtcd
from confmesh.server.etcd import Etcd
from confmesh.server.fleet import FleetPublisher, encode
from confmesh.server.ledger import Ledger


def ledger_of(instances: int) -> Ledger:
    ledger = Ledger(server_id="bench-replica", max_records=instances)
    for i in range(instances):
        ledger.connect(
            i,
            instance_id=f"svc-{i:05d}",
            scope=Scope("prod", f"svc-{i % 50}"),
            peer=f"ipv4:10.0.{i // 250}.{i % 250}:5{i % 1000:03d}",
            labels={"zone": f"z{i % 3}", "pod": f"svc-{i:05d}-abcde"},
            known_version=1,
            known_hash="leafsum256:" + "0" * 64,
        )
        ledger.sent(i, 1)
    return ledger


async def measure(etcd: Etcd, instances: int, ack_rate: int, seconds: float) -> dict[str, float]:
    ledger = ledger_of(instances)
    publisher = FleetPublisher(
        etcd, KeyLayout("/bench"), ledger, f"bench-{instances}-{ack_rate}", interval=2.0
    )
    renewals = 0
    original_keep = etcd.keep_lease

    async def counted_keep(lease_id: int) -> int:
        nonlocal renewals
        renewals += 1
        return await original_keep(lease_id)

    etcd.keep_lease = counted_keep  # type: ignore[method-assign]
    written = 0
    original_txn = etcd.txn

    async def counted_txn(compare, success):  # type: ignore[no-untyped-def]
        nonlocal written
        written += sum(op.request_put.ByteSize() for op in success)
        return await original_txn(compare, success)

    etcd.txn = counted_txn  # type: ignore[method-assign]
    rng = random.Random(1)
    version = 2

    async def acks() -> None:
        nonlocal version
        started, done = time.monotonic(), 0
        while True:
            due = int((time.monotonic() - started) * ack_rate)
            for _ in range(due - done):
                ledger.ack(rng.randrange(instances), version, "leafsum256:" + f"{version:064x}")
                version += 1
            done = due
            await asyncio.sleep(0.01)

    task = asyncio.create_task(publisher.run())
    churn = asyncio.create_task(acks())
    await asyncio.sleep(seconds)
    task.cancel()
    churn.cancel()
    await asyncio.gather(task, churn, return_exceptions=True)
    await publisher.withdraw()
    etcd.keep_lease, etcd.txn = original_keep, original_txn  # type: ignore[method-assign]
    encode_ms = []
    for _ in range(5):
        started = time.process_time()
        encode(ledger.records())
        encode_ms.append((time.process_time() - started) * 1e3)
    return {
        "txn_per_s": publisher.writes / seconds,
        "renew_per_s": renewals / seconds,
        "kib_per_s": written / 1024 / seconds,
        "encode_ms": statistics.median(encode_ms),
        "chunks": publisher.published_chunks,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", default="1000,10000")
    parser.add_argument("--ack-rates", default="10,1000")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    machine = f"python {platform.python_version()} on {platform.machine()}"
    print(f"{machine}, {args.seconds:g} s per row, 2 s interval")
    heads = ("instances", "ACKs/s", "txn/s", "renewals/s", "KiB/s", "chunks", "encode ms")
    print("  ".join(f"{h:>9}" for h in heads))
    with tempfile.TemporaryDirectory() as tmp:
        embedded = EmbeddedEtcd(Path(tmp) / "etcd")
        await embedded.start()
        etcd = Etcd([embedded.endpoint])
        await etcd.connect()
        try:
            for n in (int(x) for x in args.instances.split(",")):
                for rate in (int(x) for x in args.ack_rates.split(",")):
                    r = await measure(etcd, n, rate, args.seconds)
                    cells = (
                        f"{n}", f"{rate}", f"{r['txn_per_s']:.2f}", f"{r['renew_per_s']:.2f}",
                        f"{r['kib_per_s']:.0f}", f"{r['chunks']:.0f}", f"{r['encode_ms']:.1f}",
                    )  # fmt: skip
                    print("  ".join(f"{c:>9}" for c in cells))
        finally:
            await etcd.close()
            await embedded.stop()


if __name__ == "__main__":
    asyncio.run(main())
