"""`confmesh change`: propose, review, schedule and apply change requests."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import click

from confmesh.cli.common import admin_command, dumps, json_option
from confmesh.errors import InvalidArgument
from confmesh.textfiles import read_text_or_stdin
from confmesh.wire import message_json

_RELATIVE = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> float:
    """Epoch seconds of ``+90s``/``+10m``/``+2h``/``+1d`` from now, or an ISO 8601 time with a zone."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return time.time() + float(relative.group(1)) * _UNIT[relative.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidArgument(f"--at takes +10m, +2h or an ISO 8601 time, got {text!r}") from exc
    if when.tzinfo is None:
        raise InvalidArgument(f"--at {text!r} has no time zone: add Z or +01:00")
    return when.timestamp()


def _when(ts: Any) -> str:
    return ts.ToJsonString() if ts.seconds or ts.nanos else "-"


def state_name(change: Any) -> str:
    from confmesh.v1 import admin_pb2

    name = admin_pb2.ChangeState.Name(change.state).removeprefix("CHANGE_STATE_").lower()
    if name == "approved" and change.apply_at.seconds:
        return f"scheduled {_when(change.apply_at)}"
    return name + (" (stale)" if change.stale else "")


def show(change: Any) -> None:
    """A change request for people: what, who, its reviews, its diff and blast radius."""
    from confmesh.wire import from_value, layer_from_pb

    click.echo(f"change {change.id}: {change.title}")
    click.echo(f"  state     {state_name(change)}")
    click.echo(f"  author    {change.author}   proposed {_when(change.created_at)}")
    if change.reason:
        click.echo(f"  reason    {change.reason}")
    click.echo(f"  approvals {change.approvals}/{change.approvals_required}")
    for review in change.reviews:
        verdict = "approved" if review.approve else "rejected"
        click.echo(f"    {verdict} by {review.identity} {_when(review.at)}  {review.comment}".rstrip())
    if change.applied_revision:
        click.echo(
            f"  applied   version {change.applied_revision} by {change.applied_by} {_when(change.applied_at)}"
        )
    if change.error:
        click.echo(f"  error     {change.error}")
    if change.stale_layers:
        click.echo(f"  stale     {', '.join(change.stale_layers)} changed since the proposal")
    if change.HasField("rollout"):
        r = change.rollout
        click.echo(f"  rollout   {r.name} of {r.environment}/{r.service} at {r.percent:g}%")
    for d in change.diff:
        where = f"{layer_from_pb(d.layer)}:{d.key}"
        if d.op == "delete":
            click.echo(f"  - {where}  {dumps(from_value(d.old))}")
        elif d.existed:
            click.echo(f"  ~ {where}  {dumps(from_value(d.old))} -> {dumps(from_value(d.new))}")
        else:
            click.echo(f"  + {where}  {dumps(from_value(d.new))}")
    for s in change.scopes:
        verdict = (
            "no schema"
            if not s.has_schema
            else "schema ok"
            if s.schema_accepts
            else f"SCHEMA REFUSES: {s.schema_error}"
        )
        click.echo(
            f"  scope {s.environment}/{s.service}: {len(s.changed_keys)} key(s), "
            f"{s.instances} instance(s), {verdict}"
        )
    if change.scopes_not_shown:
        click.echo(f"  (+{change.scopes_not_shown} scope(s) not shown)")
    for f in change.flags:
        verdict = "valid" if f.valid else f"INVALID: {f.error}"
        click.echo(
            f"  flags {f.environment}: {', '.join(f.changed_flags)}; {f.instances} instance(s), {verdict}"
        )


def _output(change: Any, as_json: bool) -> None:
    if as_json:
        click.echo(dumps(message_json(change), pretty=True))
    else:
        show(change)


@click.group()
def change() -> None:
    """Change requests: propose changes, have another identity approve them, apply or schedule them."""


