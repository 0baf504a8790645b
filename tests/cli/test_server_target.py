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


@pytest.mark.parametrize(
    ("typed", "parsed"),
    [
        (["put", "k", "v", "--server", "h:1"], ["--server", "h:1", "put", "k", "v"]),
        (["put", "k", "v", "--server=h:1", "--token", "t"],
         ["--server=h:1", "--token", "t", "put", "k", "v"]),
        (["--actor", "me", "get", "k", "--env", "e", "--service", "s", "--server", "h:1"],
         ["--actor", "me", "--server", "h:1", "get", "k", "--env", "e", "--service", "s"]),
        (["flags", "eval", "f", "--env", "e", "--server", "h:1"],
         ["--server", "h:1", "flags", "eval", "f", "--env", "e"]),
        # the command's own options stay its own
        (["serve", "--tls-cert", "c.pem", "--tls-key", "k.pem"],
         ["serve", "--tls-cert", "c.pem", "--tls-key", "k.pem"]),
        (["audit", "--actor", "alice", "--server", "h:1"], ["--server", "h:1", "audit", "--actor", "alice"]),
        (["put", "k", "--", "--server"], ["put", "k", "--", "--server"]),
        (["--version"], ["--version"]),
        (["nosuch", "--server", "h:1"], ["nosuch", "--server", "h:1"]),
    ],
)  # fmt: skip
def test_global_options_after_the_command_are_hoisted(typed: list[str], parsed: list[str]) -> None:
    import click

    from confmesh.cli import hoist_global_options, main

    assert isinstance(main, click.Group)
    assert hoist_global_options(main, click.Context(main), typed) == parsed
