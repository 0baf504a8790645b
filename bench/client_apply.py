"""What a ConfigClient spends applying a one-key change as its config grows.

    python bench/client_apply.py [--keys 10,1000,10000] [--changes 200] [--flags 20]

The client is fed Watch snapshots directly (no server, no network), exactly as its stream loop
feeds them: a first whole snapshot of K keys under 100 groups, then one-key deltas. Per applied
change it measures the whole apply (delta patch and hash check, secret references, schema
validation, flag evaluator, history and callbacks), with and without a pydantic schema and
with F flags present but unchanged; then, with the schema, one-flag changes instead of one-key
changes. Medians of the per-change CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from typing import Any

from pydantic import BaseModel, create_model

from confmesh.client import ConfigClient
from confmesh.delta import CONFIG, FLAGS, Update, apply_updates
from confmesh.digest import format_hash, snapshot_digest
from confmesh.v1 import config_pb2
from confmesh.wire import to_struct, updates_to_pb


def flag(i: int, percent: int = 50) -> dict[str, Any]:
    split = [{"variant": "on", "percent": percent}, {"variant": "off", "percent": 100 - percent}]
    return {"key": f"flag-{i}", "variants": {"on": True, "off": False}, "default_variant": "off",
            "off_variant": "off", "rules": [{"serve": {"split": split}}]}  # fmt: skip


def flags_of(count: int) -> dict[str, Any]:
    return {f"flag-{i}": flag(i) for i in range(count)}


def config_of(keys: int) -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for k in range(keys):
        groups.setdefault(f"group{k % 100}", {})[f"key{k}"] = f"value-{k}"
    return groups


def schema_for(config: dict[str, Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {group: (dict[str, str], ...) for group in config}
    return create_model("Settings", **fields)


async def measure(keys: int, changes: int, schema: bool, flags: int, flag_changes: bool = False) -> float:
    config = config_of(keys)
    flag_doc = flags_of(flags)
    client: ConfigClient[Any] = ConfigClient(
        "127.0.0.1:1", environment="prod", service="bench", schema=schema_for(config) if schema else None
    )
    digest = snapshot_digest(config, flag_doc)
    first = config_pb2.Snapshot(version=1, hash=format_hash(digest), config=to_struct(config),
                                flags=to_struct(flag_doc))  # fmt: skip
    assert (await client._receive(first)).HasField("ack")
    times = []
    for change in range(changes):
        version = 2 + change
        group, key = f"group{change % 100}", f"key{change % keys}"
        current = client._current
        assert current is not None
        if flag_changes:
            update = Update(FLAGS, (f"flag-{change % flags}",), flag(change % flags, percent=change % 100))
        else:
            update = Update(CONFIG, (group, key), f"v{version}")
        _, _, new_digest = apply_updates(current.raw, current.raw_flags, current.digest, [update])
        snap = config_pb2.Snapshot(
            version=version, hash=format_hash(new_digest),
            delta=config_pb2.Delta(base_version=current.version, base_hash=current.hash,
                                   updates=updates_to_pb([update])),
        )  # fmt: skip
        started = time.process_time()
        answer = await client._receive(snap)
        times.append(time.process_time() - started)
        assert answer.HasField("ack"), answer
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="10,1000,10000")
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--flags", type=int, default=20)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {args.changes} changes each, "
          f"{args.flags} flags")  # fmt: skip
    print(f"{'keys':>7}  {'no schema (ms)':>15}  {'pydantic schema (ms)':>21}  {'one flag changed (ms)':>22}")
    for keys in (int(k) for k in args.keys.split(",")):
        plain = await measure(keys, args.changes, False, args.flags)
        typed = await measure(keys, args.changes, True, args.flags)
        flag_change = await measure(keys, args.changes, True, args.flags, flag_changes=True)
        print(f"{keys:>7}  {plain * 1e3:>15.3f}  {typed * 1e3:>21.3f}  {flag_change * 1e3:>22.3f}")


if __name__ == "__main__":
    asyncio.run(main())
