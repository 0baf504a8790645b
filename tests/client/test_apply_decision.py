"""The client's apply decision as the pure functions it is: no client, no loop, no server."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from confmesh.client._apply import (
    Accepted,
    AppliedSnapshot,
    Confirm,
    Content,
    NeedFull,
    Reject,
    accept,
    examine,
)
from confmesh.digest import snapshot_digest, snapshot_hash
from confmesh.errors import FieldIssue
from confmesh.flags import FlagEvaluator, UsageCounter
from confmesh.v1 import config_pb2
from confmesh.wire import to_struct

leaves = st.one_of(st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=8), st.none())
configs = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), leaves, max_size=6)


class Settings(BaseModel):
    n: int


def full(version: int, config: dict[str, Any], hash_: str | None = None) -> config_pb2.Snapshot:
    hash_ = hash_ or snapshot_hash(config, {})
    return config_pb2.Snapshot(version=version, hash=hash_, config=to_struct(config))


def running(version: int, config: dict[str, Any]) -> AppliedSnapshot:
    digest, hash_ = snapshot_digest(config, {}), snapshot_hash(config, {})
    return AppliedSnapshot(version, hash_, config, config, FlagEvaluator({}), 0.0, {}, digest)


@given(configs, st.integers(1, 10**6))
def test_a_whole_snapshot_is_its_content_or_a_corruption(config: dict[str, Any], version: int) -> None:
    seen = examine(None, full(version, config))
    assert isinstance(seen, Content) and seen.raw == config
    assert isinstance(examine(None, full(version, config, "leafsum256:" + "f" * 64)), Reject)


@given(configs, st.integers(2, 10**6))
def test_what_we_run_is_confirmed_and_older_versions_refused(config: dict[str, Any], version: int) -> None:
    current = running(version, config)
    assert isinstance(examine(current, full(version, config)), Confirm)
    older = examine(current, full(version - 1, {**config, "changed": True}))
    assert isinstance(older, Reject) and "older than the running version" in older.message


def test_a_delta_from_another_base_needs_the_whole_snapshot() -> None:
    snap = config_pb2.Snapshot(version=9, hash="leafsum256:x", delta=config_pb2.Delta(base_version=7))
    assert isinstance(examine(running(8, {"n": 1}), snap), NeedFull)
    assert isinstance(examine(None, snap), NeedFull)


def test_accept_validates_and_reports_field_paths() -> None:
    def verdict(config: dict[str, Any], issues: list[FieldIssue] | None = None) -> Reject | Accepted:
        content = Content(config, {}, snapshot_digest(config, {}))
        return accept(content, config, issues or [], schema=Settings, current=None, version=3,
                      environment="prod", usage=UsageCounter())  # fmt: skip

    ok = verdict({"n": 1})
    assert isinstance(ok, Accepted) and ok.config == Settings(n=1) and ok.flags.version == 3
    bad = verdict({"n": "many"})
    assert isinstance(bad, Reject) and [i.path for i in bad.issues] == ["n"]
    secret = verdict({"n": 1}, [FieldIssue("db.password", "cannot be read")])
    assert isinstance(secret, Reject) and secret.issues[0].path == "db.password"