@change.command("propose")
@click.argument("path", required=False)
@click.option(
    "-f",
    "--file",
    "file_opt",
    default=None,
    help="A change-set file, as `confmesh apply` takes (- for stdin).",
)
@click.option("--title", default="", help="One line saying what it does.")
@click.option("--reason", default="", help="Why: recorded with the proposal and the change.")
@click.option("--at", "at", default=None, help="Apply by itself at this time once approved (+10m, ISO 8601).")
@click.option(
    "--rollout", "rollout_name", default=None, help="Propose starting rollout NAME instead of a file."
)
@click.option("--env", default=None, help="The rollout's environment.")
@click.option("--service", default=None, help="The rollout's service.")
@click.option("--set", "assignments", multiple=True, help="Rollout: KEY=VALUE to set (JSON value).")
@click.option("--delete", "deletes", multiple=True, help="Rollout: KEY to delete.")
@click.option("--percent", type=float, default=None, help="Rollout: share of instances, (0, 100].")
@click.option("--dry-run", is_flag=True, help="Show the diff and blast radius, store nothing.")
@json_option
@admin_command
async def propose(
    admin: Any,
    path: str | None,
    file_opt: str | None,
    title: str,
    reason: str,
    at: str | None,
    rollout_name: str | None,
    env: str | None,
    service: str | None,
    assignments: tuple[str, ...],
    deletes: tuple[str, ...],
    percent: float | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Propose the changes in a change-set file (config keys and `flag:` entries), or a rollout start.

    It is checked now against the layers as they are, and applies later only if none of the layers
    it touches changed meanwhile.
    """
    from confmesh.changes import parse_apply_document
    from confmesh.cli.parsing import parse_assignments

    target = file_opt or path
    apply_at = parse_time(at) if at else None
    if rollout_name is not None:
        if target is not None or not (env and service and percent is not None):
            raise InvalidArgument(
                "--rollout takes --env, --service, --percent and --set/--delete, not a file"
            )
        rollout = {
            "name": rollout_name,
            "env": env,
            "service": service,
            "set": parse_assignments(assignments),
            "delete": list(deletes),
            "percent": percent,
        }
        found = await admin.propose_change(
            title=title, reason=reason, rollout=rollout, apply_at=apply_at, dry_run=dry_run
        )
    else:
        if target is None:
            raise InvalidArgument("give a change-set file (-f PATH), or --rollout NAME")
        text = read_text_or_stdin(target)
        doc = parse_apply_document(text, source=target)
        found = await admin.propose_change(
            doc.changes, title=title, reason=reason or doc.reason, apply_at=apply_at, dry_run=dry_run
        )
    _output(found, as_json)
    if dry_run and not as_json:
        click.echo("(dry run: nothing proposed)")


@change.command("list")
@click.option("--state", "states", multiple=True,
              type=click.Choice(["open", "approved", "rejected", "applied", "cancelled", "failed"]),
              help="Only these states.")  # fmt: skip
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many.")
@json_option
@admin_command
async def list_changes(admin: Any, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Change requests you may read, newest first."""
    found = await admin.changes(states=states, limit=limit)
    if as_json:
        click.echo(dumps([message_json(c) for c in found], pretty=True))
        return
    for c in found:
        click.echo(
            f"{c.id}  {state_name(c):<28} {c.approvals}/{c.approvals_required}  {c.author:<24} {c.title}"
        )


@change.command("show")
@click.argument("change_id")
@json_option
@admin_command
async def show_change(admin: Any, change_id: str, as_json: bool) -> None:
    """One change request: its diff and blast radius against the layers as they are now."""
    _output(await admin.change(change_id), as_json)


@change.command("approve")
@click.argument("change_id")
@click.option("--comment", default="", help="Recorded with the review.")
@json_option
@admin_command
async def approve(admin: Any, change_id: str, comment: str, as_json: bool) -> None:
    """Approve a change someone else proposed (you need the right to write every layer it touches)."""
    _output(await admin.review_change(change_id, approve=True, comment=comment), as_json)


@change.command("reject")
@click.argument("change_id")
@click.option("--comment", required=True, help="Why: recorded with the review.")
@json_option
@admin_command
async def reject(admin: Any, change_id: str, comment: str, as_json: bool) -> None:
    """Reject a change: it can no longer apply."""
    _output(await admin.review_change(change_id, approve=False, comment=comment), as_json)


@change.command("apply")
@click.argument("change_id")
@json_option
@admin_command
async def apply_change(admin: Any, change_id: str, as_json: bool) -> None:
    """Apply an approved change now, as one audited transaction."""
    _output(await admin.apply_change(change_id), as_json)


@change.command("schedule")
@click.argument("change_id")
@click.option("--at", "at", default=None, help="When: +10m, +2h, or an ISO 8601 time with a zone.")
@click.option("--clear", is_flag=True, help="Apply by hand instead.")
@json_option
@admin_command
async def schedule(admin: Any, change_id: str, at: str | None, clear: bool, as_json: bool) -> None:
    """Apply a change at a given time, once approved: exactly once, whichever replica gets there."""
    if clear == (at is not None):
        raise InvalidArgument("give --at TIME or --clear")
    _output(await admin.schedule_change(change_id, None if clear else parse_time(at or "")), as_json)


@change.command("cancel")
@click.argument("change_id")
@click.option("--reason", default="", help="Why: recorded with it.")
@json_option
@admin_command
async def cancel(admin: Any, change_id: str, reason: str, as_json: bool) -> None:
    """Withdraw a change you proposed (admins: any change)."""
    _output(await admin.cancel_change(change_id, reason=reason), as_json)
