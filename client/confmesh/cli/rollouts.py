"""`confmesh rollout`: stage a change to a slice of a service's instances, then promote or abort."""

from __future__ import annotations

from typing import Any

import click

from confmesh.cli.common import (
    admin_command,
    dumps,
    json_option,
    reason_option,
    required_env_option,
    required_service_option,
)
from confmesh.cli.parsing import parse_assignments
from confmesh.wire import message_json


@click.group()
def rollout() -> None:
    """Staged rollouts: a change seen first by a stable slice of a service's instances."""


@rollout.command("start")
@click.argument("name")
@required_env_option
@required_service_option
@click.option(
    "--set", "assignments", multiple=True, help="KEY=VALUE to set in the service layer (JSON value)."
)
@click.option("--delete", "deletes", multiple=True, help="KEY to delete from the service layer.")
@click.option("--percent", type=float, required=True, help="Share of instances that get it, (0, 100].")
@click.option(
    "--max-nack-rate", type=float, default=None, help="Abort when more canaries NACK (default 0.2)."
)
@reason_option
@admin_command
async def start(
    admin: Any,
    name: str,
    env: str,
    service: str,
    assignments: tuple[str, ...],
    deletes: tuple[str, ...],
    percent: float,
    max_nack_rate: float | None,
    reason: str,
) -> None:
    """Start rollout NAME of a change to ENV/SERVICE at --percent."""
    result = await admin.start_rollout(
        name,
        env,
        service,
        set=parse_assignments(assignments),
        delete=deletes,
        percent=percent,
        max_nack_rate=max_nack_rate,
        reason=reason,
    )
    click.echo(f"rollout {name} started at {percent:g}% of {env}/{service} (version {result.revision})")


@rollout.command("set")
@required_env_option
@required_service_option
@click.option("--percent", type=float, required=True, help="The new share of instances, (0, 100].")
@reason_option
@admin_command
async def set_percent(admin: Any, env: str, service: str, percent: float, reason: str) -> None:
    """Widen (or narrow) the active rollout of ENV/SERVICE."""
    result = await admin.update_rollout(env, service, percent, reason=reason)
    click.echo(f"rollout of {env}/{service} now at {percent:g}% (version {result.revision})")


@rollout.command("promote")
@required_env_option
@required_service_option
@reason_option
@admin_command
async def promote(admin: Any, env: str, service: str, reason: str) -> None:
    """Write the active rollout's change for every instance, as an audited change."""
    result = await admin.promote_rollout(env, service, reason=reason)
    click.echo(f"rollout of {env}/{service} promoted as version {result.revision}")


@rollout.command("abort")
@required_env_option
@required_service_option
@reason_option
@admin_command
async def abort(admin: Any, env: str, service: str, reason: str) -> None:
    """Stop the active rollout; its canary instances go forward to the base config."""
    result = await admin.abort_rollout(env, service, reason=reason)
    click.echo(f"rollout of {env}/{service} aborted (version {result.revision})")


@rollout.command("status")
@json_option
@admin_command
async def status(admin: Any, as_json: bool) -> None:
    """Rollouts, with how their canary instances (on every replica) answered."""
    for r in await admin.rollouts():
        if as_json:
            click.echo(dumps(message_json(r)))
            continue
        pending = r.canary_instances - r.canary_acked - r.canary_nacked
        line = (
            f"{r.environment}/{r.service}  {r.name}  {r.state}  {r.percent:g}%  version {r.version}  "
            f"canaries {r.canary_instances}: {r.canary_acked} ACK, {r.canary_nacked} NACK, {pending} pending"
        )
        click.echo(line + (f"  ({r.abort_reason})" if r.abort_reason else ""))
