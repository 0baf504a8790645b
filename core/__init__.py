"""confmesh: a gRPC config and feature-flag distribution mesh backed by etcd.

The package is split in three rooms:

* ``confmesh`` (this package): the wire stubs (``confmesh.v1``), the pure rules
  both sides share (key layout, layer merging, hashing), errors and the CLI.
* ``confmesh.server``: the etcd-backed gRPC server.
* ``confmesh.client``: the client SDK.
"""

__version__ = "0.1.0"
