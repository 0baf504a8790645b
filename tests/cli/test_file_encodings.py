"""Files that are not UTF-8 are refused in one line by every command that reads one, as a user runs it."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confmesh.errors import InvalidArgument
from confmesh.server import ConfmeshServer
from confmesh.textfiles import decode_text
from tests.cli.test_cli import cli

FLAGS = json.dumps(
    {"flags": {"beta": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}}}
)
APPLY = 'env/prod:\n  db.host: "caf\u00e9"\n'

BAD_FILES = {
    "utf16.json": ("\ufeff" + FLAGS).encode("utf-16-le"),
    "utf16be.yaml": APPLY.encode("utf-16"),
    "latin1.yaml": APPLY.encode("latin-1"),
    "flags.json.gz": gzip.compress(FLAGS.encode()),
}
EXPECTED = {
    "utf16.json": "the file is UTF-16 text",
    "utf16be.yaml": "the file is UTF-16 text",
    "latin1.yaml": "byte 0xe9 on line 2 cannot be decoded",
    "flags.json.gz": "gzip-compressed; decompress it first",
}


def commands(path: str) -> list[list[str]]:
    return [
        ["apply", path],
        ["apply", path, "--dry-run"],
        ["flags", "import", path, "--env", "prod"],
        ["flags", "eval", "beta", "--flags-file", path],
        ["flags", "set", "beta", "--env", "prod", "--file", path],
        ["diff", "--env", "prod", "--env", "staging", "--expect", path],
        ["schema", "push", "--env", "prod", "--service", "orders", "--file", path],
        ["change", "propose", "-f", path],
    ]


@pytest.mark.parametrize("name", sorted(BAD_FILES))
async def test_every_file_reading_command_refuses_it_in_one_line(
    server: ConfmeshServer, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    for argv in commands(str(path)):
        code, _, err = await cli(server.address, *argv)
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1, (argv, err)
        assert "Traceback" not in err and EXPECTED[name] in lines[0] and name in lines[0], (argv, err)


async def test_stdin_that_is_not_utf8_is_refused_too(server: ConfmeshServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "confmesh.cli", "apply", "-", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "CONFMESH_SERVER": server.address},
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(BAD_FILES["latin1.yaml"]), 60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "stdin: not UTF-8" in lines[0], err


def test_a_utf8_byte_order_mark_is_accepted() -> None:
    assert decode_text(b"\xef\xbb\xbfa: 1\n", "f") == "a: 1\n"


@given(st.text())
def test_utf8_text_always_decodes(text: str) -> None:
    try:
        raw = text.encode()
    except UnicodeEncodeError:
        return
    assert decode_text(raw, "f") == text.removeprefix("\ufeff")


@given(st.binary())
def test_any_bytes_decode_or_are_refused_in_one_line(raw: bytes) -> None:
    try:
        decode_text(raw, "f")
    except InvalidArgument as exc:
        message = exc.message
    else:
        return
    assert message.startswith("f: not UTF-8") and "\n" not in message
