"""Conversions between confmesh's Python values and the confmesh.v1 messages."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from google.protobuf import struct_pb2

if TYPE_CHECKING:
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.message import Message

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.delta import CONFIG, FLAGS, MISSING, Update
from confmesh.flags.model import keyed
from confmesh.keys import Layer, LayerKind, check_name
from confmesh.merge import JSONValue, normalize
from confmesh.v1 import admin_pb2, config_pb2


def to_value(value: JSONValue) -> struct_pb2.Value:
    msg = struct_pb2.Value()
    if value is None:
        msg.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        msg.bool_value = value
    elif isinstance(value, (int, float)):
        msg.number_value = float(value)
    elif isinstance(value, str):
        msg.string_value = value
    elif isinstance(value, Mapping):
        msg.struct_value.CopyFrom(to_struct(value))
    elif isinstance(value, (list, tuple)):
        msg.list_value.values.extend(to_value(v) for v in value)
    else:
        raise errors.InvalidArgument(f"{type(value).__name__} is not a JSON value")
    return msg


def to_struct(value: Mapping[str, JSONValue]) -> struct_pb2.Struct:
    msg = struct_pb2.Struct()
    for k, v in value.items():
        msg.fields[k].CopyFrom(to_value(v))
    return msg


def from_value(msg: struct_pb2.Value) -> JSONValue:
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise errors.InvalidArgument("value is not set", code="invalid_value", field="value")
    if kind == "null_value":
        return None
    if kind == "bool_value":
        return msg.bool_value
    if kind == "number_value":
        return normalize(msg.number_value)
    if kind == "string_value":
        return msg.string_value
    if kind == "struct_value":
        return from_struct(msg.struct_value)
    return [from_value(v) for v in msg.list_value.values]


def from_struct(msg: struct_pb2.Struct) -> dict[str, JSONValue]:
    return {k: from_value(v) for k, v in msg.fields.items()}


_SECTION_PB = {CONFIG: config_pb2.PathUpdate.CONFIG, FLAGS: config_pb2.PathUpdate.FLAGS}
_SECTION = {number: name for name, number in _SECTION_PB.items()}


def updates_to_pb(updates: list[Update]) -> list[config_pb2.PathUpdate]:
    return [
        config_pb2.PathUpdate(section=_SECTION_PB[u.section], path=u.path)
        if u.value is MISSING
        else config_pb2.PathUpdate(section=_SECTION_PB[u.section], path=u.path, value=to_value(u.value))
        for u in updates
    ]


def updates_from_pb(msgs: Iterable[config_pb2.PathUpdate]) -> list[Update]:
    updates = []
    for msg in msgs:
        section = _SECTION.get(msg.section)
        if section is None or not msg.path:
            raise errors.InvalidArgument("a delta update needs a section and a non-empty path")
        value = from_value(msg.value) if msg.HasField("value") else MISSING
        updates.append(Update(section, tuple(msg.path), value))
    return updates


def layer_to_pb(layer: Layer) -> admin_pb2.Layer:
    return admin_pb2.Layer(
        kind=int(layer.kind),  # type: ignore[arg-type]
        environment=layer.environment,
        service=layer.service,
    )


def layer_from_pb(msg: admin_pb2.Layer) -> Layer:
    kind = int(msg.kind)
    if kind == LayerKind.DEFAULTS:
        if msg.environment or msg.service:
            raise errors.InvalidArgument("the defaults layer takes no environment or service", field="layer")
        return Layer.defaults()
    if kind == LayerKind.ENVIRONMENT:
        if msg.service:
            raise errors.InvalidArgument("an environment layer takes no service", field="layer")
        return Layer(LayerKind.ENVIRONMENT, check_name(msg.environment, "environment"))
    if kind == LayerKind.SERVICE:
        return Layer.svc(msg.environment, msg.service)
    if kind == LayerKind.FLAGS:
        return Layer.flags(msg.environment)
    raise errors.InvalidArgument("layer kind is not set", field="layer.kind")


def change_to_pb(change: ChangeSpec) -> admin_pb2.Change:
    """One put (its value normalized) or delete, as Apply and ProposeChange take it."""
    msg = admin_pb2.Change(layer=layer_to_pb(change.layer), key=change.key)
    if change.delete:
        msg.delete = True
    else:
        msg.value.CopyFrom(to_value(normalize(change.value, path=change.key, depth=change.key.count("."))))
    return msg


def changes_from_pb(msgs: Iterable[admin_pb2.Change]) -> list[ChangeSpec]:
    """Apply's and ProposeChange's changes; a flag definition comes out carrying its key."""
    changes = []
    for i, msg in enumerate(msgs):
        op = msg.WhichOneof("op")
        if op is None:
            raise errors.InvalidArgument(f"changes[{i}]: set either value or delete", field=f"changes[{i}]")
        layer = layer_from_pb(msg.layer)
        if op == "delete":
            changes.append(ChangeSpec(layer, msg.key, delete=True))
        elif layer.kind is LayerKind.FLAGS:
            changes.append(ChangeSpec(layer, msg.key, keyed(msg.key, from_value(msg.value))))
        else:
            changes.append(ChangeSpec(layer, msg.key, from_value(msg.value)))
    return changes


def message_json(msg: Message) -> dict[str, Any]:
    """A reply message as JSON that scripts can trust.

    Unlike ``MessageToDict``: 64-bit integers stay numbers (not strings), the JSON values a
    ``google.protobuf.Value`` carries come back as written (``10``, not ``10.0``), timestamps are
    RFC 3339 strings, and every field is present (an unset message field is ``null``).
    """
    fields = cast("list[FieldDescriptor]", msg.DESCRIPTOR.fields)
    return {field.name: _field_json(msg, field) for field in fields}


def _field_json(msg: Message, field: FieldDescriptor) -> Any:
    value = getattr(msg, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {str(k): _scalar_json(v, value_field) for k, v in value.items()}
    if field.is_repeated:
        return [_scalar_json(v, field) for v in value]
    if field.has_presence and field.message_type is not None and not msg.HasField(field.name):
        return None
    return _scalar_json(value, field)


def _scalar_json(value: Any, field: FieldDescriptor) -> Any:
    if field.message_type is None:
        if field.enum_type is not None:
            named = field.enum_type.values_by_number.get(value)
            return named.name if named is not None else value
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        return value
    name = field.message_type.full_name
    if name == "google.protobuf.Value":
        return from_value(value) if value.WhichOneof("kind") else None
    if name == "google.protobuf.Struct":
        return from_struct(value)
    if name == "google.protobuf.Timestamp":
        return value.ToJsonString()
    return message_json(value)
