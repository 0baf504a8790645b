"""`--server` spellings: the port defaults to confmesh's 7070, never gRPC's silent 443."""

from __future__ import annotations

import pytest

from confmesh.cli import server_target
from confmesh.errors import InvalidArgument


@pytest.mark.parametrize(
    ("given", "target"),
    [
        ("127.0.0.1", "127.0.0.1:7070"),
        ("config.internal", "config.internal:7070"),
        ("config.internal:9000", "config.internal:9000"),
        (" 127.0.0.1:07070 ", "127.0.0.1:7070"),
        ("[::1]", "[::1]:7070"),
        ("[::1]:7071", "[::1]:7071"),
        ("dns:///config.internal:7070", "dns:///config.internal:7070"),
        ("unix:/run/confmesh.sock", "unix:/run/confmesh.sock"),
    ],
)
def test_targets(given: str, target: str) -> None:
    assert server_target(given) == target


@pytest.mark.parametrize(
    "bad", ["", ":7070", "host:", "host:http", "host:0", "host:65536", "::1", "[::1", "[]:1"]
)
def test_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="--server"):
        server_target(bad)
