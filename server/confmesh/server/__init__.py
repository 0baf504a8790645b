"""The confmesh server: an etcd list-watch cache served over gRPC.

Use ``confmesh serve`` from the command line, or embed it::

    from confmesh.server import ConfmeshServer, ServerSettings

    server = ConfmeshServer(ServerSettings(listen="127.0.0.1:0"))
    await server.start()
    ...
    await server.stop()

The names below load on first use, so importing one of the pure modules (``confmesh.server.store``,
``confmesh.server.resolver``) does not bring in gRPC, etcd3aio and the rest of the process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confmesh.server.app import ConfmeshServer, ServerSettings, run_server
    from confmesh.server.embedded_etcd import EmbeddedEtcd, find_etcd_binary

_WHERE = {
    "ConfmeshServer": "confmesh.server.app",
    "ServerSettings": "confmesh.server.app",
    "run_server": "confmesh.server.app",
    "EmbeddedEtcd": "confmesh.server.embedded_etcd",
    "find_etcd_binary": "confmesh.server.embedded_etcd",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'confmesh.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["ConfmeshServer", "EmbeddedEtcd", "ServerSettings", "find_etcd_binary", "run_server"]
