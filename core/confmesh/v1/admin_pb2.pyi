import datetime

from confmesh.v1 import config_pb2 as _config_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LayerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYER_KIND_UNSPECIFIED: _ClassVar[LayerKind]
    LAYER_KIND_DEFAULTS: _ClassVar[LayerKind]
    LAYER_KIND_ENVIRONMENT: _ClassVar[LayerKind]
    LAYER_KIND_SERVICE: _ClassVar[LayerKind]
    LAYER_KIND_FLAGS: _ClassVar[LayerKind]

class ChangeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_STATE_UNSPECIFIED: _ClassVar[ChangeState]
    CHANGE_STATE_OPEN: _ClassVar[ChangeState]
    CHANGE_STATE_APPROVED: _ClassVar[ChangeState]
    CHANGE_STATE_REJECTED: _ClassVar[ChangeState]
    CHANGE_STATE_APPLIED: _ClassVar[ChangeState]
    CHANGE_STATE_CANCELLED: _ClassVar[ChangeState]
    CHANGE_STATE_FAILED: _ClassVar[ChangeState]
LAYER_KIND_UNSPECIFIED: LayerKind
LAYER_KIND_DEFAULTS: LayerKind
LAYER_KIND_ENVIRONMENT: LayerKind
LAYER_KIND_SERVICE: LayerKind
LAYER_KIND_FLAGS: LayerKind
CHANGE_STATE_UNSPECIFIED: ChangeState
CHANGE_STATE_OPEN: ChangeState
CHANGE_STATE_APPROVED: ChangeState
CHANGE_STATE_REJECTED: ChangeState
CHANGE_STATE_APPLIED: ChangeState
CHANGE_STATE_CANCELLED: ChangeState
CHANGE_STATE_FAILED: ChangeState

