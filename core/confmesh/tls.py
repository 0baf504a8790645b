"""TLS settings shared by the client SDK and the CLI, and the one place channels are built."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from confmesh.errors import InvalidArgument


def read_pem(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class TLSConfig:
    """Trust `ca` (PEM path; None: the system roots); present `cert`/`key` for mutual TLS."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    # Override the name checked against the server certificate (e.g. when dialing an IP).
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise InvalidArgument("a client certificate needs both cert and key")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca, "CA certificate") if self.ca else None,
            private_key=read_pem(self.key, "client key") if self.key else None,
            certificate_chain=read_pem(self.cert, "client certificate") if self.cert else None,
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def aio_channel(
    target: str,
    tls: TLSConfig | None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    options = list(options or [])
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options + tls.options())


def sync_channel(target: str, tls: TLSConfig | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.credentials(), options=tls.options())


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """Call metadata for a bearer token; None (no token) falls back to env CONFMESH_TOKEN."""
    token = token if token is not None else os.environ.get("CONFMESH_TOKEN", "")
    return (("authorization", f"Bearer {token}"),) if token else None
