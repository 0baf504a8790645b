"""`confmesh diff`: drift between two environments, minus the overrides you expect."""

from __future__ import annotations

import sys
from typing import Any

import click
import yaml

from confmesh.cli.common import admin_client, dumps, run
from confmesh.errors import ConfmeshError, InvalidArgument
from confmesh.gitops import MISSING, drift
from confmesh.keys import Layer
from confmesh.merge import resolve
from confmesh.textfiles import read_text


def load_expected(path: str | None, allow: tuple[str, ...]) -> list[str]:
    """Key patterns whose differences are expected: ``expected: [...]`` in a YAML file, plus --allow."""
    patterns = list(allow)
    if path:
        try:
            doc = yaml.safe_load(read_text(path)) or {}
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"{path}: {exc}") from exc
        listed = doc.get("expected") if isinstance(doc, dict) else None
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise InvalidArgument(f"{path}: expected a mapping with 'expected': a list of key patterns")
        patterns += listed
    return patterns


@click.command()
@click.option("--env", "envs", multiple=True, required=True, help="The two environments (give --env twice).")
@click.option(
    "--service", "services", multiple=True, help="Compare these services' resolved config (repeatable)."
)
@click.option(
    "--expect", "expect_file", default=None, help="YAML file listing expected overrides (key globs)."
)
@click.option("--allow", multiple=True, help="A key glob whose differences are expected (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def diff(
    ctx: click.Context, envs: tuple[str, ...], services: tuple[str, ...], expect_file: str | None,
    allow: tuple[str, ...], as_json: bool,
) -> None:  # fmt: skip
    """Keys whose resolved values differ between two environments.

    Without --service, the environment-wide config (defaults + environment
    layer) is compared. Exit code: 0 no unexpected drift, 1 unexpected drift,
    2 an error.
    """
    try:
        if len(envs) != 2:
            raise InvalidArgument("give exactly two --env")
        expected = load_expected(expect_file, allow)
        results = run(_compare(ctx, envs[0], envs[1], list(services), expected))
    except ConfmeshError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    unexpected = 0
    for scope, rows in results:
        for key, va, vb, is_expected in rows:
            unexpected += not is_expected
            if as_json:
                values = {envs[0]: None if va is MISSING else va, envs[1]: None if vb is MISSING else vb}
                click.echo(dumps({"scope": scope, "key": key, **values, "expected": is_expected}))
            else:
                mark = "expected " if is_expected else "DRIFT    "
                click.echo(f"{mark} {scope}  {key}: {envs[0]}={_show(va)}  {envs[1]}={_show(vb)}")
    if not as_json:
        click.echo(f"{unexpected} unexpected difference(s)")
    sys.exit(1 if unexpected else 0)


def _show(value: Any) -> str:
    return "(unset)" if value is MISSING else dumps(value)


async def _compare(
    ctx: click.Context, a: str, b: str, services: list[str], expected: list[str]
) -> list[tuple[str, list[tuple[str, Any, Any, bool]]]]:
    async with admin_client(ctx) as admin:
        if services:
            out = []
            for service in services:
                ra, rb = await admin.resolve(a, service), await admin.resolve(b, service)
                out.append((service, drift(ra.config, rb.config, expected)))
            return out
        _, defaults = await admin.get_layer(Layer.defaults())
        _, la = await admin.get_layer(Layer.env(a))
        _, lb = await admin.get_layer(Layer.env(b))
        return [("(environment)", drift(resolve([defaults, la]), resolve([defaults, lb]), expected))]
