"""`confmesh put`, `delete` and `get`: one layer's keys, and what a scope resolves to."""

from __future__ import annotations

import sys
from typing import Any

import click

from confmesh.cli.common import admin_command, dumps, env_option, json_option, reason_option, service_option
from confmesh.cli.parsing import parse_cli_value
from confmesh.errors import ConfmeshError, InvalidArgument, NotFound


@click.command()
@click.argument("key")
@click.argument("value")
@env_option
@service_option
@reason_option
@click.option(
    "--string", "as_string", is_flag=True, help="Store VALUE as a string even if it parses as JSON."
)
@admin_command
async def put(
    admin: Any, key: str, value: str, env: str | None, service: str | None, reason: str, as_string: bool
) -> None:
    """Set KEY (dotted path) to VALUE (JSON) in one layer."""
    result = await admin.put(
        key, parse_cli_value(value, as_string=as_string), env=env, service=service, reason=reason
    )
    click.echo(f"ok revision {result.revision}: {', '.join(result.changed)}")


@click.command()
@click.argument("key")
@env_option
@service_option
@reason_option
@admin_command
async def delete(admin: Any, key: str, env: str | None, service: str | None, reason: str) -> None:
    """Delete KEY and every key below it from one layer."""
    result = await admin.delete(key, env=env, service=service, reason=reason)
    click.echo(f"ok revision {result.revision}: deleted {', '.join(result.changed)}")


@click.command()
@click.argument("key", required=False, default="")
@click.option("--env", "env", required=True, help="Environment.")
@click.option("--service", required=True, help="Service.")
@click.option("--explain", is_flag=True, help="Show every layer's value and which one wins.")
@click.option(
    "--allow-unknown", is_flag=True, help="Resolve an environment that nothing names yet (defaults only)."
)
@json_option
@admin_command
async def get(
    admin: Any, key: str, env: str, service: str, explain: bool, allow_unknown: bool, as_json: bool
) -> None:
    """Print the resolved value of KEY (whole config without KEY) for --env/--service.

    An environment that no layer, flag set or schema names is refused (a typo, most often), with the
    closest known names; --allow-unknown resolves it anyway. A service name close to a known one is
    warned about on stderr.
    """
    if explain and not key:
        raise InvalidArgument("--explain needs a KEY: which key's layers should it show?")
    result = await admin.resolve(env, service, key)
    if not result.environment_known and not allow_unknown:
        raise NotFound(f"{result.notice} (--allow-unknown resolves it anyway)", field="env")
    if result.notice and not allow_unknown:
        click.echo(f"warning: {result.notice}", err=True)
    if not key:
        click.echo(
            dumps(
                {"version": result.version, "hash": result.hash, "config": result.config}
                if as_json
                else result.config,
                pretty=not as_json,
            )
        )
        return
    from confmesh.merge import contributing

    merged = [result.layers[i].layer for i in contributing([lv.value for lv in result.layers])]
    if as_json:
        out: dict[str, Any] = {
            "key": key,
            "found": result.found,
            "value": result.value,
            "version": result.version,
            "hash": result.hash,
        }
        if explain:
            out["layers"] = [
                {
                    "layer": str(lv.layer),
                    "source_key": lv.source_key,
                    "value": lv.value,
                    "mod_revision": lv.mod_revision,
                }
                for lv in result.layers
            ]
            out["winner"] = str(merged[0]) if len(merged) == 1 else None
            out["merged_from"] = [str(layer) for layer in merged]
        click.echo(dumps(out))
        if not result.found:
            sys.exit(1)
        return
    if not result.found:
        raise ConfmeshError(f"{key} is not set for {env}/{service}")
    if not explain:
        click.echo(dumps(result.value, pretty=isinstance(result.value, (dict, list))))
        return
    how = f", merged from {len(merged)} layers" if len(merged) > 1 else ""
    click.echo(f"{key} = {dumps(result.value)}   (version {result.version}{how})")
    from confmesh.keys import Scope

    by_layer = {lv.layer: lv for lv in result.layers}
    for layer in Scope(env, service).layers:
        lv = by_layer.get(layer)
        if lv is None:
            click.echo(f"  {layer!s:<32} -")
            continue
        via = f" via {lv.source_key}" if lv.source_key != key else ""
        mark = ""
        if layer in merged:
            mark = "   <- merged" if len(merged) > 1 else "   <- wins"
        click.echo(f"  {layer!s:<32} {dumps(lv.value)}   (rev {lv.mod_revision}{via}){mark}")
