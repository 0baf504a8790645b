"""Calls AdminService RPCs in process, as the console's caller: the same checks, writes and audit.

The console never writes on its own. Each request becomes the RPC the CLI would
make, with the caller's bearer token in its metadata, so identification, the
grant, approval rules, validation and the audit entry are exactly the API's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


class LocalContext:
    """The part of ``grpc.aio.ServicerContext`` that confmesh's servicers use."""

    def __init__(self, token: str, peer: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._peer = peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # certificate identities reach the console only through a proxy's token

    def peer(self) -> str:
        return self._peer

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: Any, details: str = "") -> None:
        """A no-op: the servicers' error wrapper re-raises the ConfmeshError right after."""


async def call(method: Callable[[Q, Any], Awaitable[R]], request: Q, token: str, peer: str) -> R:
    """Run one servicer method; its error comes back as the ConfmeshError it raised."""
    return await method(request, LocalContext(token, peer))
