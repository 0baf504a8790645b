"""`confmesh history`, `rollback` and `revert`: changes over time, and undoing them."""

from __future__ import annotations

import re
from typing import Any

import click

from confmesh.cli.common import admin_command, dumps, json_option, reason_option
from confmesh.errors import InvalidArgument
from confmesh.wire import message_json

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``30s``, ``10m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise InvalidArgument(f"--since takes a duration like 30s, 10m, 2h or 1d, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


@click.command()
@click.option("--env", "env", default="", help="Environment (its own and its services' changes).")
@click.option("--service", default="", help="Service (needs --env).")
@click.option("--limit", default=20, show_default=True, help="At most this many versions.")
@json_option
@admin_command
async def history(admin: Any, env: str, service: str, limit: int, as_json: bool) -> None:
    """Versions that changed ENV[/SERVICE]'s config or flags, newest first, with their changes.

    With --json, one audit record per line (the same shape as `confmesh audit --json`).
    """
    from confmesh.wire import from_value, layer_from_pb

    for rec in (await admin.audit(env=env, service=service, limit=limit)).records:
        if not rec.changes:
            continue
        if as_json:
            click.echo(dumps(message_json(rec)))
            continue
        when = rec.at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        why = f"  ({rec.reason})" if rec.reason else ""
        click.echo(f"version {rec.revision}  {when}  {rec.actor}  {rec.source}{why}")
        for ch in rec.changes:
            old = dumps(from_value(ch.old_value)) if ch.HasField("old_value") else "-"
            new = dumps(from_value(ch.new_value)) if ch.HasField("new_value") else "-"
            click.echo(f"    {layer_from_pb(ch.layer)}:{ch.key}  {old} -> {new}")


@click.command()
@click.option("--env", "env", default=None, help="Environment (omit: the defaults layer).")
@click.option("--service", default=None, help="Service (needs --env).")
@click.option("--to", "to_version", type=int, required=True, help="The version to restore.")
@reason_option
@admin_command
async def rollback(admin: Any, env: str | None, service: str | None, to_version: int, reason: str) -> None:
    """Restore a layer as of version --to, as a new audited change (clients see a newer version)."""
    result = await admin.rollback(to_version, env=env, service=service, reason=reason)
    click.echo(f"rolled back to version {to_version}: now version {result.revision}")
    for changed in result.changed:
        click.echo(f"  {changed}")


@click.command()
@click.option("--env", "env", required=True, help="Environment.")
@click.option("--since", "since", required=True, help="How far back: 30s, 10m, 2h, 1d.")
@reason_option
@admin_command
async def revert(admin: Any, env: str, since: str, reason: str) -> None:
    """Undo every config and flag change to ENV in the last --since, as one audited change."""
    result = await admin.revert(env, parse_duration(since), reason=reason)
    click.echo(f"reverted {len(result.changed)} key(s) in {env}: now version {result.revision}")
    for changed in result.changed:
        click.echo(f"  {changed}")
