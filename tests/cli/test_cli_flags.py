"""`confmesh flags` as users run it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


async def test_reimporting_after_a_kill_keeps_it_killed_and_writes_only_what_changes(
    server: ConfmeshServer, tmp_path: Path
) -> None:
    """A CI job that imports on every deploy must not undo an emergency kill; dry run and import agree."""
    addr = server.address
    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps(CLASSIC))
    assert (await cli(addr, "flags", "import", str(flags_file), "--env", "prod"))[0] == 0
    code, out, _ = await cli(addr, "flags", "kill", "darkMode", "--env", "prod")
    assert code == 0
    audit_before = (await cli(addr, "audit", "--env", "prod", "--json"))[1].count('"actor"')

    # Unchanged file: nothing changes, the kill holds, and both runs say so.
    for extra in (["--dry-run"], []):
        code, out, err = await cli(addr, "flags", "import", str(flags_file), "--env", "prod", *extra)
        assert code == 0, err
        assert "! darkMode: killed on the server" in err and "--override-kill" in err
        assert "0 flag change(s) in prod" in out, out
    code, out, _ = await cli(addr, "flags", "eval", "darkMode", "--env", "prod", "--json")
    assert json.loads(out)["reason"] == "DISABLED"

    # One flag changed in the file: the dry run and the import both count one, and one is written.
    changed = json.loads(json.dumps(CLASSIC))
    changed["premiumFeatures"]["values"].append("vip")
    flags_file.write_text(json.dumps(changed))
    code, dry, _ = await cli(addr, "flags", "import", str(flags_file), "--env", "prod", "--dry-run")
    code, done, _ = await cli(addr, "flags", "import", str(flags_file), "--env", "prod")
    assert "1 flag change(s) in prod (dry run" in dry and ": 1 flag change(s) in prod" in done, (dry, done)
    records = (await cli(addr, "audit", "--env", "prod", "--json"))[1].splitlines()
    assert len(records) == audit_before + 1  # the unchanged imports wrote nothing
    assert [c["key"] for c in json.loads(records[0])["changes"]] == ["premiumFeatures"]

    # Asked for explicitly, the import turns it back on.
    code, out, err = await cli(addr, "flags", "import", str(flags_file), "--env", "prod", "--override-kill")
    assert code == 0 and "~ darkMode: enabled" in out and "killed on the server" not in err
    code, out, _ = await cli(addr, "flags", "eval", "darkMode", "--env", "prod", "--json")
    assert json.loads(out)["reason"] != "DISABLED"


async def test_killing_a_killed_flag_writes_nothing(server: ConfmeshServer, tmp_path: Path) -> None:
    addr = server.address
    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps(CLASSIC))
    await cli(addr, "flags", "import", str(flags_file), "--env", "prod")
    code, first, _ = await cli(addr, "flags", "kill", "darkMode", "--env", "prod")
    code, again, err = await cli(addr, "flags", "kill", "darkMode", "--env", "prod")
    assert code == 0, err
    assert first.split()[2] == again.split()[2], (first, again)  # the same revision: nothing written


@pytest.mark.parametrize(
    ("document", "problems"),
    [
        (  # classic: the bad entries are blamed (not valid 'a'), every one of them
            {"a": {"type": "boolean", "enabled": True}, "b": {"type": "bogus"},
             "c": {"type": "userList", "users": "u1"}},
            ["flags.b: unknown classic flag type 'bogus'", "flags.c: 'users' must be a list of strings"],
        ),
        (  # confmesh's format lists every problem too
            {"flags": {"a": {"variants": {"on": True}, "default_variant": "x"},
                       "b": {"variants": {}, "default_variant": "on"}}},
            ["flags.a: default_variant: unknown variant 'x'", "flags.b.variants:"],
        ),
    ],
)  # fmt: skip
async def test_every_format_lists_every_problem_and_blames_the_right_entry(
    server: ConfmeshServer, tmp_path: Path, document: dict[str, object], problems: list[str]
) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(document))
    for argv in (
        ["flags", "import", str(path), "--env", "prod"],
        ["flags", "eval", "a", "--flags-file", str(path)],
    ):
        code, _, err = await cli(server.address, *argv)
        assert code == 1 and f"refused: {len(problems)} problem(s)" in err, err
        for problem in problems:
            assert f"{path}: {problem}" in err, err
        assert "flags.a:" not in err or "flags.a: default_variant" in problems[0]
