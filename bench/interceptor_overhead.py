"""What the flag-propagation interceptors add to a unary gRPC call that evaluates 5 flags.

    python bench/interceptor_overhead.py [--calls 2000] [--repeats 15] [--work-us 0]

Both variants run the same loopback ``grpc.aio`` call in one process: the
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

Prints the median microseconds per call of each variant, its ratio to plain,
and confmesh's ratio to the noop+header floor.
Variants alternate within every repeat, in a new random order each time, so
drift hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import statistics
import time
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


async def run(calls: int, repeats: int, work_us: float) -> dict[str, list[float]]:
    evaluator = FlagEvaluator(FLAGS, version=1, environment="bench")
    sdk = TracerProvider()
    stacks = {
        "plain": await start(evaluator, [], work_us),
        "noop": await start(evaluator, [NoopServer()], work_us),
        "noop+header": await start(evaluator, [NoopServer()], work_us),
        "confmesh": await start(evaluator, [FlagServerInterceptor(Trust.internal())], work_us),
        "confmesh+sdk": await start(
            evaluator, [FlagServerInterceptor(Trust.internal(), tracer_provider=sdk)], work_us
        ),
    }
    channels: dict[str, Any] = {
        name: FlagChannel(grpc.aio.insecure_channel(address))
        if name.startswith("confmesh")
        else grpc.aio.insecure_channel(address)
        for name, (_, address) in stacks.items()
    }
    calls_by_name = {name: ch.unary_unary("/bench.B/Call") for name, ch in channels.items()}
    header = grpc.aio.Metadata(("baggage", HEADER))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--work-us", type=float, default=0.0)
    args = parser.parse_args()
    results = asyncio.run(run(args.calls, args.repeats, args.work_us))
    plain = statistics.median(results["plain"])
    floor = statistics.median(results["noop+header"])
    print(f"{'variant':<14} {'µs/call':>9} {'vs plain':>9} {'vs floor':>9}")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(f"{name:<14} {median:>9.1f} {median / plain:>9.3f} {median / floor:>9.3f}")


if __name__ == "__main__":
    main()
