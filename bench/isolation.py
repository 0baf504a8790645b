"""Delivery isolation: a bystander's Watch push and health latency while one reader floods the control
plane, for the code before the isolation work and for this checkout, side by side in one run.

    pip install -e '.[test]' && python bench/isolation.py [--before a525755] [--seconds 6]

For each server (`before`: a git worktree of the given revision; `after`: this checkout) and each
load (`idle`; `explain`: 5 concurrent console explains of a `contains` rule over 10,000 values
against a 14,000-item context list; `ofrep`: 32 concurrent OFREP bulk evaluations of 1,005 flags), a
fresh `confmesh serve` process (policy, tokens, --http-listen) on one etcd; the flood runs in its own
process (tests/security/isolation.py) while this one writes prod/orders every 100 ms and checks
health every 20 ms. Printed: push and health p50/p99 (ms), health checks that failed (2 s deadline),
and the flood's answers by HTTP status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confmesh.server.embedded_etcd import EmbeddedEtcd  # noqa: E402
from tests.security.isolation import attack, measure, target  # noqa: E402

FLOODS = {"explain": 5, "ofrep": 32}


async def one(etcd: str, tmp: Path, code: Path | None, load: str, seconds: float, n: int) -> dict[str, Any]:
    async with target(etcd, f"/bench-{load}-{n}", tmp, code) as t:
        if load == "idle":
            return {**(await measure(t, None, seconds)).summary(), "answers": {}}
        seen, result = await attack(t, load, seconds, FLOODS[load])
        return {**seen.summary(), "answers": result["answers"]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="a525755", help="The revision to compare against.")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        before = tmp / "before"
        git = ["git", "-C", str(ROOT), "worktree"]
        await asyncio.to_thread(
            subprocess.run, [*git, "add", "-q", "--detach", str(before), args.before], check=True
        )
        etcd = EmbeddedEtcd(tmp / "etcd")
        await etcd.start()
        try:
            print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                  f"Python {platform.python_version()}")  # fmt: skip
            print(f"{'server':<8} {'load':<8} {'push p50':>9} {'push p99':>9} {'health p50':>11} "
                  f"{'health p99':>11} {'failed':>7}  flood answers")  # fmt: skip
            n = 0
            for load in ("idle", "explain", "ofrep"):
                for name, code in (("before", before), ("after", None)):
                    n += 1
                    r = await one(etcd.endpoint, tmp, code, load, args.seconds, n)
                    print(f"{name:<8} {load:<8} {r['push_p50_ms']:>9} {r['push_p99_ms']:>9} "
                          f"{r['health_p50_ms']:>11} {r['health_p99_ms']:>11} "
                          f"{r['health_failures'] + r['push_failures']:>7}  "
                          f"{r['answers']}", flush=True)  # fmt: skip
        finally:
            await etcd.stop()
            remove = [*git, "remove", "--force", str(before)]
            await asyncio.to_thread(subprocess.run, remove, check=False)


if __name__ == "__main__":
    asyncio.run(main())
