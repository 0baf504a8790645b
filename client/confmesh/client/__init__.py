"""The confmesh client SDK.

``ConfigClient`` (asyncio) is the real client; ``SyncConfigClient`` runs it on
a background thread for threaded apps. ``AdminClient`` writes and reads
configuration through a server's AdminService.
"""

from confmesh.client._admin import AdminClient, Explained, LayerValue, WriteResult
from confmesh.client._apply import AppliedSnapshot
from confmesh.client._client import ClientState, ConfigClient, Rejection, default_instance_id
from confmesh.client._sync import SyncConfigClient
from confmesh.errors import (
    ConfmeshError,
    FailedPrecondition,
    FieldIssue,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SnapshotRejected,
    StartupError,
    Unauthenticated,
    Unavailable,
)
from confmesh.tls import TLSConfig

__all__ = [
    "AdminClient",
    "AppliedSnapshot",
    "ClientState",
    "ConfigClient",
    "ConfmeshError",
    "Explained",
    "FailedPrecondition",
    "FieldIssue",
    "InvalidArgument",
    "LayerValue",
    "NotFound",
    "PermissionDenied",
    "Rejection",
    "ResourceExhausted",
    "SnapshotRejected",
    "StartupError",
    "SyncConfigClient",
    "TLSConfig",
    "Unauthenticated",
    "Unavailable",
    "WriteResult",
    "default_instance_id",
]
