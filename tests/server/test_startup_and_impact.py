"""Pure pieces of start-up (data directory, ports) and of a change's impact (diff, blast radius),
alone; tests/cli/test_day_one.py and tests/server/test_change_requests.py run them in real servers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from confmesh import errors
from confmesh.changes import ChangeSpec
from confmesh.keys import Layer, Scope
from confmesh.server.change_impact import changed_leaves, diff_rows, impact, known_scopes
from confmesh.server.schemas import ServiceSchema
from confmesh.server.startup import check_port_free, prepare_data_dir

ORDERS = Scope("prod", "orders")


def test_a_data_directory_is_locked_by_one_server_and_bad_ones_are_named(tmp_path: Path) -> None:
    lock = prepare_data_dir(tmp_path / "d")
    try:
        with pytest.raises(errors.StartupError, match="in use by another confmesh process"):
            prepare_data_dir(tmp_path / "d")
    finally:
        lock.release()
    prepare_data_dir(tmp_path / "d").release()  # released: free again
    (tmp_path / "f").write_text("")
    with pytest.raises(errors.StartupError, match="is a file"):
        prepare_data_dir(tmp_path / "f")


def test_a_busy_port_is_refused_before_anything_starts() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(errors.StartupError, match="in use"):
            check_port_free(f"127.0.0.1:{port}", "cannot listen on")
    check_port_free("127.0.0.1:0", "cannot listen on")  # port 0 is always free


def test_the_diff_shows_old_and_new_values_redacted_as_the_audit_log_does() -> None:
    layer = Layer.svc("prod", "orders")
    schema = ServiceSchema(ORDERS, {"type": "object", "properties": {
        "db": {"type": "object", "properties": {"password": {"type": "string", "writeOnly": True}}},
    }})  # fmt: skip
    current = {layer: {"db.password": "old-pw", "db.pool": 5, "db.pool.x": 1}}  # pragma: allowlist secret
    changes = [ChangeSpec(layer, "db.password", "new-pw"), ChangeSpec(layer, "db.pool", delete=True)]
    rows = diff_rows(current, changes, {ORDERS: schema})
    assert [(r.key, r.op) for r in rows] == [
        ("db.password", "put"),
        ("db.pool", "delete"),
        ("db.pool.x", "delete"),
    ]
    assert "old-pw" not in repr(rows) and "new-pw" not in repr(rows)
    assert changed_leaves({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 1}) == ["a.c", "d"]
    assert known_scopes([layer, Layer.env("prod")], [Scope("staging", "x")]) == {
        ORDERS,
        Scope("staging", "x"),
    }


async def test_the_blast_radius_counts_only_what_the_reader_may_see() -> None:
    defaults, orders = Layer.defaults(), Layer.svc("prod", "orders")
    entries = {defaults: {"pool": 1}, orders: {}}
    found = await impact(
        lambda layer: entries.get(layer, {}), [ChangeSpec(defaults, "pool", 2)],
        scopes={ORDERS, Scope("prod", "payments"), Scope("staging", "orders")}, schemas={},
        instances={ORDERS: 3}, visible=lambda scope: scope.environment == "prod",
    )  # fmt: skip
    assert {(s.scope, tuple(s.changed_keys), s.instances) for s in found.scopes} == {
        (ORDERS, ("pool",), 3), (Scope("prod", "payments"), ("pool",), 0),
    }  # fmt: skip
    assert found.not_shown == 1  # staging/orders is affected, and only counted
