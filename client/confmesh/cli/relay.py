"""`confmesh relay`: carry config from an upstream confmesh to the instances of a region (the
server install)."""

from __future__ import annotations

import logging
import os

import click

from confmesh.cli.common import require_server, run


@click.command()
@click.option(
    "--upstream", required=True, help="The upstream HOST:PORT: a `confmesh serve`, or another relay."
)
@click.option("--listen", default="127.0.0.1:7171", show_default=True, help="gRPC listen HOST:PORT.")
@click.option(
    "--data-dir",
    default="confmesh-relay-data",
    show_default=True,
    help="Where the relay keeps its last snapshot (served, stale, when restarted without its upstream).",
)
@click.option("--relay-id", default="", help="This relay's name in fleet paths (default: the host name).")
@click.option(
    "--scopes",
    multiple=True,
    help="Scope patterns to carry, as the policy file writes them (staging, 'staging/*'); repeatable. "
    "Omitted: all the relay's identity may read.",
)
@click.option("--prefix", default="/confmesh", show_default=True, help="The upstream's etcd key prefix.")
@click.option(
    "--token", envvar="CONFMESH_TOKEN", default="", help="Bearer token for the upstream (env CONFMESH_TOKEN)."
)
@click.option("--upstream-ca", default="", help="Verify the upstream's TLS certificate with this CA (PEM).")
@click.option(
    "--upstream-cert", default="", help="Client certificate for the upstream (PEM, with --upstream-key)."
)
@click.option("--upstream-key", default="", help="The upstream client certificate's private key (PEM).")
@click.option("--tls-cert", "server_cert", default="", help="Serve TLS with this certificate (PEM).")
@click.option("--tls-key", "server_key", default="", help="The certificate's private key (PEM).")
@click.option(
    "--tls-client-ca", default="", help="Require client certificates signed by this CA (mutual TLS)."
)
@click.option(
    "--policy",
    "policy_file",
    default="",
    help="Access policy (YAML) for the instances below; omitted: nothing is enforced here (development).",
)
@click.option("--heartbeat", default=15.0, show_default=True, help="Watch heartbeat interval (s).")
@click.option("--metrics-listen", default="", help="Serve Prometheus /metrics on HOST:PORT.")
@click.option("--http-listen", default="", help="Serve OFREP on HOST:PORT (TLS as --listen's).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def relay(
    upstream: str,
    listen: str,
    data_dir: str,
    relay_id: str,
    scopes: tuple[str, ...],
    prefix: str,
    token: str,
    upstream_ca: str,
    upstream_cert: str,
    upstream_key: str,
    server_cert: str,
    server_key: str,
    tls_client_ca: str,
    policy_file: str,
    heartbeat: float,
    metrics_listen: str,
    http_listen: str,
    log_level: str,
) -> None:
    """Serve the Watch API below an upstream confmesh, from one stream to it (no etcd)."""
    require_server("confmesh relay")
    from confmesh.server.relay_app import RelaySettings, run_relay
    from confmesh.tls import TLSConfig

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    upstream_tls = None
    if upstream_ca or upstream_cert or upstream_key:
        upstream_tls = TLSConfig(ca=upstream_ca or None, cert=upstream_cert or None, key=upstream_key or None)
    patterns = [p.strip() for raw in scopes for p in raw.split(",") if p.strip()]
    settings = RelaySettings(
        upstream=upstream, listen=listen, data_dir=data_dir, relay_id=relay_id, scopes=patterns,
        prefix=prefix, upstream_tls=upstream_tls, token=token, tls_cert=server_cert, tls_key=server_key,
        tls_client_ca=tls_client_ca, policy_file=policy_file, heartbeat_interval=heartbeat,
        metrics_listen=metrics_listen,
        http_listen=http_listen,
    )  # fmt: skip
    if not run(run_relay(settings)):
        logging.shutdown()
        os._exit(1)
