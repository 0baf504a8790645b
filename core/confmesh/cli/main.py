"""The ``confmesh`` command line.

Errors are one line on stderr and a non-zero exit (1: the operation failed,
2: the command was used wrongly), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from confmesh.cli.common import (
    admin_command,
    dumps,
    env_option,
    json_option,
    reason_option,
    require_server,
    run,
    service_option,
)
from confmesh.errors import ConfmeshError, InvalidArgument, NotFound
from confmesh.merge import JSONValue
from confmesh.version import __version__
from confmesh.wire import message_json

T = TypeVar("T")
DEFAULT_PORT = 7070
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"


def server_target(text: str) -> str:
    """``HOST[:PORT]`` or ``[IPv6][:PORT]``, with the port defaulting to 7070 (never gRPC's 443).

    Targets with a gRPC scheme (``dns:///``, ``unix:``, ``ipv4:``...) are passed on as written.
    """
    text = text.strip()
    if "://" in text or text.startswith(("unix:", "unix-abstract:", "ipv4:", "ipv6:", "dns:")):
        return text
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise InvalidArgument(f"--server {text!r}: use HOST:PORT or [IPv6]:PORT")
        port = rest[1:] if rest else str(DEFAULT_PORT)
        host = f"[{host}]"
    elif text.count(":") > 1:
        raise InvalidArgument(f"--server {text!r}: write an IPv6 address in brackets, [::1]:7070")
    else:
        host, _, port = text.partition(":")
        port = port if ":" in text else str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"--server {text!r}: use HOST:PORT (the port defaults to {DEFAULT_PORT})")
    return f"{host}:{int(port)}"


def parse_cli_value(raw: str, *, as_string: bool) -> JSONValue:
    """VALUE is JSON (`10`, `true`, `{"a": 1}`, `"text"`); other text is a string.

    Text that looks like JSON (starts with { [ or ") but does not parse is
    refused rather than silently stored as a string.
    """
    if as_string:
        return raw
    try:
        value: JSONValue = json.loads(raw)
        return value
    except ValueError as exc:
        if raw.lstrip()[:1] in ("{", "[", '"'):
            raise InvalidArgument(f"VALUE looks like JSON but does not parse: {exc}") from exc
        return raw


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


@main.command()
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="gRPC listen HOST:PORT.")
@click.option(
    "--etcd",
    "etcd",
    envvar="CONFMESH_ETCD",
    default="",
    help="etcd endpoints HOST:PORT[,HOST:PORT...] (env CONFMESH_ETCD). "
    "Omitted: start an embedded etcd for development.",
)
@click.option("--etcd-cacert", default="", help="Verify etcd's TLS certificate with this CA (PEM).")
@click.option("--etcd-cert", default="", help="Client certificate for etcd (PEM, with --etcd-key).")
@click.option("--etcd-key", default="", help="The etcd client certificate's private key (PEM).")
@click.option("--etcd-user", default="", help="etcd user (etcd auth enabled).")
@click.option(
    "--etcd-password-file",
    default="",
    help="File holding the etcd user's password (or env CONFMESH_ETCD_PASSWORD).",
)
@click.option(
    "--data-dir", default="confmesh-data", show_default=True, help="Embedded etcd's data directory."
)
@click.option("--prefix", default="/confmesh", show_default=True, help="etcd key prefix.")
@click.option("--heartbeat", default=15.0, show_default=True, help="Watch heartbeat interval (s).")
@click.option("--metrics-listen", default="", help="Serve Prometheus /metrics on HOST:PORT.")
@click.option(
    "--http-listen",
    default="",
    help="Serve HTTP on HOST:PORT: the web console at /console/ and OFREP at /environments/ENV/ofrep/v1/… "
    "(TLS as --listen's).",
)
@click.option("--tls-cert", "server_cert", default="", help="Serve TLS with this certificate (PEM).")
@click.option("--tls-key", "server_key", default="", help="The certificate's private key (PEM).")
@click.option(
    "--tls-client-ca", default="", help="Require client certificates signed by this CA (mutual TLS)."
)
@click.option(
    "--policy",
    "policy_file",
    default="",
    help="Access policy (YAML) granting identities their rights; reloaded when it changes. "
    "Omitted: nothing is enforced (development).",
)
@click.option(
    "--audit-retention-days",
    default=90.0,
    show_default=True,
    help="Remove audit records (the history rollback uses) older than this; 0 keeps them all.",
)
@click.option(
    "--etcd-max-request-bytes",
    default=1572864,
    show_default=True,
    help="etcd's --max-request-bytes (its default); writes larger than this are refused up front.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    help="Share --listen with other processes (SO_REUSEPORT). Off: a busy port is an error.",
)
@click.option(
    "--fleet-ttl",
    default=10,
    show_default=True,
    type=click.IntRange(2, 300),
    help="Seconds within which a dead replica's instances leave every replica's status (its lease).",
)
@click.option(
    "--fleet-interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.1, 60),
    help="How often this replica publishes its instance ledger to the fleet view, when it changed.",
)
@click.option(
    "--fleet/--no-fleet",
    default=None,
    help="Publish this replica's instances to the fleet view "
    "[default: with --etcd, not with the embedded etcd].",
)
@click.option(
    "--workers",
    default="1",
    show_default=True,
    help="Server processes sharing --listen (SO_REUSEPORT), one fleet; auto: one per core.",
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def serve(
    listen: str,
    etcd: str,
    etcd_cacert: str,
    etcd_cert: str,
    etcd_key: str,
    etcd_user: str,
    etcd_password_file: str,
    data_dir: str,
    prefix: str,
    heartbeat: float,
    metrics_listen: str,
    http_listen: str,
    server_cert: str,
    server_key: str,
    tls_client_ca: str,
    policy_file: str,
    audit_retention_days: float,
    etcd_max_request_bytes: int,
    reuse_port: bool,
    fleet_ttl: int,
    fleet_interval: float,
    fleet: bool | None,
    workers: str,
    log_level: str,
) -> None:
    """Run a confmesh server (with an embedded etcd unless --etcd is given)."""
    require_server("confmesh serve")
    from confmesh.server.app import ServerSettings, parse_endpoints, run_server
    from confmesh.server.etcd import EtcdCredentials

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    password = os.environ.get("CONFMESH_ETCD_PASSWORD", "")
    if etcd_password_file:
        password = Path(etcd_password_file).read_text().strip()
    if (etcd_cacert or etcd_cert or etcd_key or etcd_user) and not etcd:
        raise InvalidArgument("--etcd-cacert/--etcd-cert/--etcd-key/--etcd-user need --etcd")
    if etcd_user and not password:
        raise InvalidArgument("--etcd-user needs a password: --etcd-password-file or CONFMESH_ETCD_PASSWORD")
    settings = ServerSettings(
        listen=listen,
        etcd_endpoints=parse_endpoints(etcd) if etcd else [],
        etcd_credentials=EtcdCredentials(
            ca=etcd_cacert, cert=etcd_cert, key=etcd_key, user=etcd_user, password=password
        ),
        data_dir=data_dir,
        prefix=prefix,
        heartbeat_interval=heartbeat,
        metrics_listen=metrics_listen,
        http_listen=http_listen,
        tls_cert=server_cert,
        tls_key=server_key,
        tls_client_ca=tls_client_ca,
        policy_file=policy_file,
        audit_retention_days=audit_retention_days,
        etcd_max_request_bytes=etcd_max_request_bytes,
        reuse_port=reuse_port,
        fleet_ttl=fleet_ttl,
        fleet_interval=min(fleet_interval, fleet_ttl / 3),
        fleet=fleet,
    )
    from confmesh.server.workers import fixed_port, run_workers, worker_count

    count = worker_count(workers)
    if count > 1:
        if http_listen:  # every worker serves HTTP on the same port too
            settings.http_listen = click.get_current_context().params["http_listen"] = fixed_port(http_listen)
        if not run(run_workers(settings, count, _worker_args(click.get_current_context()))):
            logging.shutdown()
            os._exit(1)
        return
    if not run(run_server(settings)):
        logging.shutdown()
        os._exit(1)  # shutdown was cut short: do not wait for what still hangs


# What the parent sets for each worker itself; every other serve option is passed on as given.
_PER_WORKER = {"listen", "etcd", "reuse_port", "fleet", "workers", "data_dir", "metrics_listen"}


def _worker_args(ctx: click.Context) -> Callable[[str, str, int], list[str]]:
    """One worker's `serve` arguments: this command's options, with the shared port, the
    parent's etcd and the fleet view on; `--metrics-listen HOST:PORT` becomes PORT + index."""
    passed: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in _PER_WORKER or param.name is None:
            continue
        value = ctx.params[param.name]
        if param.is_flag and not param.secondary_opts:
            passed += [param.opts[0]] if value else []
        elif value not in (None, ""):
            passed += [param.opts[0], str(value)]
    metrics = ctx.params["metrics_listen"]

    def args(listen: str, etcd: str, index: int) -> list[str]:
        out = [*passed, "--listen", listen, "--etcd", etcd, "--reuse-port", "--fleet"]
        if metrics:
            host, _, port = metrics.rpartition(":")
            out += ["--metrics-listen", f"{host}:{int(port) + index}"]
        return out

    return args


@main.command()
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


@main.command()
@click.argument("key")
@env_option
@service_option
@reason_option
@admin_command
async def delete(admin: Any, key: str, env: str | None, service: str | None, reason: str) -> None:
    """Delete KEY and every key below it from one layer."""
    result = await admin.delete(key, env=env, service=service, reason=reason)
    click.echo(f"ok revision {result.revision}: deleted {', '.join(result.changed)}")


@main.command()
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


@main.command()
@click.option("--env", "env", required=True, help="Environment.")
@click.option("--service", required=True, help="Service.")
@click.option("--instance-id", default=None, help="Instance id shown in status (default: cli-watch-...).")
@click.option(
    "--timeout",
    default=0.0,
    show_default=True,
    help="Give up if no snapshot arrives within this many seconds (0: keep trying).",
)
@click.pass_context
def watch(ctx: click.Context, env: str, service: str, instance_id: str | None, timeout: float) -> None:
    """Print one JSON line per applied snapshot (version, hash, config) until interrupted.

    While it is not connected it says so on stderr, with the reason, and keeps retrying.
    """
    from confmesh.client import ClientState, ConfigClient
    from confmesh.client._client import default_instance_id

    server = ctx.obj["server"]

    async def body() -> None:
        client: ConfigClient[Any] = ConfigClient(
            server,
            environment=env,
            service=service,
            instance_id=instance_id or f"cli-watch-{default_instance_id()}",
            tls=ctx.obj["tls"],
            token=ctx.obj["token"],
            startup_timeout=timeout if timeout > 0 else 3600 * 24 * 365,
        )

        def show(_old: Any, _new: Any) -> None:
            click.echo(dumps({"version": client.version, "hash": client.hash, "config": client.raw}))
            sys.stdout.flush()

        async def warn_unknown_names() -> None:  # the client asks once it is connected
            if notice := await client.describe_scope():
                click.echo(f"warning: {notice}", err=True)

        closing = False  # Ctrl-C: the client closes its own stream, which is no lost connection

        def changed(state: ClientState) -> None:
            if closing:
                return
            if state is ClientState.READY:
                click.echo(f"connected to {server}", err=True)
            elif state is ClientState.STALE and not client.connected:
                click.echo(
                    f"connection to {server} lost: {client.last_error or 'closed'}; retrying", err=True
                )

        async def progress() -> None:
            said = ""
            while True:
                await asyncio.sleep(1.0)
                reason = client.last_error or "no answer yet"
                if not client.connected and reason != said:
                    click.echo(f"not connected to {server} yet: {reason}; retrying", err=True)
                    said = reason

        client.on_change(show)
        client.on_state(changed)
        click.echo(f"connecting to {server} for {env}/{service} ...", err=True)
        reporter = asyncio.create_task(progress())
        notice = asyncio.create_task(warn_unknown_names())
        try:
            async with client:
                reporter.cancel()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    closing = True
                    raise
        finally:
            for task in (reporter, notice):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    run(body())  # Ctrl-C: quiet, exit 130 (ConfmeshGroup)


@main.command()
@json_option
@click.option("--local", is_flag=True, help="Only the answering replica's instances, not the whole fleet's.")
@click.option(
    "--scope",
    "scope_name",
    default="",
    metavar="ENV/SERVICE",
    help="One scope: per version, who runs it and why the others rejected it (fleet-wide).",
)
@click.option(
    "--version", "only_version", default=0, type=click.IntRange(0), help="With --scope: one version."
)
@admin_command
async def status(admin: Any, as_json: bool, local: bool, scope_name: str, only_version: int) -> None:
    """Server health and the instance ledger: who runs which version, who rejected what.

    The ledger is fleet-wide: whichever replica answers lists every replica's instances.
    """
    if scope_name:
        await scope_status(admin, scope_name, only_version, as_json)
        return
    if only_version:
        raise InvalidArgument("--version needs --scope")
    resp = await admin.status(local=local)
    if as_json:
        click.echo(dumps(message_json(resp)))
        return
    state = f"STALE ({resp.stale_reason})" if resp.stale else "serving"
    click.echo(
        f"server {resp.server_id} (version {resp.server_version or 'unknown'})  {state}  "
        f"revision {resp.revision}  "
        f"etcd {resp.etcd_endpoints}  prefix {resp.prefix}"
    )
    if len(resp.replicas) > 1:
        click.echo(f"fleet: {len(resp.replicas)} replicas ({', '.join(resp.replicas)})")
    for v in resp.schema_violations:
        click.echo(
            f"SCHEMA VIOLATION {v.environment}/{v.service}: {v.message} (serving its last valid config)"
        )
    if not resp.instances:
        click.echo("no instances connected")
        return
    rows = [("INSTANCE", "SCOPE", "ACKED", "SENT", "STATE", "LAST NACK")]
    for inst in resp.instances:
        nack = ""
        if inst.HasField("last_nack"):
            nack = f"v{inst.last_nack.version}: {inst.last_nack.error}"
        rows.append(
            (
                inst.instance_id,
                f"{inst.environment}/{inst.service}",
                str(inst.acked_version),
                str(inst.sent_version),
                "connected" if inst.connected else "gone",
                nack,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    click.echo("versions (connected instances):")
    for line in version_summary(resp.instances):
        click.echo(f"  {line}")
    unknown: dict[str, tuple[int, str]] = {}
    for inst in resp.instances:
        if inst.scope_notice and inst.connected:
            scope = f"{inst.environment}/{inst.service}"
            unknown[scope] = (unknown.get(scope, (0, ""))[0] + 1, inst.scope_notice)
    if unknown:
        click.echo("UNKNOWN SCOPES (instances running on defaults, most likely a typo in their deployment):")
        for scope, (count, notice) in sorted(unknown.items()):
            click.echo(f"  {scope}: {count} instance(s): {notice}")


async def scope_status(admin: Any, scope_name: str, version: int, as_json: bool) -> None:
    env, _, service = scope_name.partition("/")
    if not env or not service:
        raise InvalidArgument("--scope is ENV/SERVICE, e.g. prod/orders", field="scope")
    resp = await admin.scope_status(env, service, version)
    if as_json:
        click.echo(dumps(message_json(resp)))
        return
    replicas = len(resp.replicas)
    click.echo(
        f"{env}/{service}: {resp.instances} connected instance(s) on {replicas} replica(s); "
        f"base config at version {resp.current_version}"
    )
    if not resp.versions:
        click.echo(f"no instance was sent{f' version {version}' if version else ' any version'}")
    for v in resp.versions:
        click.echo(f"version {v.version}: {v.acked} ACKed, {v.pending} pending, {v.nacked} NACKed")
        for r in v.rejections:
            where = f"at {r.field_path}" if r.field_path else "(no field named)"
            shown = ", ".join(r.example_instances) + (", …" if r.instances > len(r.example_instances) else "")
            click.echo(f"  rejected {where} by {r.instances} instance(s) ({shown}): {r.example_error}")
        if v.rejection_paths_left_out:
            click.echo(f"  (+{v.rejection_paths_left_out} more rejecting field path(s))")
        if v.pending_instances:
            more = ", …" if v.pending > len(v.pending_instances) else ""
            click.echo(f"  pending: {', '.join(v.pending_instances)}{more}")
    if resp.versions_left_out:
        click.echo(f"(+{resp.versions_left_out} older version(s) not shown; --version V shows one)")


def version_summary(instances: Any) -> list[str]:
    """Per scope and version sent: how many instances ACKed it, NACKed it, or have not answered yet."""
    counts: dict[tuple[str, int], list[int]] = {}
    for inst in instances:
        if not inst.connected:
            continue
        row = counts.setdefault((f"{inst.environment}/{inst.service}", inst.sent_version), [0, 0, 0])
        if inst.acked_version == inst.sent_version:
            row[0] += 1
        elif inst.HasField("last_nack") and inst.last_nack.version == inst.sent_version:
            row[1] += 1
        else:
            row[2] += 1
    return [f"{scope}  version {version}: {a} ACKed, {n} NACKed, {p} pending"
            for (scope, version), (a, n, p) in sorted(counts.items())]  # fmt: skip


@main.command()
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


def _register() -> None:
    from confmesh.cli.apply import apply
    from confmesh.cli.changes import change
    from confmesh.cli.diff import diff
    from confmesh.cli.flags import flags
    from confmesh.cli.history import history, revert, rollback
    from confmesh.cli.rollouts import rollout
    from confmesh.cli.schemas import schema
    from confmesh.cli.tokens import token

    main.add_command(flags)
    for command in (apply, history, rollback, revert, diff):
        main.add_command(command)
    main.add_command(schema)
    main.add_command(rollout)
    main.add_command(change)
    main.add_command(token)


_register()
