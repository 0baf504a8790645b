"""The ``confmesh`` command: one module per command family, ``main`` the group they join."""

from confmesh.cli.main import hoist_global_options, main
from confmesh.cli.parsing import DEFAULT_SERVER, server_target

__all__ = ["DEFAULT_SERVER", "hoist_global_options", "main", "server_target"]
