"""`confmesh serve`: run a server (the server install), one process or `--workers N`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import click

from confmesh.cli.common import require_server, run
from confmesh.errors import InvalidArgument


@click.command()
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
@click.option(
    "--consul-root",
    default="config",
    show_default=True,
    help="With --http-listen, the Consul KV API maps ROOT/<env>/global/… and ROOT/<env>/<service>/… "
    "onto layers (docs/migration.md).",
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
    consul_root: str,
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
        consul_root=consul_root,
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
