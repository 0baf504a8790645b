"""The release this code is, as `confmesh --version`, GetStatus and confmesh_build_info report it.

``confmesh`` is a namespace package spread over three rooms (``core/``, ``server/``,
``client/``), so it has no ``__init__`` to carry a version; the one place it is written is
pyproject.toml, and this reads it from the installed distribution.
"""

from importlib.metadata import version

__all__ = ["__version__"]

__version__ = version("confmesh")
