"""`confmesh flags import` and `export` against a real server: diff first, refused whole, exported exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from confmesh.server import ConfmeshServer
from tests.cli.test_cli import cli

GOOD = {
    "flags": {
        "dark-mode": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", None]},
            "metadata": {"team": "web"},
        },
        "banner": {"state": "DISABLED", "variants": {"red": "#f00", "blue": "#00f"}, "defaultVariant": "red"},
    }
}


async def flags_of(server: ConfmeshServer, env: str) -> dict[str, Any]:
    code, out, err = await cli(server.address, "flags", "list", "--env", env, "--json")
    assert code == 0, err
    flags: dict[str, Any] = json.loads(out)["flags"]
    return flags


async def test_import_shows_the_diff_and_dry_run_writes_nothing(
    server: ConfmeshServer, tmp_path: Path
) -> None:
    source = tmp_path / "flags.json"
    source.write_text(json.dumps(GOOD))
    code, out, err = await cli(server.address, "flags", "import", str(source), "--env", "prod", "--dry-run")
    assert code == 0, err
    assert "+ banner" in out and "+ dark-mode" in out and "dry run: nothing applied" in out
    assert await flags_of(server, "prod") == {}

    code, out, err = await cli(server.address, "flags", "import", str(source), "--env", "prod")
    assert code == 0, err
    assert "ok revision" in out
    stored = await flags_of(server, "prod")
    assert set(stored) == {"banner", "dark-mode"} and stored["dark-mode"]["metadata"] == {"team": "web"}

    changed = json.loads(json.dumps(GOOD))
    changed["flags"]["banner"]["state"] = "ENABLED"
    source.write_text(json.dumps(changed))
    code, out, err = await cli(server.address, "flags", "import", str(source), "--env", "prod", "--dry-run")
    assert code == 0, err
    assert out.splitlines()[0] == "~ banner: enabled" and "1 flag change(s)" in out
    assert (await flags_of(server, "prod"))["banner"]["enabled"] is False

    code, _, err = await cli(server.address, "flags", "import", str(source), "--env", "prod")
    assert code == 0, err
    assert (await flags_of(server, "prod"))["banner"].get("enabled", True) is True
    code, out, _ = await cli(server.address, "flags", "import", str(source), "--env", "prod")
    assert "0 flag change(s) in prod; nothing to apply" in out


async def test_an_invalid_flagd_file_is_refused_whole(server: ConfmeshServer, tmp_path: Path) -> None:
    source = tmp_path / "bad-flagd.json"
    source.write_text(
        json.dumps(
            {
                "flags": {
                    "fine": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"},
                    "bad-state": {"state": "ON", "variants": {"on": True}, "defaultVariant": "on"},
                    "bad-ref": {
                        "state": "ENABLED",
                        "variants": {"on": True},
                        "defaultVariant": "on",
                        "targeting": {"$ref": "nowhere"},
                    },
                    "bad-logic": {
                        "state": "ENABLED",
                        "variants": {"on": True},
                        "defaultVariant": "on",
                        "targeting": {"if": [{"frobnicate": [1]}, "on", None]},
                    },
                    "mixed": {"state": "ENABLED", "variants": {"a": 1, "b": "two"}, "defaultVariant": "a"},
                },
                "$evaluators": {},
            }
        )
    )
    code, _, err = await cli(server.address, "flags", "import", str(source), "--env", "prod")
    assert code != 0
    assert "refused: 4 problem(s), nothing was written" in err
    for where in (
        "flags.bad-state.state: state is ENABLED or DISABLED",
        "flags.bad-ref.targeting: $ref to an evaluator that does not exist: 'nowhere'",
        "flags.bad-logic.targeting: targeting.if[0]: unknown operator 'frobnicate'",
        "flags.mixed: variants must all have one type",
    ):
        assert f"{source}: {where}" in err, (where, err)
    assert await flags_of(server, "prod") == {}


async def test_an_invalid_unleash_file_is_refused_whole(server: ConfmeshServer, tmp_path: Path) -> None:
    source = tmp_path / "bad-unleash.json"
    source.write_text(
        json.dumps(
            {
                "version": 2,
                "features": [
                    {"name": "fine", "enabled": True, "strategies": [{"name": "default"}]},
                    {
                        "name": "weights",
                        "enabled": True,
                        "strategies": [],
                        "variants": [{"name": "a", "weight": -1}],
                    },
                    {
                        "name": "constraint",
                        "enabled": True,
                        "strategies": [
                            {"name": "default", "constraints": [{"operator": "IN", "values": ["x"]}]}
                        ],
                    },
                    {"name": "events", "enabled": "yes", "strategies": "all"},
                ],
            }
        )
    )
    code, _, err = await cli(server.address, "flags", "import", str(source), "--env", "prod")
    assert code != 0
    assert "nothing was written" in err
    for where in (
        "flags.weights.variants[0].weight: a weight is a non-negative integer",
        "flags.constraint.targeting: targeting.if[0].unleash_strategy.constraints[0].contextName",
        "flags.events.enabled: enabled is true or false",
        "flags.events.strategies: strategies is a list",
    ):
        assert f"{source}: {where}" in err, (where, err)
    assert await flags_of(server, "prod") == {}


async def test_export_writes_flagd_and_names_what_it_leaves_out(
    server: ConfmeshServer, tmp_path: Path
) -> None:
    source = tmp_path / "flags.json"
    source.write_text(json.dumps(GOOD))
    assert (await cli(server.address, "flags", "import", str(source), "--env", "prod"))[0] == 0
    gated = {
        "key": "gated",
        "variants": {"on": True, "off": False},
        "default_variant": "off",
        "prerequisites": [{"flag": "dark-mode", "variant": "on"}],
    }
    code, _, err = await cli(
        server.address, "flags", "set", "gated", "--env", "prod", "--definition", json.dumps(gated)
    )
    assert code == 0, err

    exported = tmp_path / "exported.json"
    code, out, err = await cli(server.address, "flags", "export", "--env", "prod", "-o", str(exported))
    assert code == 0, err
    assert "left out gated: prerequisites have no flagd equivalent" in err
    document = json.loads(exported.read_text())
    assert set(document["flags"]) == {"banner", "dark-mode"}

    contexts = tmp_path / "ctx.jsonl"
    contexts.write_text('{"email": "a@example.com"}\n{"email": "b@elsewhere.org"}\n{}\n')
    served = []
    for args in (("--env", "prod"), ("--flags-file", str(exported), "--format", "flagd")):
        code, out, err = await cli(
            server.address, "flags", "eval", "dark-mode", *args, "--contexts", str(contexts), "--json"
        )
        assert code == 0, err
        served.append(
            [
                (r["value"], r["variant"], r["reason"], r.get("metadata"))
                for r in map(json.loads, out.splitlines())
            ]
        )
    assert served[0] == served[1]
    assert [v for v, *_ in served[0]] == [True, False, False]
