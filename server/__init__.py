"""The confmesh server: an etcd list-watch cache served over gRPC.

Use ``confmesh serve`` from the command line, or embed it::

    from confmesh.server import ConfmeshServer, ServerSettings

    server = ConfmeshServer(ServerSettings(listen="127.0.0.1:0"))
    await server.start()
    ...
    await server.stop()
"""

from confmesh.server.app import ConfmeshServer, ServerSettings, run_server
from confmesh.server.embedded_etcd import EmbeddedEtcd, find_etcd_binary

__all__ = ["ConfmeshServer", "EmbeddedEtcd", "ServerSettings", "find_etcd_binary", "run_server"]
