"""`confmesh change` as users run it: a prod change proposed, refused to its author, approved, applied."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from confmesh.cli.changes import parse_time
from confmesh.errors import InvalidArgument
from tests.conftest import Tenants


@pytest.fixture
def policy_text() -> str:
    return 'identities: {}\napprovals:\n  - {scopes: ["prod", "prod/*"], flags: ["prod"], approvers: 1}\n'


async def cli(tenants: Tenants, who: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "confmesh.cli", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "CONFMESH_SERVER": tenants.address, "CONFMESH_TOKEN": tenants.tokens[who]},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_propose_review_and_apply_from_the_cli(tenants: Tenants, tmp_path: Path) -> None:
    changes = tmp_path / "change.yaml"
    changes.write_text(
        "reason: bigger pool for the sale\n"
        "changes:\n"
        "  - {key: db.pool, env: prod, service: orders, value: 40}\n"
        "  - flag: sale-banner\n"
        "    env: prod\n"
        '    value: {variants: {"on": true, "off": false}, default_variant: "on"}\n'
    )
    code, out, err = await cli(
        tenants, "orders-writer", "put", "db.pool", "40", "--env", "prod", "--service", "orders"
    )
    assert code != 0 and "confmesh change propose" in err

    code, out, err = await cli(
        tenants, "orders-writer", "change", "propose", str(changes), "--title", "sale", "--json"
    )
    assert code == 0, err
    proposed = json.loads(out)
    cid = proposed["id"]
    assert proposed["state"] == "CHANGE_STATE_OPEN" and proposed["approvals_required"] == 1
    assert {d["key"] for d in proposed["diff"]} == {"db.pool", "sale-banner"}

    code, out, err = await cli(tenants, "orders-writer", "change", "apply", cid)
    assert code != 0 and "needs 1 approval" in err
    code, out, err = await cli(tenants, "orders-writer", "change", "approve", cid)
    assert code != 0 and "may not review it" in err

    code, out, _ = await cli(tenants, "admin", "change", "show", cid)
    assert code == 0 and "+ service/prod/orders:db.pool  40" in out and "scope prod/orders: 1 key(s)" in out
    code, out, _ = await cli(tenants, "admin", "change", "approve", cid, "--comment", "ok")
    assert code == 0 and "approved by token:admin" in out
    code, out, err = await cli(tenants, "orders-writer", "change", "apply", cid)
    assert code == 0 and "state     applied" in out, err
    code, out, _ = await cli(
        tenants, "orders-writer", "get", "db.pool", "--env", "prod", "--service", "orders"
    )
    assert out.strip() == "40"
    code, out, _ = await cli(tenants, "admin", "change", "list", "--state", "applied")
    assert code == 0 and cid in out and "sale" in out
    # What an applied change did stays readable: its diff, from the audit record of its apply; no
    # claim that it is stale, though its layers moved on (they moved by applying it).
    code, out, _ = await cli(tenants, "admin", "change", "show", cid)
    assert code == 0 and "+ service/prod/orders:db.pool  40" in out and "+ flags/prod:sale-banner" in out, out
    assert "stale" not in out, out
    code, out, _ = await cli(tenants, "admin", "change", "show", cid, "--json")
    assert {(d["key"], d["op"]) for d in json.loads(out)["diff"]} == {
        ("db.pool", "put"),
        ("sale-banner", "put"),
    }


async def test_a_rollout_is_proposed_and_scheduled_from_the_cli(tenants: Tenants) -> None:
    code, out, err = await cli(
        tenants, "orders-writer", "change", "propose", "--rollout", "pool", "--env", "prod",
        "--service", "orders", "--set", "db.pool=25", "--percent", "10", "--at", "+1h", "--json",
    )  # fmt: skip
    assert code == 0, err
    proposed = json.loads(out)
    assert proposed["rollout"]["name"] == "pool" and proposed["apply_at"] is not None
    code, out, _ = await cli(tenants, "orders-writer", "change", "schedule", proposed["id"], "--clear")
    assert code == 0 and "state     open" in out
    code, out, _ = await cli(
        tenants, "orders-writer", "change", "cancel", proposed["id"], "--reason", "later"
    )
    assert code == 0 and "cancelled" in out


def test_times_are_relative_or_zoned() -> None:
    assert parse_time("2030-01-01T00:00:00Z") == 1893456000
    assert abs(parse_time("+10m") - (parse_time("+0s") + 600)) < 1
    for bad in ("tomorrow", "2030-01-01T00:00:00", "+10w"):
        with pytest.raises(InvalidArgument):
            parse_time(bad)
