from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MirrorRequest(_message.Message):
    __slots__ = ("hello", "fleet")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    hello: MirrorHello
    fleet: FleetReport
    def __init__(self, hello: _Optional[_Union[MirrorHello, _Mapping]] = ..., fleet: _Optional[_Union[FleetReport, _Mapping]] = ...) -> None: ...

class MirrorHello(_message.Message):
    __slots__ = ("relay_id", "known_revision", "scopes")
    RELAY_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_REVISION_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    relay_id: str
    known_revision: int
    scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, relay_id: _Optional[str] = ..., known_revision: _Optional[int] = ..., scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class MirrorKey(_message.Message):
    __slots__ = ("key", "value", "mod_revision", "deleted")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    mod_revision: int
    deleted: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., mod_revision: _Optional[int] = ..., deleted: _Optional[bool] = ...) -> None: ...

class LayerRevision(_message.Message):
    __slots__ = ("layer", "revision")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    layer: str
    revision: int
    def __init__(self, layer: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class MirrorResponse(_message.Message):
    __slots__ = ("list", "events", "progress")
    LIST_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    list: MirrorList
    events: MirrorEvents
    progress: MirrorProgress
    def __init__(self, list: _Optional[_Union[MirrorList, _Mapping]] = ..., events: _Optional[_Union[MirrorEvents, _Mapping]] = ..., progress: _Optional[_Union[MirrorProgress, _Mapping]] = ...) -> None: ...

class MirrorList(_message.Message):
    __slots__ = ("revision", "keys", "layer_revisions", "last", "prefix", "carried")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LAYER_REVISIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    CARRIED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    keys: _containers.RepeatedCompositeFieldContainer[MirrorKey]
    layer_revisions: _containers.RepeatedCompositeFieldContainer[LayerRevision]
    last: bool
    prefix: str
    carried: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[int] = ..., keys: _Optional[_Iterable[_Union[MirrorKey, _Mapping]]] = ..., layer_revisions: _Optional[_Iterable[_Union[LayerRevision, _Mapping]]] = ..., last: _Optional[bool] = ..., prefix: _Optional[str] = ..., carried: _Optional[_Iterable[str]] = ...) -> None: ...

class MirrorEvents(_message.Message):
    __slots__ = ("revision", "events")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    events: _containers.RepeatedCompositeFieldContainer[MirrorKey]
    def __init__(self, revision: _Optional[int] = ..., events: _Optional[_Iterable[_Union[MirrorKey, _Mapping]]] = ...) -> None: ...

class MirrorProgress(_message.Message):
    __slots__ = ("revision", "stale", "stale_reason")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    STALE_REASON_FIELD_NUMBER: _ClassVar[int]
    revision: int
    stale: bool
    stale_reason: str
    def __init__(self, revision: _Optional[int] = ..., stale: _Optional[bool] = ..., stale_reason: _Optional[str] = ...) -> None: ...

class FleetChunk(_message.Message):
    __slots__ = ("path", "summary")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    path: str
    summary: bytes
    def __init__(self, path: _Optional[str] = ..., summary: _Optional[bytes] = ...) -> None: ...

class FleetReport(_message.Message):
    __slots__ = ("chunks", "relays")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RELAYS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[FleetChunk]
    relays: _containers.RepeatedCompositeFieldContainer[RelayState]
    def __init__(self, chunks: _Optional[_Iterable[_Union[FleetChunk, _Mapping]]] = ..., relays: _Optional[_Iterable[_Union[RelayState, _Mapping]]] = ...) -> None: ...

class RelayState(_message.Message):
    __slots__ = ("path", "stale_reason", "lost_at", "revision")
    PATH_FIELD_NUMBER: _ClassVar[int]
    STALE_REASON_FIELD_NUMBER: _ClassVar[int]
    LOST_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    path: str
    stale_reason: str
    lost_at: float
    revision: int
    def __init__(self, path: _Optional[str] = ..., stale_reason: _Optional[str] = ..., lost_at: _Optional[float] = ..., revision: _Optional[int] = ...) -> None: ...
