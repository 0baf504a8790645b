"""A one-key change is validated and compiled as one key, with the whole-snapshot result.

Incremental validation (pydantic's validate_assignment on the changed fields) and flag reuse
(unchanged definitions keep their parsed and compiled form) must give exactly what validating
and compiling everything gives: the same typed config, the same errors, the same flag answers.
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from confmesh import errors
from confmesh.client import ConfigClient
from confmesh.client._validation import _field_keys, validate
from confmesh.delta import CONFIG, FLAGS, Update, apply_updates
from confmesh.digest import format_hash, snapshot_digest
from confmesh.flags import FlagEvaluator, parse_flag_set, reparse_flag_set
from confmesh.v1 import config_pb2
from confmesh.wire import to_struct, updates_to_pb


class Limits(BaseModel):
    rps: int = Field(ge=1)
    burst: int = 10


class Plain(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    limits: Limits
    tags: dict[str, Annotated[int, Field(ge=0)]] = {}


class CrossField(BaseModel):
    low: int
    high: int

    @field_validator("high")
    @classmethod
    def _above_low(cls, v: int, info: ValidationInfo) -> int:
        if "low" in info.data and v < info.data["low"]:
            raise ValueError("high must be >= low")
        return v

    @model_validator(mode="after")
    def _not_equal(self) -> CrossField:
        if self.low == self.high:
            raise ValueError("low and high must differ")
        return self


class Before(BaseModel):
    n: int

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        return data


class Aliased(BaseModel):
    service_name: str = Field(alias="serviceName")
    port: int


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int


class Choices(BaseModel):
    n: int = Field(validation_alias=AliasChoices("n", "count"))


def outcome(schema: type[BaseModel], config: dict[str, Any], **incremental: Any) -> Any:
    try:
        model = validate(schema, config, **incremental)
    except errors.SnapshotRejected as exc:
        return ("rejected", exc.message, [(i.path, i.message) for i in exc.issues])
    return ("ok", type(model), model.model_dump(), model.model_fields_set)


def both(schema: type[BaseModel], before: dict[str, Any], after: dict[str, Any]) -> tuple[Any, Any]:
    previous = validate(schema, before)
    changed = frozenset(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return outcome(schema, after, previous=previous, changed=changed), outcome(schema, after)


@pytest.mark.parametrize(
    ("schema", "before", "after"),
    [
        (Plain, {"name": "a", "limits": {"rps": 5}}, {"name": "b", "limits": {"rps": 5}}),
        (Plain, {"name": "a", "limits": {"rps": 5}}, {"name": "a", "limits": {"rps": 0}}),
        (Plain, {"name": "a", "limits": {"rps": 5}}, {"name": "a", "limits": {"rps": 5}, "tags": {"x": -1}}),
        (Plain, {"name": "a", "limits": {"rps": 5}, "tags": {"x": 1}}, {"name": "a", "limits": {"rps": 5}}),
        (Plain, {"name": "a", "limits": {"rps": 5}}, {"name": "a", "limits": {"rps": 5}, "extra": 1}),
        (CrossField, {"low": 1, "high": 5}, {"low": 1, "high": 3}),
        (CrossField, {"low": 1, "high": 5}, {"low": 1, "high": 0}),
        (CrossField, {"low": 1, "high": 5}, {"low": 5, "high": 5}),
        (Before, {"n": 1}, {"n": 2}),
        (Aliased, {"serviceName": "a", "port": 1}, {"serviceName": "b", "port": 1}),
        (Aliased, {"serviceName": "a", "port": 1}, {"serviceName": 3, "port": 1}),
        (Forbid, {"n": 1}, {"n": 1, "m": 2}),
        (Choices, {"n": 1}, {"count": 2}),
    ],
)
def test_incremental_validation_gives_the_whole_models_result(
    schema: type[BaseModel], before: dict[str, Any], after: dict[str, Any]
) -> None:
    incremental, whole = both(schema, before, after)
    assert incremental == whole


def test_schemas_validated_field_by_field_and_those_validated_whole() -> None:
    assert _field_keys(Plain) == {"name": "name", "limits": "limits", "tags": "tags"}
    assert _field_keys(Aliased) == {"serviceName": "service_name", "port": "port"}
    assert _field_keys(CrossField) is not None  # after-validators run on assignment
    for whole in (Before, Choices):
        assert _field_keys(whole) is None


def test_the_previous_model_is_not_modified() -> None:
    previous = validate(Plain, {"name": "a", "limits": {"rps": 5}})
    new = validate(Plain, {"name": "b", "limits": {"rps": 5}}, previous=previous, changed=frozenset({"name"}))
    assert (previous.name, new.name) == ("a", "b") and new.limits is previous.limits


@settings(max_examples=150, deadline=None)
@given(
    before=st.dictionaries(st.sampled_from(["name", "limits", "tags", "junk"]), st.integers(-2, 3)),
    after=st.dictionaries(st.sampled_from(["name", "limits", "tags", "junk"]), st.integers(-2, 3)),
)
def test_incremental_validation_matches_whole_validation_for_any_change(
    before: dict[str, int], after: dict[str, int]
) -> None:
    def shape(raw: dict[str, int]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": "svc", "limits": {"rps": 1}}
        for key, n in raw.items():
            out[key] = {"name": str(n), "limits": {"rps": n}, "tags": {"t": n}, "junk": n}[key]
        return out

    start, end = shape(before), shape(after)
    try:
        previous = validate(Plain, start)
    except errors.SnapshotRejected:
        return
    changed = frozenset(k for k in start.keys() | end.keys() if start.get(k) != end.get(k))
    assert outcome(Plain, end, previous=previous, changed=changed) == outcome(Plain, end)


def flag(key: str, on: bool = True, prereq: str | None = None) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "key": key, "variants": {"on": True, "off": False}, "default_variant": "on" if on else "off",
        "off_variant": "off",
        "rules": [{"clauses": [{"attribute": "country", "op": "in", "values": ["DE"]}],
                   "serve": {"split": [{"variant": "on", "percent": 50},
                                       {"variant": "off", "percent": 50}]}}],
    }  # fmt: skip
    if prereq:
        definition["prerequisites"] = [{"flag": prereq, "variant": "on"}]
    return definition


def test_reparse_keeps_unchanged_flags_and_equals_a_full_parse() -> None:
    before = {f"f{i}": flag(f"f{i}") for i in range(50)}
    parsed = parse_flag_set(before)
    after = dict(before, f7=flag("f7", on=False), g=flag("g", prereq="f1"))
    del after["f9"]
    again = reparse_flag_set(after, before, parsed)
    assert again == parse_flag_set(after)
    assert again.flags["f1"] is parsed.flags["f1"] and again.flags["f7"] is not parsed.flags["f7"]
    # Equal but not the same object (a whole snapshot after a reconnect): kept too.
    assert (
        reparse_flag_set({k: dict(v) for k, v in after.items()}, after, again).flags["f2"]
        is again.flags["f2"]
    )


@pytest.mark.parametrize(
    "breaks",
    [
        {"f3": {"key": "f3", "variants": {}}},  # the changed flag is invalid
        {"g": flag("g", prereq="nope")},  # a cross check fails
        {"f1": flag("f2")},  # key mismatch
    ],
)
def test_reparse_refuses_exactly_as_a_full_parse(breaks: dict[str, Any]) -> None:
    before = {f"f{i}": flag(f"f{i}") for i in range(5)}
    after = dict(before, **breaks)
    with pytest.raises(errors.InvalidArgument) as whole:
        parse_flag_set(after)
    with pytest.raises(errors.InvalidArgument) as incremental:
        reparse_flag_set(after, before, parse_flag_set(before))
    assert (incremental.value.message, incremental.value.field) == (whole.value.message, whole.value.field)


def test_an_evaluator_keeps_the_compiled_flags_a_change_did_not_touch() -> None:
    before = {f"f{i}": flag(f"f{i}") for i in range(20)} | {"child": flag("child", prereq="f0")}
    first = FlagEvaluator(before, version=3)
    after = dict(before, f0=flag("f0", on=False))
    second = FlagEvaluator(reparse_flag_set(after, before, first.flag_set), version=9, previous=first)
    assert second.compiled("f5") is first.compiled("f5")
    assert second.compiled("f0") is not first.compiled("f0")
    assert (second.flag_version("f5"), second.flag_version("f0"), second.version) == (3, 9, 9)
    fresh = FlagEvaluator(after, version=9)
    for ctx in ({"targetingKey": f"user-{i}", "country": c} for i in range(200) for c in ("DE", "FR")):
        for key in after:
            got, want = second.get_bool_details(key, False, ctx), fresh.get_bool_details(key, False, ctx)
            assert (got.value, got.variant, got.reason, got.rule) == (
                want.value,
                want.variant,
                want.reason,
                want.rule,
            )
    # The child's prerequisite is evaluated against the new f0, though the child was kept.
    assert second.compiled("child") is first.compiled("child")
    assert (
        second.get_bool_details("child", True, {"targetingKey": "u", "country": "FR"}).rule
        == "prerequisite:f0"
    )


def _snapshot(version: int, config: dict[str, Any], flags: dict[str, Any]) -> config_pb2.Snapshot:
    return config_pb2.Snapshot(environment="prod", service="api", version=version,
                               hash=format_hash(snapshot_digest(config, flags)),
                               config=to_struct(config), flags=to_struct(flags))  # fmt: skip


def _delta(
    version: int, base: config_pb2.Snapshot, config: dict[str, Any], flags: dict[str, Any], update: Update
) -> tuple[config_pb2.Snapshot, dict[str, Any], dict[str, Any]]:
    new_config, new_flags, digest = apply_updates(config, flags, snapshot_digest(config, flags), [update])
    snap = config_pb2.Snapshot(environment="prod", service="api", version=version, hash=format_hash(digest))
    snap.delta.base_version, snap.delta.base_hash = base.version, base.hash
    snap.delta.updates.extend(updates_to_pb([update]))
    return snap, new_config, new_flags


async def test_a_client_delta_revalidates_one_field_and_recompiles_one_flag() -> None:
    config = {"name": "a", "limits": {"rps": 5}, "tags": {"x": 1}}
    flags = {f"f{i}": flag(f"f{i}") for i in range(10)}
    client: ConfigClient[Plain] = ConfigClient("127.0.0.1:1", environment="prod", service="api", schema=Plain)
    first = _snapshot(4, config, flags)
    assert (await client._receive(first)).HasField("ack")
    limits, compiled = client.config.limits, client.flags.compiled("f1")

    snap, config, flags = _delta(5, first, config, flags, Update(CONFIG, ("name",), "b"))
    assert (await client._receive(snap)).HasField("ack")
    assert client.config.name == "b" and client.config.limits is limits  # not validated again
    assert client.flags.compiled("f1") is compiled and client.flags.version == 5

    second = config_pb2.Snapshot(version=5, hash=snap.hash)
    snap, config, flags = _delta(6, second, config, flags, Update(FLAGS, ("f3",), flag("f3", on=False)))
    assert (await client._receive(snap)).HasField("ack")
    assert client.flags.compiled("f1") is compiled and client.flags.flag_version("f1") == 4
    assert client.flags.flag_version("f3") == 6
    assert client.flags.get_bool_details("f1", False, {"targetingKey": "u"}).flag_version == 4

    # A change the schema refuses is NACKed with the whole model's field path; 6 keeps running.
    third = config_pb2.Snapshot(version=6, hash=snap.hash)
    snap, _, _ = _delta(7, third, config, flags, Update(CONFIG, ("limits", "rps"), 0))
    reply = await client._receive(snap)
    assert reply.HasField("nack") and [fe.path for fe in reply.nack.field_errors] == ["limits.rps"]
    assert client.version == 6 and client.config.limits.rps == 5
