"""What the flag-propagation interceptors add to a unary gRPC call that evaluates 5 flags.

    python bench/interceptor_overhead.py [--calls 2000] [--repeats 15] [--work-us 0]
    python bench/interceptor_overhead.py --instructions [--calls 1200]   # needs valgrind

Every variant runs the same loopback ``grpc.aio`` call in one process: the
caller evaluates 5 flags, the handler evaluates the same 5 flags.

* plain: no interceptors;
* noop: a server interceptor that does nothing, the cost of ``grpc.aio``'s
  server interceptor machinery alone;
* noop+header: the same, the caller sending one fixed ``baggage`` header of
  the size the 5 decisions take: the floor for any header-borne propagation
  that needs a server interceptor;
* confmesh: ``FlagChannel`` + ``FlagServerInterceptor`` (trusted
  caller), the caller inside a request scope, so the 5 decisions travel in
  baggage and the handler answers from them (reason PROPAGATED); OpenTelemetry
  API only (no SDK), as in a service that has not configured tracing;
* confmesh+sdk: as confmesh, with an SDK tracer provider (spans sampled and
  processed by a no-op processor) and ``instrument_flags()`` adding one
  evaluation event per flag.

``--work-us N`` makes the handler spin for N µs of CPU, like a handler that
does real work: the added cost per call is fixed, so the ratio falls as N grows.

Prints the median microseconds per call of each variant, and its ratios to
plain and to the noop+header floor: the median over repeats of the ratio
within one repeat.
Variants alternate within every repeat, in a new random order each time, so
drift hits them alike.

On a shared host, wall time moves with other tenants' load (CPU steal) by
more than the overhead being measured. ``--instructions`` counts instead the
instructions each variant executes per call under callgrind, the whole
process (grpc's threads included), which repeats to within about 1% from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from opentelemetry.sdk.trace import TracerProvider

from confmesh.client import telemetry
from confmesh.client.interceptors import FlagChannel, FlagServerInterceptor
from confmesh.client.propagation import Trust
from confmesh.flags import FlagEvaluator
from confmesh.flags.scope import request_scope

KEYS = [f"flag-{i}" for i in range(5)]
FLAGS = {
    key: {
        "key": key,
        "variants": {"on": True, "off": False},
        "default_variant": "off",
        "rules": [
            {
                "id": "r",
                "clauses": [{"attribute": "tier", "op": "in", "values": ["gold"]}],
                "serve": {"variant": "on"},
            }
        ],
    }
    for key in KEYS
}
CONTEXT = {"targetingKey": "user-1", "tier": "gold"}


# What the 5 decisions look like on the wire.
HEADER = ",".join(f"cmf.f.{key}=1%21on%21true" for key in KEYS) + ",cmf.set=bench"


class NoopServer(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


# Each variant's server interceptors.
VARIANTS: dict[str, Callable[[], list[Any]]] = {
    "plain": lambda: [],
    "noop": lambda: [NoopServer()],
    "noop+header": lambda: [NoopServer()],
    "confmesh": lambda: [FlagServerInterceptor(Trust.internal())],
    "confmesh+sdk": lambda: [FlagServerInterceptor(Trust.internal(), tracer_provider=TracerProvider())],
}


async def start(
    evaluator: FlagEvaluator, interceptors: list[Any], work_us: float = 0.0
) -> tuple[grpc.aio.Server, str]:
    async def handle(request: bytes, context: Any) -> bytes:
        for key in KEYS:
            evaluator.get_bool(key, False, CONTEXT)
        if work_us:
            until = time.perf_counter() + work_us / 1e6
            while time.perf_counter() < until:
                pass
        return b"ok"

    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.B", {"Call": grpc.unary_unary_rpc_method_handler(handle)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def per_call(call: Any, evaluator: FlagEvaluator, calls: int, scoped: bool) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        if scoped:
            with request_scope():
                for key in KEYS:
                    evaluator.get_bool(key, False, CONTEXT)
                await call(b"x")
        else:
            for key in KEYS:
                evaluator.get_bool(key, False, CONTEXT)
            await call(b"x")
    return (time.perf_counter() - started) / calls * 1e6


async def run(
    calls: int, repeats: int, work_us: float, only: list[str] | None = None
) -> dict[str, list[float]]:
    evaluator = FlagEvaluator(FLAGS, version=1, environment="bench")
    stacks = {
        name: await start(evaluator, make(), work_us)
        for name, make in VARIANTS.items()
        if only is None or name in only
    }
    channels: dict[str, Any] = {
        name: FlagChannel(grpc.aio.insecure_channel(address))
        if name.startswith("confmesh")
        else grpc.aio.insecure_channel(address)
        for name, (_, address) in stacks.items()
    }
    calls_by_name = {name: ch.unary_unary("/bench.B/Call") for name, ch in channels.items()}
    header = grpc.aio.Metadata(("baggage", HEADER))
    if "noop+header" in calls_by_name:
        calls_by_name["noop+header"] = functools.partial(calls_by_name["noop+header"], metadata=header)
    results: dict[str, list[float]] = {name: [] for name in stacks}
    for name in stacks:  # warm up
        await per_call(calls_by_name[name], evaluator, 200, name.startswith("confmesh"))
    order = list(calls_by_name)
    for _ in range(repeats):
        random.shuffle(order)  # no variant always runs first (or right after a given other)
        for name in order:
            call = calls_by_name[name]
            remove = telemetry.instrument_flags() if name == "confmesh+sdk" else None
            try:
                results[name].append(await per_call(call, evaluator, calls, name.startswith("confmesh")))
            finally:
                if remove is not None:
                    remove()
    for channel in channels.values():
        await channel.close(None)
    for server, _ in stacks.values():
        await server.stop(None)
    return results


def instructions(variant: str, calls: int, work_us: float) -> int:
    """Instructions a whole run of one variant executes, counted by callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={os.path.join(tmp, 'out')}",
            sys.executable, os.path.abspath(__file__),
            "--variant", variant, "--calls", str(calls), "--repeats", "1", "--work-us", str(work_us),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def count_instructions(calls: int, work_us: float) -> None:
    """Instructions per call of each variant: the difference of two run lengths.

    Start-up, warm-up and shutdown are the same in both runs and cancel out, so
    what is left is the steady-state cost of `calls - calls // 6` calls. Unlike
    wall time it does not move with other tenants' load (it repeats to within
    about 1%). It counts user-space instructions only, all alike: the kernel's
    share of a loopback call (sockets, wake-ups) is left out of the baseline,
    which makes the ratios conservative for code that adds no system calls.
    """
    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind on PATH (apt-get install valgrind)")
    short = max(calls // 6, 50)
    print(f"{'variant':<14} {'instr/call':>11} {'vs plain':>9} {'vs floor':>9}")
    per_call: dict[str, float] = {}
    for variant in VARIANTS:
        extra = instructions(variant, calls, work_us) - instructions(variant, short, work_us)
        per_call[variant] = extra / (calls - short)
        plain, floor = per_call["plain"], per_call.get("noop+header")
        ratio_to_floor = f"{per_call[variant] / floor:>9.3f}" if floor else f"{'':>9}"
        print(
            f"{variant:<14} {per_call[variant]:>11,.0f} {per_call[variant] / plain:>9.3f} {ratio_to_floor}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--work-us", type=float, default=0.0)
    parser.add_argument("--variant", choices=list(VARIANTS), help="run this variant only, printing nothing")
    parser.add_argument(
        "--instructions", action="store_true",
        help="count instructions per call under callgrind instead of timing (deterministic; slow)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.instructions:
        count_instructions(args.calls, args.work_us)
        return
    if args.variant:
        asyncio.run(run(args.calls, args.repeats, args.work_us, only=[args.variant]))
        return
    results = asyncio.run(run(args.calls, args.repeats, args.work_us))
    print(f"{'variant':<14} {'µs/call':>9} {'vs plain':>9} {'vs floor':>9}")
    for name, samples in results.items():
        print(
            f"{name:<14} {statistics.median(samples):>9.1f}"
            f" {paired_ratio(samples, results['plain']):>9.3f}"
            f" {paired_ratio(samples, results['noop+header']):>9.3f}"
        )


def paired_ratio(samples: list[float], baseline: list[float]) -> float:
    """The median of the ratios within each repeat, which drift between repeats cancels out of."""
    return statistics.median(a / b for a, b in zip(samples, baseline, strict=True))


if __name__ == "__main__":
    main()
