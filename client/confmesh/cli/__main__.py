"""``python -m confmesh.cli``: the same command as ``confmesh``."""

from confmesh.cli.main import main

main()
