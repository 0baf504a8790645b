"""Who is calling: the identities a TLS client certificate proves."""

from __future__ import annotations

from typing import Any, Protocol


class _HasAuthContext(Protocol):
    def auth_context(self) -> Any: ...


def peer_identities(context: _HasAuthContext) -> list[str]:
    """The subject alternative names (else the common name) of the caller's verified certificate.

    Empty for plaintext and for TLS without a client certificate. Works for
    ``grpc`` and ``grpc.aio`` servicer contexts.
    """
    auth = context.auth_context() or {}
    names = auth.get("x509_subject_alternative_name") or auth.get("x509_common_name") or []
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
