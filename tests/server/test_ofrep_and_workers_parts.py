"""The pure parts of the OFREP endpoint and of `serve --workers`, beside their real-server tests
(tests/flags/test_ofrep*.py, tests/fleet/test_workers.py): request bodies are parsed with OFREP's
error codes, evaluators are rebuilt only when an environment's flags change, and worker arguments
are checked before any process starts."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confmesh import errors
from confmesh.errors import StartupError
from confmesh.keys import KeyLayout, Layer
from confmesh.server.kv import KeyValue
from confmesh.server.ofrep import (
    MAX_CONTEXT_DEPTH,
    OfrepEvaluators,
    etag_of,
    evaluate,
    nests_within,
    parse_context,
)
from confmesh.server.record_kinds import server_store
from confmesh.server.workers import fixed_port, worker_count

LAYOUT = KeyLayout("/t")
FLAG = {"variants": {"on": True, "off": False}, "default_variant": "on"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "PARSE_ERROR"),
        (b"[1]", "PARSE_ERROR"),
        (b'{"context": 3}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 7}}', "INVALID_CONTEXT"),
        (b'{"context": {"x": NaN}}', "PARSE_ERROR"),
        (b'{"context": {"a": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}}",
         "INVALID_CONTEXT"),
    ],
)  # fmt: skip
def test_unusable_bodies_get_ofreps_error_codes(body: bytes, code: str) -> None:
    with pytest.raises(errors.InvalidArgument) as refused:
        parse_context(body)
    assert refused.value.code == code


def test_usable_bodies_give_their_context() -> None:
    assert parse_context(b"") == {} and parse_context(b'{"context": null}') == {}
    assert parse_context(b'{"context": {"targetingKey": "u1", "plan": "pro"}}') == {
        "targetingKey": "u1",
        "plan": "pro",
    }
    assert etag_of(b"x") == etag_of(b"x") != etag_of(b"y") and etag_of(b"x").startswith('"')


@given(st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=2), max_leaves=20))
def test_nesting_is_measured_exactly(value: object) -> None:
    def depth(v: object) -> int:
        return 1 + max(map(depth, v)) if isinstance(v, list) and v else 0

    assert nests_within(value, depth(value)) and not nests_within(value, depth(value) - 1)
    assert MAX_CONTEXT_DEPTH >= 8


def test_an_environments_evaluator_is_rebuilt_only_when_its_flags_change() -> None:
    store = server_store(LAYOUT)
    key = LAYOUT.config_key(Layer.flags("prod"), "dark")
    store.replace([KeyValue(key, json.dumps(FLAG).encode(), 5)], 5)
    ofrep = OfrepEvaluators(store)
    revision, raw = ofrep.inputs("prod")
    first = ofrep.evaluator("prod", revision, raw)
    assert evaluate(first, "dark", {}).value is True
    assert ofrep.inputs("prod") == (revision, None)  # cached: no copy of the flags
    assert ofrep.evaluator("prod", *ofrep.inputs("prod")) is first
    edited = ofrep.with_flag("prod", revision, None, "dark", {**FLAG, "default_variant": "off"})
    assert evaluate(edited, "dark", {}).value is False
    assert evaluate(ofrep.evaluator("prod", revision, None), "dark", {}).value is True  # the edit is not kept
    assert evaluate(first, "missing", {}).error_code is not None

    store.replace([KeyValue(key, json.dumps({**FLAG, "variants": "bad"}).encode(), 6)], 6)
    for _ in range(2):  # a broken set is refused the same way, and parsed once per revision
        with pytest.raises(errors.InvalidArgument):
            ofrep.evaluator("prod", *ofrep.inputs("prod"))


def test_worker_arguments_are_checked_before_anything_starts() -> None:
    assert worker_count("3") == 3 and worker_count("auto") >= 1
    for bad in ("0", "65", "-1", "two", ""):
        with pytest.raises(StartupError):
            worker_count(bad)
    assert fixed_port("127.0.0.1:7000") == "127.0.0.1:7000"
    host, _, port = fixed_port("127.0.0.1:0").rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    with socket.socket() as s:  # the port it chose is free to bind
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(port)))
