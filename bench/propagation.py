"""Propagation latency: a write issued -> applied by N clients, confmesh vs raw etcd watchers.

    python bench/propagation.py --clients 100,1000,5000 [--writes 20] [--procs 4] [--modes receive,etcd]

For each N, in one run and on the same etcd:

* confmesh: N ConfigClient instances (a pydantic schema, validate-then-apply,
  ACK) in --procs worker processes, connected to one `confmesh serve`
  process. Latency = when a client has applied the write (its change
  callback ran) minus when the writer issued the AdminService Put.
* confmesh receive-only: N bare Watch streams to the same server that read
  the stamp and ACK, without decoding or validating the snapshot: the
  server's fan-out, the same work a raw etcd watcher does.
* raw etcd: N etcd watch streams (plain gRPC Watch on the key) in --procs
  worker processes. Latency = when the event reached the watcher minus when
  the writer issued the etcd Put.

Each write carries its issue time (µs, same machine clock: config numbers
must fit in 2**53). Reports p50,
p99 and max over all (client, write) pairs, the confmesh server's resident
memory per stream, and its CPU time per write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from _harness import etcd_and_server

KEY = "bench.stamp"
ETCD_KEY = "/bench/raw/stamp"


def family(pid: int) -> list[int]:
    """The server process and its workers (`serve --workers N`)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid, *(int(p) for p in out.split())]


def rss_kib(pid: int) -> int:
    total = 0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# -- workers (separate processes) -------------------------------------------------------------


def confmesh_worker(
    target: str, count: int, writes: int, ready: Any, results: Any, index: int, own: bool
) -> None:
    from pydantic import BaseModel

    from confmesh.client import ConfigClient

    class Stamp(BaseModel):
        seq: int = -1
        t: int = 0

    class Settings(BaseModel):
        bench: dict[str, Stamp] = {}

    options: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if own:  # else grpc shares one connection between the equal channels of a process
        options.append(("grpc.use_local_subchannel_pool", 1))

    async def main() -> None:
        latencies: list[int] = []
        all_seen = asyncio.Event()
        clients = [ConfigClient(target, environment="bench", service="svc", schema=Settings,
                                instance_id=f"w{index}-{n}", startup_timeout=120, usage_interval=3600,
                                report_interval=3600, channel_options=options)
                   for n in range(count)]  # fmt: skip
        seen = 0

        def on_change(old: Any, new: Any) -> None:
            nonlocal seen
            stamp = new.bench.get("stamp")
            if old is not None and stamp is not None and stamp.seq >= 0:  # not the initial snapshot
                latencies.append(time.time_ns() - stamp.t * 1000)
                seen += 1
                if seen >= count * writes:
                    all_seen.set()

        for c in clients:
            c.on_change(on_change)
        for i in range(0, count, 200):
            await asyncio.gather(*(c.start() for c in clients[i : i + 200]))
        ready.put(index)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_seen.wait(), 60 + writes * 2)
        results.put(latencies)
        await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(main())


