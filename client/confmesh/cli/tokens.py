"""`confmesh token`: issue, list and revoke bearer tokens."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from confmesh.cli.common import admin_command, dumps, json_option, reason_option


@click.group()
def token() -> None:
    """Bearer tokens for callers without a client certificate (admins only)."""


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["admin", "writer", "reader", "service"]))
@click.option("--env", "env", default="", help="service role: its environment.")
@click.option("--service", default="", help="service role: its service.")
@click.option(
    "--scope", "scopes", multiple=True, help="writer/reader: layer pattern (defaults, ENV, ENV/SVC, globs)."
)
@click.option("--flags", "flags", multiple=True, help="writer: environment whose flags it may change.")
@click.option(
    "--etcd",
    "etcd",
    default="",
    help="Bootstrap: write the token straight to etcd at HOST:PORT (no server, no admin needed).",
)
@click.option("--prefix", default="/confmesh", show_default=True, help="With --etcd: the key prefix.")
@reason_option
@click.pass_context
def create(
    ctx: click.Context,
    name: str,
    role: str,
    env: str,
    service: str,
    scopes: tuple[str, ...],
    flags: tuple[str, ...],
    etcd: str,
    prefix: str,
    reason: str,
) -> None:
    """Issue token NAME; prints it once (store it in your secret manager)."""
    grant = {"role": role, "environment": env, "service": service, "scopes": scopes, "flags": flags}
    if etcd:
        click.echo(asyncio.run(_bootstrap(etcd, prefix, name, grant, reason)))
        return

    @admin_command
    async def issue(admin: Any) -> None:
        click.echo(
            await admin.create_token(
                name, role, env=env, service=service, scopes=scopes, flags=flags, reason=reason
            )
        )

    ctx.invoke(issue)


async def _bootstrap(endpoints: str, prefix: str, name: str, fields: dict[str, Any], reason: str) -> str:
    from pydantic import ValidationError

    from confmesh.cli.common import require_server
    from confmesh.errors import InvalidArgument
    from confmesh.keys import KeyLayout

    require_server("token create --etcd")
    from confmesh.server.access import Grant, new_token
    from confmesh.server.app import parse_endpoints
    from confmesh.server.etcd import Etcd
    from confmesh.server.records import store_token

    try:
        grant = Grant.model_validate(fields)
    except ValidationError as exc:
        raise InvalidArgument(f"grant: {exc.errors()[0]['msg']}") from exc
    record, bearer = new_token(name, grant, "bootstrap")
    etcd = Etcd(parse_endpoints(endpoints))
    await etcd.connect()
    try:
        await store_token(
            etcd, KeyLayout(prefix), record, actor="bootstrap", reason=reason or "bootstrap token"
        )
    finally:
        await etcd.close()
    return bearer


@token.command("list")
@json_option
@admin_command
async def list_tokens(admin: Any, as_json: bool) -> None:
    """Tokens by name, with their grants (never their secrets)."""
    for t in await admin.list_tokens():
        grant = {
            "role": t.grant.role,
            "environment": t.grant.environment,
            "service": t.grant.service,
            "scopes": list(t.grant.scopes),
            "flags": list(t.grant.flags),
        }
        if as_json:
            click.echo(dumps({"id": t.id, "name": t.name, "grant": grant, "created_by": t.created_by}))
        else:
            extra = " ".join(f"{k}={v}" for k, v in grant.items() if v and k != "role")
            click.echo(f"{t.name:<24} {t.grant.role:<8} {extra}  (by {t.created_by})")


@token.command("revoke")
@click.argument("name")
@reason_option
@admin_command
async def revoke(admin: Any, name: str, reason: str) -> None:
    """Revoke token NAME; open streams using it are closed."""
    result = await admin.revoke_token(name, reason=reason)
    click.echo(f"revoked {name} (revision {result.revision})")
