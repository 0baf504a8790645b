"""The ``confmesh`` command line: the group every command module joins.

Errors are one line on stderr and a non-zero exit (1: the operation failed,
2: the command was used wrongly), never a traceback. Each command lives in the module of its
family (`values`, `watch`, `status`, `audit`, `serve`, `apply`, `diff`, `flags`, `history`,
`rollouts`, `changes`, `schemas`, `tokens`); shared parsing in `parsing`, shared output and
options in `common`. Command modules never import this one.
"""

from __future__ import annotations

from typing import Any

import click

from confmesh.cli.apply import apply
from confmesh.cli.audit import audit
from confmesh.cli.changes import change
from confmesh.cli.diff import diff
from confmesh.cli.flags import flags
from confmesh.cli.history import history, revert, rollback
from confmesh.cli.parsing import DEFAULT_SERVER, server_target
from confmesh.cli.relay import relay
from confmesh.cli.rollouts import rollout
from confmesh.cli.schemas import schema
from confmesh.cli.serve import serve
from confmesh.cli.status import status
from confmesh.cli.tokens import token
from confmesh.cli.values import delete, get, put
from confmesh.cli.watch import watch
from confmesh.errors import ConfmeshError
from confmesh.version import __version__

GLOBAL_OPTIONS = ("--server", "--actor", "--tls-ca", "--tls-cert", "--tls-key", "--token")


def hoist_global_options(group: click.Group, ctx: click.Context, args: list[str]) -> list[str]:
    """Move global options written after the command to before it, as etcdctl and kubectl take them.

    ``confmesh put k v --server h:7070`` becomes ``confmesh --server h:7070 put k v``. An option the
    command itself defines (``serve --tls-cert``, ``audit --actor``) stays the command's.
    """
    head: list[str] = []
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "--":
        option = rest.pop(0)
        head.append(option)
        if option in GLOBAL_OPTIONS and rest:
            head.append(rest.pop(0))
    if not rest:
        return args
    own: set[str] = set()
    command: click.Command | None = group
    for word in rest:
        if word.startswith("-") or not isinstance(command, click.Group):
            break
        command = command.get_command(ctx, word)
        if command is None:
            return args
        own.update(name for param in command.params for name in getattr(param, "opts", []))
    hoisted: list[str] = []
    kept: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "--":
            kept.extend(rest[i:])
            break
        name = word.split("=", 1)[0]
        if name in GLOBAL_OPTIONS and name not in own:
            hoisted.append(word)
            if "=" not in word and i + 1 < len(rest):
                hoisted.append(rest[i + 1])
                i += 1
        else:
            kept.append(word)
        i += 1
    return [*head, *hoisted, *kept]


class ConfmeshGroup(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(self, ctx, args))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfmeshError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            ctx.exit(130)


@click.group(cls=ConfmeshGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="confmesh")
@click.option(
    "--server",
    envvar="CONFMESH_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="confmesh server HOST[:PORT], port 7070 if omitted (env CONFMESH_SERVER).",
)
@click.option("--actor", envvar="CONFMESH_ACTOR", default=None, help="Who makes changes (default: $USER).")
@click.option(
    "--tls-ca",
    envvar="CONFMESH_TLS_CA",
    default=None,
    help="Connect with TLS, trusting this CA (PEM) (env CONFMESH_TLS_CA).",
)
@click.option(
    "--tls-cert",
    envvar="CONFMESH_TLS_CERT",
    default=None,
    help="Client certificate (PEM) for mutual TLS (env CONFMESH_TLS_CERT).",
)
@click.option(
    "--tls-key",
    envvar="CONFMESH_TLS_KEY",
    default=None,
    help="Client key (PEM) for mutual TLS (env CONFMESH_TLS_KEY).",
)
@click.option(
    "--token",
    envvar="CONFMESH_TOKEN",
    default=None,
    help="Bearer token from `confmesh token create` (env CONFMESH_TOKEN; prefer the env var).",
)
@click.pass_context
def main(
    ctx: click.Context,
    server: str,
    actor: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    token: str | None,
) -> None:
    """confmesh: typed config and feature flags for every service, from etcd."""
    from confmesh.tls import TLSConfig

    tls = TLSConfig(ca=tls_ca, cert=tls_cert, key=tls_key) if (tls_ca or tls_cert or tls_key) else None
    ctx.obj = {"server": server_target(server), "actor": actor, "tls": tls, "token": token}


for command in (serve, relay, put, delete, get, watch, status, audit, flags, apply, history, rollback, revert,
                diff, schema, rollout, change, token):  # fmt: skip
    main.add_command(command)
