import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeScopeRequest(_message.Message):
    __slots__ = ("environment", "service")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class ScopeNotice(_message.Message):
    __slots__ = ("environment_known", "service_known", "message", "closest_environments", "closest_services")
    ENVIRONMENT_KNOWN_FIELD_NUMBER: _ClassVar[int]
    SERVICE_KNOWN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CLOSEST_ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    CLOSEST_SERVICES_FIELD_NUMBER: _ClassVar[int]
    environment_known: bool
    service_known: bool
    message: str
    closest_environments: _containers.RepeatedScalarFieldContainer[str]
    closest_services: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, environment_known: _Optional[bool] = ..., service_known: _Optional[bool] = ..., message: _Optional[str] = ..., closest_environments: _Optional[_Iterable[str]] = ..., closest_services: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("subscribe", "ack", "nack", "usage", "report")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    subscribe: Subscribe
    ack: Ack
    nack: Nack
    usage: FlagUsage
    report: Report
    def __init__(self, subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., usage: _Optional[_Union[FlagUsage, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("version", "hash", "need_full")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    NEED_FULL_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    need_full: bool
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ..., need_full: _Optional[bool] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("environment", "service", "known_version", "known_hash", "instance_id", "labels", "accept_delta", "hash_schemes")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    KNOWN_HASH_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_DELTA_FIELD_NUMBER: _ClassVar[int]
    HASH_SCHEMES_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    known_version: int
    known_hash: str
    instance_id: str
    labels: _containers.ScalarMap[str, str]
    accept_delta: bool
    hash_schemes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., known_version: _Optional[int] = ..., known_hash: _Optional[str] = ..., instance_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., accept_delta: _Optional[bool] = ..., hash_schemes: _Optional[_Iterable[str]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version", "hash")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "hash", "running_version", "error", "field_errors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FIELD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    running_version: int
    error: str
    field_errors: _containers.RepeatedCompositeFieldContainer[FieldError]
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ..., running_version: _Optional[int] = ..., error: _Optional[str] = ..., field_errors: _Optional[_Iterable[_Union[FieldError, _Mapping]]] = ...) -> None: ...

class FlagUsage(_message.Message):
    __slots__ = ("counts", "window_start", "window_end")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[FlagUsageCount]
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    def __init__(self, counts: _Optional[_Iterable[_Union[FlagUsageCount, _Mapping]]] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FlagUsageCount(_message.Message):
    __slots__ = ("flag", "variant", "count")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    flag: str
    variant: str
    count: int
    def __init__(self, flag: _Optional[str] = ..., variant: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class FieldError(_message.Message):
    __slots__ = ("path", "message")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    path: str
    message: str
    def __init__(self, path: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("snapshot", "heartbeat")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    heartbeat: Heartbeat
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("server_revision", "stale")
    SERVER_REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    server_revision: int
    stale: bool
    def __init__(self, server_revision: _Optional[int] = ..., stale: _Optional[bool] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("environment", "service", "version", "hash", "config", "stale", "resolved_at", "flags", "trace_parent", "delta")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    version: int
    hash: str
    config: _struct_pb2.Struct
    stale: bool
    resolved_at: _timestamp_pb2.Timestamp
    flags: _struct_pb2.Struct
    trace_parent: str
    delta: Delta
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., version: _Optional[int] = ..., hash: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., stale: _Optional[bool] = ..., resolved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., flags: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., trace_parent: _Optional[str] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("base_version", "base_hash", "updates")
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_HASH_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    base_version: int
    base_hash: str
    updates: _containers.RepeatedCompositeFieldContainer[PathUpdate]
    def __init__(self, base_version: _Optional[int] = ..., base_hash: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[PathUpdate, _Mapping]]] = ...) -> None: ...

class PathUpdate(_message.Message):
    __slots__ = ("section", "path", "value")
    class Section(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SECTION_UNSPECIFIED: _ClassVar[PathUpdate.Section]
        CONFIG: _ClassVar[PathUpdate.Section]
        FLAGS: _ClassVar[PathUpdate.Section]
    SECTION_UNSPECIFIED: PathUpdate.Section
    CONFIG: PathUpdate.Section
    FLAGS: PathUpdate.Section
    SECTION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    section: PathUpdate.Section
    path: _containers.RepeatedScalarFieldContainer[str]
    value: _struct_pb2.Value
    def __init__(self, section: _Optional[_Union[PathUpdate.Section, str]] = ..., path: _Optional[_Iterable[str]] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("environment", "service", "hash_schemes")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    HASH_SCHEMES_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    hash_schemes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., hash_schemes: _Optional[_Iterable[str]] = ...) -> None: ...
