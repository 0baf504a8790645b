"""`confmesh audit`: who changed what, when and why."""

from __future__ import annotations

from typing import Any

import click

from confmesh.cli.common import admin_command, dumps, json_option
from confmesh.wire import message_json


@click.command()
@click.option("--env", "env", default="", help="Only changes that affect this environment.")
@click.option("--service", default="", help="Only changes that affect this service.")
@click.option("--key", "key_prefix", default="", help="Only changes to keys starting with this.")
@click.option("--actor", "who", default="", help="Only changes by this actor.")
@click.option("--limit", default=50, show_default=True, help="At most this many records.")
@json_option
@admin_command
async def audit(
    admin: Any, env: str, service: str, key_prefix: str, who: str, limit: int, as_json: bool
) -> None:
    """The audit log: who changed what, when and why, with old and new values (newest first)."""
    from confmesh.wire import from_value, layer_from_pb

    resp = await admin.audit(env=env, service=service, key_prefix=key_prefix, actor=who, limit=limit)
    if as_json:
        for rec in resp.records:
            click.echo(dumps(message_json(rec)))
        return
    for rec in resp.records:
        when = rec.at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        why = f" ({rec.reason})" if rec.reason else ""
        trace = f"  trace {rec.trace_parent.split('-')[1]}" if rec.trace_parent.count("-") == 3 else ""
        click.echo(f"rev {rec.revision}  {when}  {rec.actor}  {rec.source}{why}{trace}")
        for ch in rec.changes:
            old = dumps(from_value(ch.old_value)) if ch.HasField("old_value") else "-"
            new = dumps(from_value(ch.new_value)) if ch.HasField("new_value") else "-"
            click.echo(f"    {ch.op:<6} {layer_from_pb(ch.layer)}:{ch.key}  {old} -> {new}")
