"""What a one-key change costs as the config grows: bytes on the wire and CPU, whole snapshot vs delta.

    python bench/snapshot_cost.py [--keys 10,1000,10000] [--changes 50]

For an environment layer of K keys, change one key and measure per change:

* the Watch message's size on the wire;
* the server's CPU from the etcd event to the serialized message (store,
  incremental resolve, encode). The message is serialized once per change and
  shared by every stream that sends it, so this is the whole server cost
  apart from gRPC's own per-stream send;
* a client's CPU to decode, apply and hash-check it (schema validation, which
  is the application's, not included).

Both ways are measured in the same run on the same changes: **whole**, the
complete snapshot (what a client gets on connect, or without delta support),
and **delta**, the changed subtree with the version it applies to.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from confmesh.delta import apply_updates
from confmesh.digest import format_hash, snapshot_digest
from confmesh.keys import KeyLayout, Layer, Scope
from confmesh.server.config_service import EncodedSnapshots
from confmesh.server.kv import Event, KeyValue
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import server_store
from confmesh.v1 import config_pb2
from confmesh.wire import from_struct, updates_from_pb


def measure(keys: int, changes: int, delta: bool) -> tuple[int, float, float]:
    layout = KeyLayout("/bench")
    layer = Layer.env("prod")
    store = server_store(layout)
    store.replace([KeyValue(layout.config_key(layer, f"group{k % 100}.key{k}"), b'"value-%d"' % k, 1)
                   for k in range(keys)], 1)  # fmt: skip
    plane = SnapshotPlane(store)
    encoded = EncodedSnapshots(plane.delta)
    scope = Scope("prod", "svc")
    previous = plane.current(scope)
    client: tuple[dict[str, Any], dict[str, Any], int] = (previous.config, previous.flags, previous.digest)
    sizes, server, applies = [], [], []
    for change in range(changes):
        rev = 2 + change
        t0 = time.perf_counter()
        key = layout.config_key(layer, f"group{change % 100}.key{change}")
        event = Event(False, key, b'"v%d"' % rev, rev)
        plane.apply(store.apply([event]))
        snap = plane.current(scope)
        wire = encoded.response(snap, stale=False, base=previous.key if delta else None)
        t1 = time.perf_counter()
        decoded = config_pb2.WatchResponse.FromString(wire).snapshot
        if decoded.HasField("delta"):
            config, flags, digest = apply_updates(*client, updates_from_pb(decoded.delta.updates))
        else:
            config, flags = from_struct(decoded.config), from_struct(decoded.flags)
            digest = snapshot_digest(config, flags)
        assert format_hash(digest) == decoded.hash
        client = (config, flags, digest)
        t2 = time.perf_counter()
        assert decoded.HasField("delta") == delta
        previous = snap
        sizes.append(len(wire))
        server.append(t1 - t0)
        applies.append(t2 - t1)
    return int(statistics.median(sizes)), statistics.median(server), statistics.median(applies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="10,1000,10000")
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    print(f"{'':>7}  {'whole snapshot':^40}  {'delta':^40}")
    print(f"{'keys':>7}" + f"  {'bytes':>10}  {'server ms':>12}  {'client ms':>12}" * 2)
    for keys in (int(k) for k in args.keys.split(",")):
        rows = [measure(keys, args.changes, delta) for delta in (False, True)]
        print(f"{keys:>7}" + "".join(f"  {size:>10,}  {srv * 1e3:>12.3f}  {cli * 1e3:>12.3f}"
                                      for size, srv, cli in rows))  # fmt: skip


if __name__ == "__main__":
    main()
