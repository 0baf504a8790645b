"""What a one-key change costs as the config grows: bytes on the wire and CPU.

    python bench/snapshot_cost.py [--keys 10,1000,10000]

For an environment layer of K keys, change one key and measure, per change
and per subscribed stream: the serialized Watch message size, the server's
CPU to resolve and encode it (once per change, shared by all streams that
send it) and to serialize it (per stream), and a client's CPU to decode,
hash-check and apply it. Median of 20 changes.
"""

from __future__ import annotations

import argparse
import statistics
import time

from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.merge import snapshot_hash
from confmesh.server.config_service import snapshot_to_pb
from confmesh.server.etcd import Event, KeyValue
from confmesh.server.resolver import Resolver
from confmesh.server.store import ConfigStore
from confmesh.v1 import config_pb2
from confmesh.wire import from_struct


def measure(keys: int) -> tuple[int, float, float, float]:
    layout = KeyLayout("/bench")
    layer = Layer.env("prod")
    store = ConfigStore(layout)
    store.replace([KeyValue(layout.config_key(layer, f"group{k % 100}.key{k}"), b'"value-%d"' % k, 1)
                   for k in range(keys)], 1)  # fmt: skip
    resolver = Resolver(store)
    scope = Scope("prod", "svc")
    resolver.snapshot(scope)
    sizes, server, per_stream, client = [], [], [], []
    for change in range(20):
        rev = 2 + change
        t0 = time.perf_counter()
        changed = store.apply([Event(False, layout.config_key(layer, "group0.key0"), b'"v%d"' % rev, rev)])
        resolver.invalidate(changed)
        snap = resolver.snapshot(scope)
        message = config_pb2.WatchResponse(snapshot=snapshot_to_pb(snap, stale=False))
        t1 = time.perf_counter()
        wire = message.SerializeToString()
        t2 = time.perf_counter()
        decoded = config_pb2.WatchResponse.FromString(wire).snapshot
        raw, flags = from_struct(decoded.config), from_struct(decoded.flags)
        assert snapshot_hash(raw, flags) == decoded.hash
        t3 = time.perf_counter()
        sizes.append(len(wire))
        server.append(t1 - t0)
        per_stream.append(t2 - t1)
        client.append(t3 - t2)
    return (int(statistics.median(sizes)), statistics.median(server), statistics.median(per_stream),
            statistics.median(client))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="10,1000,10000")
    args = parser.parse_args()
    print(
        f"{'keys':>7}  {'bytes/change':>13}  {'server ms/change':>16}  {'server ms/stream':>16}  "
        f"{'client ms/apply':>15}"
    )
    for keys in (int(k) for k in args.keys.split(",")):
        size, server, stream, client = measure(keys)
        print(f"{keys:>7}  {size:>13,}  {server * 1e3:>16.2f}  {stream * 1e3:>16.3f}  {client * 1e3:>15.2f}")


if __name__ == "__main__":
    main()
