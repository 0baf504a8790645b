"""The Watch path against the grpc.aio floor: server CPU per delivery, confmesh vs a bare bidi stream.

    python bench/fanout_floor.py [--streams 1000] [--writes 20] [--pairs 3] [--procs 4]

The floor is the least a Python gRPC server can do per push: a bare grpc.aio server on the same
method (``/confmesh.v1.ConfigService/Watch``) that, per write, serializes one WatchResponse once and
hands the same bytes to every stream (a one-slot mailbox each), and reads one ACK back, nothing
else. confmesh is `confmesh serve` on its own etcd. The same clients (bench/propagation.py's
receive-only streams: read the stamp, ACK) connect to each in turn, N streams on their own
connections in --procs processes; writes are --gap apart. Each run measures the server process's
CPU (user + system) from the first write to the last delivery, divided by the deliveries.

Runs alternate (floor, confmesh) --pairs times on one machine; the figure is the median of the
per-pair ratios. Raw etcd watchers on the same key space give the p99 beside confmesh's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import etcd_and_server
from propagation import (
    collect,
    cpu_seconds,
    etcd_worker,
    receiver_worker,
    start_workers,
    write_confmesh,
    write_etcd,
)

PUBLISH = "/bench.Floor/Publish"


# -- the floor server (its own process) -------------------------------------------------------


def floor_server(port: int) -> None:
    import grpc
    import grpc.aio

    from confmesh.v1 import config_pb2

    class Slot:
        __slots__ = ("event", "pending")

        def __init__(self) -> None:
            self.event = asyncio.Event()
            self.pending: bytes | None = None

    slots: set[Slot] = set()
    version = 1
    current = config_pb2.WatchResponse(snapshot=config_pb2.Snapshot(version=1, hash="h1")).SerializeToString()

    async def watch(requests: Any, context: Any) -> Any:
        await anext(aiter(requests))  # the subscribe
        slot = Slot()
        slots.add(slot)

        async def read() -> None:
            async for _ack in requests:
                pass

        reader = asyncio.create_task(read())
        try:
            yield current
            while True:
                await slot.event.wait()
                slot.event.clear()
                data, slot.pending = slot.pending, None
                if data is not None:
                    yield data
        finally:
            reader.cancel()
            slots.discard(slot)

    async def publish(stamp_us: bytes, context: Any) -> bytes:
        nonlocal version, current
        version += 1
        snap = config_pb2.Snapshot(version=version, hash=f"h{version}")
        stamp = snap.config.fields["bench"].struct_value.fields["stamp"].struct_value.fields
        stamp["t"].number_value = int(stamp_us.decode())
        current = config_pb2.WatchResponse(snapshot=snap).SerializeToString()
        for slot in slots:
            slot.pending = current
            slot.event.set()
        return b""

    async def main() -> None:
        server = grpc.aio.server()
        handlers = {
            "Watch": grpc.stream_stream_rpc_method_handler(
                watch, request_deserializer=config_pb2.WatchRequest.FromString, response_serializer=None
            ),
        }
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("confmesh.v1.ConfigService", handlers),
            grpc.method_handlers_generic_handler(
                "bench.Floor", {"Publish": grpc.unary_unary_rpc_method_handler(publish)}
            ),
        ))  # fmt: skip
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("floor serving", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


async def write_floor(address: str, writes: int, gap: float) -> None:
    import grpc.aio

    async with grpc.aio.insecure_channel(address) as channel:
        publish = channel.unary_unary(PUBLISH)
        for _ in range(writes):
            await publish(str(time.time_ns() // 1000).encode())
            await asyncio.sleep(gap)


# -- the driver -------------------------------------------------------------------------------


def measure(
    address: str, pid: int, write: Any, n: int, writes: int, procs: int, gap: float
) -> dict[str, Any]:
    workers, _, results = start_workers(receiver_worker, address, n, procs, writes, True)
    cpu0 = cpu_seconds(pid)
    asyncio.run(write(address, writes, gap))
    latencies = collect(workers, results)
    cpu = cpu_seconds(pid) - cpu0
    ms = sorted(x / 1e6 for x in latencies)
    return {
        "us_per_delivery": cpu / max(1, len(latencies)) * 1e6,
        "deliveries": len(latencies),
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--gap", type=float, default=0.25)
    parser.add_argument("--serve-floor", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        floor_server(args.serve_floor)
        return
    from confmesh.server.embedded_etcd import free_port

    n, writes = args.streams, args.writes
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}; {n} streams on their own connections in {args.procs} "
          f"processes, {writes} writes {args.gap}s apart\n")  # fmt: skip
    with etcd_and_server() as stack:
        port = free_port()
        floor = subprocess.Popen(
            [sys.executable, __file__, "--serve-floor", str(port)], stdout=subprocess.PIPE
        )
        try:
            assert floor.stdout is not None
            floor.stdout.readline()
            ratios = []
            for pair in range(args.pairs):
                bare = measure(f"127.0.0.1:{port}", floor.pid, write_floor, n, writes, args.procs, args.gap)
                ours = measure(
                    stack.address, stack.server.pid, write_confmesh, n, writes, args.procs, args.gap
                )
                ratio = ours["us_per_delivery"] / bare["us_per_delivery"]
                ratios.append(ratio)
                print(f"pair {pair + 1}: floor {bare['us_per_delivery']:.0f} µs, confmesh "
                      f"{ours['us_per_delivery']:.0f} µs of server CPU per delivery: {ratio:.2f}x   "
                      f"(p50/p99 floor {bare['p50_ms']:.1f}/{bare['p99_ms']:.1f} ms, confmesh "
                      f"{ours['p50_ms']:.1f}/{ours['p99_ms']:.1f} ms; {ours['deliveries']} deliveries)",
                      flush=True)  # fmt: skip
            workers, _, results = start_workers(etcd_worker, stack.etcd_endpoint, n, args.procs, writes, True)
            asyncio.run(write_etcd(stack.etcd_endpoint, writes, args.gap))
            raw = sorted(x / 1e6 for x in collect(workers, results))
            print(f"raw etcd watchers: p50 {statistics.median(raw):.1f} ms, "
                  f"p99 {raw[min(len(raw) - 1, int(len(raw) * 0.99))]:.1f} ms")  # fmt: skip
            print(f"\nmedian ratio confmesh / floor: {statistics.median(ratios):.2f}x")
        finally:
            floor.terminate()
            floor.wait()


if __name__ == "__main__":
    main()
