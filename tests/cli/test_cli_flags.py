"""`confmesh flags` as users run it."""

from __future__ import annotations

import json
from pathlib import Path

from confmesh.server import ConfmeshServer
from tests.cli.test_cli import cli

CLASSIC = {
    "newCheckoutFlow": {"type": "percentage", "percentage": 25},
    "betaFeatures": {"type": "userList", "users": ["u1", "u2"]},
    "darkMode": {"type": "boolean", "enabled": True},
    "premiumFeatures": {"type": "userAttribute", "attribute": "subscriptionTier", "operator": "in",
                        "values": ["premium", "enterprise"]},
}  # fmt: skip


async def test_offline_eval_of_classic_json_for_many_contexts(tmp_path: Path) -> None:
    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps(CLASSIC))
    contexts = tmp_path / "ctx.jsonl"
    contexts.write_text('{"userId": "u1"}\n{"userId": "u9", "subscriptionTier": "premium"}\n{}\n')
    code, out, _ = await cli(
        "127.0.0.1:1",
        "flags",
        "eval",
        "betaFeatures",
        "--flags-file",
        str(flags_file),
        "--contexts",
        str(contexts),
        "--json",
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["value"], r["variant"], r["reason"]) for r in rows] == [
        (True, "on", "TARGETING_MATCH"),
        (False, "off", "DEFAULT"),
        (False, "off", "DEFAULT"),
    ]
    code, out, _ = await cli(
        "127.0.0.1:1",
        "flags",
        "eval",
        "premiumFeatures",
        "--flags-file",
        str(flags_file),
        "--context",
        '{"subscriptionTier": "enterprise"}',
        "--json",
    )
    assert json.loads(out)["value"] is True


async def test_import_list_kill_explain_and_stale(server: ConfmeshServer, tmp_path: Path) -> None:
    addr = server.address
    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps(CLASSIC))
    code, out, _ = await cli(addr, "flags", "import", str(flags_file), "--env", "prod")
    assert code == 0 and "4 flag change(s)" in out
    code, out, _ = await cli(addr, "flags", "list", "--env", "prod", "--json")
    listed = json.loads(out)
    assert set(listed["flags"]) == set(CLASSIC)
    assert listed["flags"]["newCheckoutFlow"]["bucketing"] == "legacy-md5"

    code, out, _ = await cli(addr, "flags", "kill", "darkMode")
    assert code == 0 and "darkMode is OFF in prod" in out
    code, out, _ = await cli(addr, "flags", "eval", "darkMode", "--env", "prod", "--json")
    assert json.loads(out)["reason"] == "DISABLED"
    code, out, _ = await cli(addr, "flags", "enable", "darkMode", "--env", "prod")
    assert code == 0

    code, out, _ = await cli(
        addr,
        "flags",
        "explain",
        "premiumFeatures",
        "--env",
        "prod",
        "--context",
        '{"subscriptionTier": "free"}',
    )
    assert "subscriptionTier in" in out and "no match" in out and "reason DEFAULT" in out

    code, _, err = await cli(
        addr,
        "flags",
        "set",
        "x",
        "--env",
        "prod",
        "--definition",
        '{"variants": {"a": 1, "b": "two"}, "default_variant": "a"}',
    )
    assert code == 1 and "variants must all have one type" in err

    code, out, _ = await cli(addr, "flags", "stale", "--env", "prod", "--check")
    assert code == 0 and "0 stale flag(s) of 4 in prod" in out