class Layer(_message.Message):
    __slots__ = ("kind", "environment", "service")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    kind: LayerKind
    environment: str
    service: str
    def __init__(self, kind: _Optional[_Union[LayerKind, str]] = ..., environment: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class ChangeContext(_message.Message):
    __slots__ = ("actor", "reason")
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    actor: str
    reason: str
    def __init__(self, actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("layer", "key", "value", "context")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    key: str
    value: _struct_pb2.Value
    context: ChangeContext
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ..., key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("layer", "key", "context")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    key: str
    context: ChangeContext
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ..., key: _Optional[str] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("layer", "key", "value", "delete")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    key: str
    value: _struct_pb2.Value
    delete: bool
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ..., key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., delete: _Optional[bool] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("changes", "context")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    context: ChangeContext
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("revision", "changed", "unchanged")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    changed: _containers.RepeatedScalarFieldContainer[str]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[int] = ..., changed: _Optional[_Iterable[str]] = ..., unchanged: _Optional[_Iterable[str]] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("environment", "service", "key")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    key: str
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class LayerValue(_message.Message):
    __slots__ = ("layer", "source_key", "value", "mod_revision")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    source_key: str
    value: _struct_pb2.Value
    mod_revision: int
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ..., source_key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., mod_revision: _Optional[int] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("key", "layers", "resolved")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    key: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerValue]
    resolved: _struct_pb2.Value
    def __init__(self, key: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerValue, _Mapping]]] = ..., resolved: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("environment", "service", "version", "hash", "config", "found", "value", "explanations", "notice")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    version: int
    hash: str
    config: _struct_pb2.Struct
    found: bool
    value: _struct_pb2.Value
    explanations: _containers.RepeatedCompositeFieldContainer[Explanation]
    notice: _config_pb2.ScopeNotice
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., version: _Optional[int] = ..., hash: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., found: _Optional[bool] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., explanations: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ..., notice: _Optional[_Union[_config_pb2.ScopeNotice, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("page_token", "local")
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    page_token: str
    local: bool
    def __init__(self, page_token: _Optional[str] = ..., local: _Optional[bool] = ...) -> None: ...

class NackRecord(_message.Message):
    __slots__ = ("version", "hash", "error", "field_paths", "at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FIELD_PATHS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    hash: str
    error: str
    field_paths: _containers.RepeatedScalarFieldContainer[str]
    at: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., hash: _Optional[str] = ..., error: _Optional[str] = ..., field_paths: _Optional[_Iterable[str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("instance_id", "environment", "service", "peer", "connected", "acked_version", "acked_hash", "sent_version", "last_nack", "connected_at", "last_seen", "labels", "server_id", "scope_notice", "relay_path")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_HASH_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_NOTICE_FIELD_NUMBER: _ClassVar[int]
    RELAY_PATH_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    environment: str
    service: str
    peer: str
    connected: bool
    acked_version: int
    acked_hash: str
    sent_version: int
    last_nack: NackRecord
    connected_at: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    server_id: str
    scope_notice: str
    relay_path: str
    def __init__(self, instance_id: _Optional[str] = ..., environment: _Optional[str] = ..., service: _Optional[str] = ..., peer: _Optional[str] = ..., connected: _Optional[bool] = ..., acked_version: _Optional[int] = ..., acked_hash: _Optional[str] = ..., sent_version: _Optional[int] = ..., last_nack: _Optional[_Union[NackRecord, _Mapping]] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., server_id: _Optional[str] = ..., scope_notice: _Optional[str] = ..., relay_path: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("server_id", "revision", "stale", "etcd_endpoints", "prefix", "instances", "stale_reason", "schema_violations", "next_page_token", "server_version", "replicas", "relays")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    ETCD_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    STALE_REASON_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RELAYS_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    revision: int
    stale: bool
    etcd_endpoints: str
    prefix: str
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    stale_reason: str
    schema_violations: _containers.RepeatedCompositeFieldContainer[SchemaViolation]
    next_page_token: str
    server_version: str
    replicas: _containers.RepeatedScalarFieldContainer[str]
    relays: _containers.RepeatedCompositeFieldContainer[RelayInfo]
    def __init__(self, server_id: _Optional[str] = ..., revision: _Optional[int] = ..., stale: _Optional[bool] = ..., etcd_endpoints: _Optional[str] = ..., prefix: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., stale_reason: _Optional[str] = ..., schema_violations: _Optional[_Iterable[_Union[SchemaViolation, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., server_version: _Optional[str] = ..., replicas: _Optional[_Iterable[str]] = ..., relays: _Optional[_Iterable[_Union[RelayInfo, _Mapping]]] = ...) -> None: ...

class RelayInfo(_message.Message):
    __slots__ = ("path", "connected", "stale_reason", "lost_at", "revision", "reported_at")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    STALE_REASON_FIELD_NUMBER: _ClassVar[int]
    LOST_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    path: str
    connected: bool
    stale_reason: str
    lost_at: _timestamp_pb2.Timestamp
    revision: int
    reported_at: _timestamp_pb2.Timestamp
    def __init__(self, path: _Optional[str] = ..., connected: _Optional[bool] = ..., stale_reason: _Optional[str] = ..., lost_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetScopeStatusRequest(_message.Message):
    __slots__ = ("environment", "service", "version")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    version: int
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class FieldRejection(_message.Message):
    __slots__ = ("field_path", "instances", "example_error", "example_instances")
    FIELD_PATH_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_ERROR_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    field_path: str
    instances: int
    example_error: str
    example_instances: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, field_path: _Optional[str] = ..., instances: _Optional[int] = ..., example_error: _Optional[str] = ..., example_instances: _Optional[_Iterable[str]] = ...) -> None: ...

class ScopeVersionStatus(_message.Message):
    __slots__ = ("version", "acked", "pending", "nacked", "rejections", "acked_instances", "pending_instances", "nacked_instances", "rejection_paths_left_out")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    NACKED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    ACKED_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PENDING_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NACKED_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REJECTION_PATHS_LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    version: int
    acked: int
    pending: int
    nacked: int
    rejections: _containers.RepeatedCompositeFieldContainer[FieldRejection]
    acked_instances: _containers.RepeatedScalarFieldContainer[str]
    pending_instances: _containers.RepeatedScalarFieldContainer[str]
    nacked_instances: _containers.RepeatedScalarFieldContainer[str]
    rejection_paths_left_out: int
    def __init__(self, version: _Optional[int] = ..., acked: _Optional[int] = ..., pending: _Optional[int] = ..., nacked: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[FieldRejection, _Mapping]]] = ..., acked_instances: _Optional[_Iterable[str]] = ..., pending_instances: _Optional[_Iterable[str]] = ..., nacked_instances: _Optional[_Iterable[str]] = ..., rejection_paths_left_out: _Optional[int] = ...) -> None: ...

class GetScopeStatusResponse(_message.Message):
    __slots__ = ("environment", "service", "current_version", "versions", "instances", "replicas", "versions_left_out")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    current_version: int
    versions: _containers.RepeatedCompositeFieldContainer[ScopeVersionStatus]
    instances: int
    replicas: _containers.RepeatedScalarFieldContainer[str]
    versions_left_out: int
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., current_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ScopeVersionStatus, _Mapping]]] = ..., instances: _Optional[int] = ..., replicas: _Optional[_Iterable[str]] = ..., versions_left_out: _Optional[int] = ...) -> None: ...

class SchemaViolation(_message.Message):
    __slots__ = ("environment", "service", "message")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    message: str
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("code", "field", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    field: str
    message: str
    def __init__(self, code: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PutFlagsRequest(_message.Message):
    __slots__ = ("environment", "flags", "replace_all", "context")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_ALL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    flags: _struct_pb2.Struct
    replace_all: bool
    context: ChangeContext
    def __init__(self, environment: _Optional[str] = ..., flags: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., replace_all: _Optional[bool] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class DeleteFlagRequest(_message.Message):
    __slots__ = ("environment", "key", "context")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    key: str
    context: ChangeContext
    def __init__(self, environment: _Optional[str] = ..., key: _Optional[str] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class SetFlagEnabledRequest(_message.Message):
    __slots__ = ("environments", "key", "enabled", "context")
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    environments: _containers.RepeatedScalarFieldContainer[str]
    key: str
    enabled: bool
    context: ChangeContext
    def __init__(self, environments: _Optional[_Iterable[str]] = ..., key: _Optional[str] = ..., enabled: _Optional[bool] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class GetFlagsRequest(_message.Message):
    __slots__ = ("environment",)
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    def __init__(self, environment: _Optional[str] = ...) -> None: ...

class GetFlagsResponse(_message.Message):
    __slots__ = ("environment", "version", "flags")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    environment: str
    version: int
    flags: _struct_pb2.Struct
    def __init__(self, environment: _Optional[str] = ..., version: _Optional[int] = ..., flags: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetFlagUsageRequest(_message.Message):
    __slots__ = ("environment", "window_seconds", "page_token", "flag")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    environment: str
    window_seconds: int
    page_token: str
    flag: str
    def __init__(self, environment: _Optional[str] = ..., window_seconds: _Optional[int] = ..., page_token: _Optional[str] = ..., flag: _Optional[str] = ...) -> None: ...

class UsageBucket(_message.Message):
    __slots__ = ("start", "variants")
    class VariantsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    START_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    variants: _containers.ScalarMap[str, int]
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., variants: _Optional[_Mapping[str, int]] = ...) -> None: ...

class FlagUsageSummary(_message.Message):
    __slots__ = ("environment", "flag", "variants", "first_seen", "last_seen")
    class VariantsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    environment: str
    flag: str
    variants: _containers.ScalarMap[str, int]
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, environment: _Optional[str] = ..., flag: _Optional[str] = ..., variants: _Optional[_Mapping[str, int]] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetFlagUsageResponse(_message.Message):
    __slots__ = ("flags", "window_seconds", "flag_age_p95_seconds", "next_page_token", "series")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FLAG_AGE_P95_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[FlagUsageSummary]
    window_seconds: int
    flag_age_p95_seconds: float
    next_page_token: str
    series: _containers.RepeatedCompositeFieldContainer[UsageBucket]
    def __init__(self, flags: _Optional[_Iterable[_Union[FlagUsageSummary, _Mapping]]] = ..., window_seconds: _Optional[int] = ..., flag_age_p95_seconds: _Optional[float] = ..., next_page_token: _Optional[str] = ..., series: _Optional[_Iterable[_Union[UsageBucket, _Mapping]]] = ...) -> None: ...

class AuditChange(_message.Message):
    __slots__ = ("layer", "key", "op", "old_value", "new_value")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    key: str
    op: str
    old_value: _struct_pb2.Value
    new_value: _struct_pb2.Value
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ..., key: _Optional[str] = ..., op: _Optional[str] = ..., old_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., new_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("id", "revision", "at", "actor", "reason", "source", "changes", "trace_parent")
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    revision: int
    at: _timestamp_pb2.Timestamp
    actor: str
    reason: str
    source: str
    changes: _containers.RepeatedCompositeFieldContainer[AuditChange]
    trace_parent: str
    def __init__(self, id: _Optional[str] = ..., revision: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., source: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[AuditChange, _Mapping]]] = ..., trace_parent: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("environment", "service", "key_prefix", "actor", "limit")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    key_prefix: str
    actor: str
    limit: int
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., key_prefix: _Optional[str] = ..., actor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("role", "environment", "service", "scopes", "flags")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    role: str
    environment: str
    service: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    flags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, role: _Optional[str] = ..., environment: _Optional[str] = ..., service: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., flags: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "grant", "context")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    grant: Grant
    context: ChangeContext
    def __init__(self, name: _Optional[str] = ..., grant: _Optional[_Union[Grant, _Mapping]] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "id", "revision")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    token: str
    id: str
    revision: int
    def __init__(self, token: _Optional[str] = ..., id: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("id", "name", "grant", "created_at", "created_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    grant: Grant
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., grant: _Optional[_Union[Grant, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name", "context")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    context: ChangeContext
    def __init__(self, name: _Optional[str] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class PutSchemaRequest(_message.Message):
    __slots__ = ("environment", "service", "schema", "context")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    schema: _struct_pb2.Struct
    context: ChangeContext
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class GetSchemaRequest(_message.Message):
    __slots__ = ("environment", "service")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class GetSchemaResponse(_message.Message):
    __slots__ = ("schema", "revision")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    schema: _struct_pb2.Struct
    revision: int
    def __init__(self, schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class DeleteSchemaRequest(_message.Message):
    __slots__ = ("environment", "service", "context")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    context: ChangeContext
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("layer", "to_version", "context")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    to_version: int
    context: ChangeContext
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ..., to_version: _Optional[int] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class RevertRequest(_message.Message):
    __slots__ = ("environment", "since_seconds", "context")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    since_seconds: int
    context: ChangeContext
    def __init__(self, environment: _Optional[str] = ..., since_seconds: _Optional[int] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class GetLayerRequest(_message.Message):
    __slots__ = ("layer",)
    LAYER_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ...) -> None: ...

class GetLayerResponse(_message.Message):
    __slots__ = ("entries", "revision")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    entries: _struct_pb2.Struct
    revision: int
    def __init__(self, entries: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("name", "environment", "service", "set", "delete", "percent", "max_nack_rate", "context")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MAX_NACK_RATE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    environment: str
    service: str
    set: _struct_pb2.Struct
    delete: _containers.RepeatedScalarFieldContainer[str]
    percent: float
    max_nack_rate: float
    context: ChangeContext
    def __init__(self, name: _Optional[str] = ..., environment: _Optional[str] = ..., service: _Optional[str] = ..., set: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., delete: _Optional[_Iterable[str]] = ..., percent: _Optional[float] = ..., max_nack_rate: _Optional[float] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class UpdateRolloutRequest(_message.Message):
    __slots__ = ("environment", "service", "percent", "context")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    percent: float
    context: ChangeContext
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., percent: _Optional[float] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("environment", "service", "context")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    context: ChangeContext
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RolloutInfo(_message.Message):
    __slots__ = ("name", "environment", "service", "percent", "state", "max_nack_rate", "version", "canary_instances", "canary_acked", "canary_nacked", "abort_reason", "set", "delete")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MAX_NACK_RATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CANARY_ACKED_FIELD_NUMBER: _ClassVar[int]
    CANARY_NACKED_FIELD_NUMBER: _ClassVar[int]
    ABORT_REASON_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    name: str
    environment: str
    service: str
    percent: float
    state: str
    max_nack_rate: float
    version: int
    canary_instances: int
    canary_acked: int
    canary_nacked: int
    abort_reason: str
    set: _struct_pb2.Struct
    delete: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., environment: _Optional[str] = ..., service: _Optional[str] = ..., percent: _Optional[float] = ..., state: _Optional[str] = ..., max_nack_rate: _Optional[float] = ..., version: _Optional[int] = ..., canary_instances: _Optional[int] = ..., canary_acked: _Optional[int] = ..., canary_nacked: _Optional[int] = ..., abort_reason: _Optional[str] = ..., set: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., delete: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[RolloutInfo]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[RolloutInfo, _Mapping]]] = ...) -> None: ...

class ProposeChangeRequest(_message.Message):
    __slots__ = ("title", "changes", "rollout", "apply_at", "context", "dry_run")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    APPLY_AT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    title: str
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    rollout: StartRolloutRequest
    apply_at: _timestamp_pb2.Timestamp
    context: ChangeContext
    dry_run: bool
    def __init__(self, title: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., rollout: _Optional[_Union[StartRolloutRequest, _Mapping]] = ..., apply_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ChangeRef(_message.Message):
    __slots__ = ("id", "context")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    context: ChangeContext
    def __init__(self, id: _Optional[str] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class ReviewChangeRequest(_message.Message):
    __slots__ = ("id", "approve", "context")
    ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    approve: bool
    context: ChangeContext
    def __init__(self, id: _Optional[str] = ..., approve: _Optional[bool] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class ScheduleChangeRequest(_message.Message):
    __slots__ = ("id", "apply_at", "context")
    ID_FIELD_NUMBER: _ClassVar[int]
    APPLY_AT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    apply_at: _timestamp_pb2.Timestamp
    context: ChangeContext
    def __init__(self, id: _Optional[str] = ..., apply_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context: _Optional[_Union[ChangeContext, _Mapping]] = ...) -> None: ...

class ListChangesRequest(_message.Message):
    __slots__ = ("states", "limit")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[ChangeState]
    limit: int
    def __init__(self, states: _Optional[_Iterable[_Union[ChangeState, str]]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListChangesResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[ChangeRequest]
    def __init__(self, changes: _Optional[_Iterable[_Union[ChangeRequest, _Mapping]]] = ...) -> None: ...

class ChangeReview(_message.Message):
    __slots__ = ("identity", "approve", "comment", "at")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    identity: str
    approve: bool
    comment: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, identity: _Optional[str] = ..., approve: _Optional[bool] = ..., comment: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ChangeDiff(_message.Message):
    __slots__ = ("layer", "key", "op", "old", "new", "existed")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    OLD_FIELD_NUMBER: _ClassVar[int]
    NEW_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    key: str
    op: str
    old: _struct_pb2.Value
    new: _struct_pb2.Value
    existed: bool
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ..., key: _Optional[str] = ..., op: _Optional[str] = ..., old: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., new: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., existed: _Optional[bool] = ...) -> None: ...

class ScopeImpact(_message.Message):
    __slots__ = ("environment", "service", "changed_keys", "has_schema", "schema_accepts", "schema_error", "schema_field", "instances")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_KEYS_FIELD_NUMBER: _ClassVar[int]
    HAS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_ACCEPTS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_ERROR_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    environment: str
    service: str
    changed_keys: _containers.RepeatedScalarFieldContainer[str]
    has_schema: bool
    schema_accepts: bool
    schema_error: str
    schema_field: str
    instances: int
    def __init__(self, environment: _Optional[str] = ..., service: _Optional[str] = ..., changed_keys: _Optional[_Iterable[str]] = ..., has_schema: _Optional[bool] = ..., schema_accepts: _Optional[bool] = ..., schema_error: _Optional[str] = ..., schema_field: _Optional[str] = ..., instances: _Optional[int] = ...) -> None: ...

class FlagImpact(_message.Message):
    __slots__ = ("environment", "changed_flags", "valid", "error", "instances")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FLAGS_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    environment: str
    changed_flags: _containers.RepeatedScalarFieldContainer[str]
    valid: bool
    error: str
    instances: int
    def __init__(self, environment: _Optional[str] = ..., changed_flags: _Optional[_Iterable[str]] = ..., valid: _Optional[bool] = ..., error: _Optional[str] = ..., instances: _Optional[int] = ...) -> None: ...

class ChangeRequest(_message.Message):
    __slots__ = ("id", "title", "author", "reason", "state", "created_at", "changes", "rollout", "layers", "base_revision", "stale", "stale_layers", "approvals_required", "approvals", "reviews", "apply_at", "applied_revision", "applied_at", "applied_by", "error", "diff", "scopes", "flags", "scopes_not_shown")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    STALE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    REVIEWS_FIELD_NUMBER: _ClassVar[int]
    APPLY_AT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_NOT_SHOWN_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    author: str
    reason: str
    state: ChangeState
    created_at: _timestamp_pb2.Timestamp
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    rollout: StartRolloutRequest
    layers: _containers.RepeatedScalarFieldContainer[str]
    base_revision: int
    stale: bool
    stale_layers: _containers.RepeatedScalarFieldContainer[str]
    approvals_required: int
    approvals: int
    reviews: _containers.RepeatedCompositeFieldContainer[ChangeReview]
    apply_at: _timestamp_pb2.Timestamp
    applied_revision: int
    applied_at: _timestamp_pb2.Timestamp
    applied_by: str
    error: str
    diff: _containers.RepeatedCompositeFieldContainer[ChangeDiff]
    scopes: _containers.RepeatedCompositeFieldContainer[ScopeImpact]
    flags: _containers.RepeatedCompositeFieldContainer[FlagImpact]
    scopes_not_shown: int
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., author: _Optional[str] = ..., reason: _Optional[str] = ..., state: _Optional[_Union[ChangeState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., rollout: _Optional[_Union[StartRolloutRequest, _Mapping]] = ..., layers: _Optional[_Iterable[str]] = ..., base_revision: _Optional[int] = ..., stale: _Optional[bool] = ..., stale_layers: _Optional[_Iterable[str]] = ..., approvals_required: _Optional[int] = ..., approvals: _Optional[int] = ..., reviews: _Optional[_Iterable[_Union[ChangeReview, _Mapping]]] = ..., apply_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., applied_revision: _Optional[int] = ..., applied_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., applied_by: _Optional[str] = ..., error: _Optional[str] = ..., diff: _Optional[_Iterable[_Union[ChangeDiff, _Mapping]]] = ..., scopes: _Optional[_Iterable[_Union[ScopeImpact, _Mapping]]] = ..., flags: _Optional[_Iterable[_Union[FlagImpact, _Mapping]]] = ..., scopes_not_shown: _Optional[int] = ...) -> None: ...