async def finish(
    all_seen: asyncio.Event,
    writes: int,
    done: asyncio.Event,
    results: Any,
    latencies: list[int],
    tasks: list[asyncio.Task[None]],
    channels: list[Any],
) -> None:
    """Wait for every delivery (bounded), report the latencies, tear the streams down."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_seen.wait(), 60 + writes * 2)
    done.set()
    results.put(latencies)
    for t in tasks:
        t.cancel()
    for channel in channels:
        await channel.close()


class Channels:
    """One connection per stream (`own`, like one service instance each), or one per process."""

    def __init__(self, target: str, own: bool) -> None:
        import grpc.aio

        self.target, self.own, self.all = target, own, []
        self._new = grpc.aio.insecure_channel
        # Without a local subchannel pool, grpc shares one connection between equal channels.
        self.options = [("grpc.use_local_subchannel_pool", 1)] if own else []

    def next(self) -> Any:
        if self.own or not self.all:
            self.all.append(self._new(self.target, options=self.options))
        return self.all[-1]


def receiver_worker(
    target: str, count: int, writes: int, ready: Any, results: Any, index: int, own: bool
) -> None:
    """Bare confmesh Watch streams: receive, read the stamp, ACK (no decode-all, no validation)."""

    from confmesh.digest import JCS
    from confmesh.v1 import config_pb2, config_pb2_grpc

    async def main() -> None:
        latencies: list[int] = []
        channels = Channels(target, own)
        done = asyncio.Event()
        all_seen = asyncio.Event()
        all_ready = asyncio.Event()
        seen = ready_streams = 0

        async def stream(n: int) -> None:
            nonlocal seen
            outbox: asyncio.Queue[config_pb2.WatchRequest] = asyncio.Queue()
            outbox.put_nowait(
                config_pb2.WatchRequest(
                    subscribe=config_pb2.Subscribe(
                        environment="bench", service="svc", instance_id=f"r{index}-{n}", hash_schemes=[JCS]
                    )
                )
            )

            async def requests() -> Any:
                while not done.is_set():
                    yield await outbox.get()

            call = config_pb2_grpc.ConfigServiceStub(channels.next()).Watch(requests())
            first = True
            subscribed = False
            async for resp in call:
                if resp.WhichOneof("kind") != "snapshot":
                    continue
                snap = resp.snapshot
                if not first:
                    stamp = snap.config.fields["bench"].struct_value.fields["stamp"].struct_value.fields
                    latencies.append(time.time_ns() - int(stamp["t"].number_value) * 1000)
                    seen += 1
                    if seen >= count * writes:
                        all_seen.set()
                first = False
                if not subscribed:
                    subscribed = True
                    nonlocal ready_streams
                    ready_streams += 1
                    if ready_streams == count:
                        all_ready.set()
                outbox.put_nowait(
                    config_pb2.WatchRequest(ack=config_pb2.Ack(version=snap.version, hash=snap.hash))
                )

        tasks = [asyncio.create_task(stream(n)) for n in range(count)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_ready.wait(), 120)  # every stream has its first snapshot
        ready.put(index)
        await finish(all_seen, writes, done, results, latencies, tasks, channels.all)

    asyncio.run(main())


def etcd_worker(
    endpoint: str, count: int, writes: int, ready: Any, results: Any, index: int, own: bool
) -> None:
    from etcd3aio._protobuf import rpc_pb2, rpc_pb2_grpc  # type: ignore[attr-defined]

    async def main() -> None:
        latencies: list[int] = []
        channels = Channels(endpoint, own)
        done = asyncio.Event()
        all_seen = asyncio.Event()
        seen = 0

        async def watch() -> None:
            nonlocal seen
            created = asyncio.Event()

            async def requests() -> Any:
                yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=ETCD_KEY.encode()))
                await done.wait()

            call = rpc_pb2_grpc.WatchStub(channels.next()).Watch(requests())
            async for resp in call:
                if resp.created:
                    created.set()
                for ev in resp.events:
                    stamp = json.loads(ev.kv.value)
                    latencies.append(time.time_ns() - stamp["t"] * 1000)
                    seen += 1
                    if seen >= count * writes:
                        all_seen.set()
            call.cancel()

        tasks = [asyncio.create_task(watch()) for _ in range(count)]
        await asyncio.sleep(1.0 + count / 2000)
        ready.put(index)
        await finish(all_seen, writes, done, results, latencies, tasks, channels.all)

    asyncio.run(main())


# -- the driver ------------------------------------------------------------------------------


def start_workers(
    fn: Any, target: str, n: int, procs: int, writes: int, own: bool
) -> tuple[list[Any], Any, Any]:
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    sizes = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    workers = [ctx.Process(target=fn, args=(target, size, writes, ready, results, i, own))
               for i, size in enumerate(sizes) if size]  # fmt: skip
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=600)
    return workers, ready, results


def collect(workers: list[Any], results: Any) -> list[int]:
    out: list[int] = []
    for _ in workers:
        out += results.get(timeout=600)
    for w in workers:
        w.join(timeout=60)
    return out


def summary(latencies: list[int], expected: int) -> str:
    if not latencies:
        return "no deliveries"
    ms = sorted(x / 1e6 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"p50 {statistics.median(ms):8.1f} ms  p99 {p99:8.1f} ms  max {ms[-1]:8.1f} ms  "
        f"({len(ms)}/{expected} deliveries)"
    )


async def write_confmesh(address: str, writes: int, gap: float) -> None:
    from confmesh.client import AdminClient

    async with AdminClient(address) as admin:
        for seq in range(writes):
            await admin.put(f"{KEY}", {"seq": seq, "t": time.time_ns() // 1000}, env="bench")
            await asyncio.sleep(gap)


async def write_etcd(endpoint: str, writes: int, gap: float) -> None:
    from etcd3aio import Etcd3Client

    async with Etcd3Client([endpoint]) as etcd:
        assert etcd.kv is not None
        for seq in range(writes):
            await etcd.kv.put(ETCD_KEY, json.dumps({"seq": seq, "t": time.time_ns() // 1000}))
            await asyncio.sleep(gap)


def run(
    n: int,
    writes: int,
    procs: int,
    etcd_endpoint: str,
    server: subprocess.Popen[bytes],
    address: str,
    gap: float,
    modes: list[str],
    own: bool,
) -> None:
    labels = {
        "clients": "confmesh clients (validate + apply)",
        "receive": "confmesh receive-only (no validation)",
    }
    kinds = {"clients": confmesh_worker, "receive": receiver_worker}
    for mode in modes:
        if mode == "etcd":
            workers, _, results = start_workers(etcd_worker, etcd_endpoint, n, procs, writes, own)
            asyncio.run(write_etcd(etcd_endpoint, writes, gap))
            print(f"N={n:>6}  {'raw etcd watchers':<38}{summary(collect(workers, results), n * writes)}")
            continue
        base_rss = rss_kib(server.pid)
        workers, _, results = start_workers(kinds[mode], address, n, procs, writes, own)
        rss = rss_kib(server.pid)
        cpu0 = cpu_seconds(server.pid)
        asyncio.run(write_confmesh(address, writes, gap))
        latencies = collect(workers, results)
        cpu = (cpu_seconds(server.pid) - cpu0) / writes
        print(
            f"N={n:>6}  {labels[mode]:<38}{summary(latencies, n * writes)}   "
            f"server RSS +{(rss - base_rss) / max(n, 1):.1f} KiB/stream, CPU {cpu * 1000:.1f} ms/write"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="100,1000,5000")
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between writes")
    parser.add_argument(
        "--modes", default="clients,receive,etcd", help="which of clients, receive, etcd to run, in order"
    )
    parser.add_argument(
        "--connections", choices=("own", "shared"), default="own",
        help="own: a connection per client or watcher, as separate service instances have; "
        "shared: one per worker process",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="confmesh serve --workers N")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"clients", "receive", "etcd"}:
        parser.error("--modes takes clients, receive and etcd")
    with etcd_and_server("--workers", str(args.workers)) as stack:
        print(
            f"{os.cpu_count()} CPUs; {args.writes} writes {args.gap}s apart per N; "
            f"clients in {args.procs} processes, {args.connections} connections; "
            f"server --workers {args.workers}\n"
        )
        for n in (int(x) for x in args.clients.split(",")):
            run(n, args.writes, args.procs, stack.etcd_endpoint, stack.server, stack.address, args.gap, modes,
                args.connections == "own")  # fmt: skip


if __name__ == "__main__":
    main()
