"""Every shell example in README.md and examples/README.md, run as a reader runs it.

Each document is one story: its `confmesh serve` starts a real server on a fresh embedded etcd,
and every later command runs against it, in order, through a shell. A ``# ...`` line under a
command is the output the document promises; the command's real output must match it, with
whitespace runs equal and ``…`` standing for text that differs between machines (ids, hashes,
addresses). Commands that only read are retried for a few seconds, since what they show (an
instance's NACK) arrives asynchronously. Version numbers are compared exactly: a fresh etcd
gives the same ones on every run.

Markers, an HTML comment on the line before a fenced block:

* ``<!-- doc-test: skip: REASON -->``: the block is not run (it needs certificates, an external
  etcd...). Every skipped block states why.
* ``<!-- doc-test: file NAME -->``: the block's text is written to NAME (a change set, a model).
* ``<!-- doc-test: background -->``: a Python block runs as a process for the rest of the story.

Files a story names without showing them (a legacy flag file, a directory to apply) are in
``tests/docs/files/``. Documented ports (7070, 8000, 50051) are replaced by free ones.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from confmesh.server.embedded_etcd import free_port

pytestmark = [pytest.mark.slow, pytest.mark.etcd]
ROOT = Path(__file__).resolve().parents[2]
FILES = Path(__file__).resolve().parent / "files"
DOCUMENTS = ("README.md", "examples/README.md")
MARKER = re.compile(r"<!--\s*doc-test:\s*(skip|file|background)\b:?\s*(.*?)\s*-->")
BACKGROUND = ("confmesh serve", "confmesh watch", "python examples/")
READ_ONLY = ("confmesh status", "confmesh get", "confmesh rollout status", "curl -s localhost")
NOT_RUN = ("pip install ",)  # CI's set-up has installed confmesh already


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)
    line: int = 0


@dataclass
class Block:
    lang: str
    line: int
    body: str
    marker: tuple[str, str] | None

    def commands(self) -> list[Command]:
        out: list[Command] = []
        pending = ""
        for number, raw in enumerate(self.body.splitlines(), self.line + 1):
            if not pending and raw.startswith("#"):
                if out:
                    out[-1].expected.append(raw[2:] if raw.startswith("# ") else raw[1:])
                continue
            if not pending and not raw.strip():
                continue
            if raw.rstrip().endswith("\\"):
                pending += (raw.strip() if pending else raw.rstrip())[:-1].rstrip() + " "
                continue
            text = pending + (raw.strip() if pending and not _open_quote(pending) else raw)
            if _open_quote(text):
                pending = text + "\n"  # a quoted argument goes on over the next line
                continue
            out.append(Command(text, line=number))
            pending = ""
        return out


def _open_quote(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return True
    return False


def blocks(text: str) -> Iterator[Block]:
    lines = text.splitlines()
    marker: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        found = MARKER.search(lines[i])
        if found:
            marker = (found[1], found[2])
        elif lines[i].startswith("```") and len(lines[i]) > 3:
            start = i
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            yield Block(lines[start][3:].strip(), start + 1, "\n".join(body) + "\n", marker)
            marker = None
        elif lines[i].strip():
            marker = None
        i += 1


def matches(expected: list[str], actual: str) -> bool:
    """Whitespace in the promise matches any whitespace (or none, as in compact JSON)."""

    def literal(part: str) -> str:
        return r"\s*".join(re.escape(word) for word in part.split())

    pattern = ".*?".join(literal(part) for part in "\n".join(expected).split("…"))
    return re.fullmatch(rf"\s*{pattern}\s*", actual, re.DOTALL) is not None


class Story:
    """One document's commands, run in order in one working directory."""

    def __init__(self, doc: str, workdir: Path) -> None:
        self.doc, self.cwd = doc, workdir
        self.ports = {7070: free_port(), 8000: free_port(), 50051: free_port()}
        self.background: list[subprocess.Popen[str]] = []
        bin_dir = workdir / ".bin"
        bin_dir.mkdir()
        for name, module in (("confmesh", "-m confmesh.cli"), ("python", "")):
            shim = bin_dir / name
            shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {module} "$@"\n')
            shim.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "CONFMESH_SERVER": f"127.0.0.1:{self.ports[7070]}",
            "CONFMESH_ACTOR": "doc-test",
            "PYTHONUNBUFFERED": "1",
            "DB_PASSWORD": "s3cret",  # pragma: allowlist secret
            "CONFMESH_INSTANCE_ID": "orders-7d9f-x2k4",  # as the README's walkthrough says
        }
        self.env.pop("CONFMESH_TOKEN", None)

    def where(self, line: int) -> str:
        return f"{self.doc}:{line}"

    def localise(self, text: str) -> str:
        for documented, port in self.ports.items():
            text = re.sub(rf"\b(127\.0\.0\.1|localhost):{documented}\b", rf"\g<1>:{port}", text)
        return text

    def rewrite(self, command: str) -> str:
        command = self.localise(command)
        addr = {name: f"127.0.0.1:{self.ports[port]}" for name, port in
                (("confmesh", 7070), ("orders", 8000), ("inventory", 50051))}  # fmt: skip
        if command.startswith("confmesh serve") and "--listen" not in command:
            command = command.replace("confmesh serve", f"confmesh serve --listen {addr['confmesh']}", 1)
        confmesh, inventory, orders = addr["confmesh"], addr["inventory"], addr["orders"]
        extra = {
            "python examples/inventory/service.py": f"--confmesh {confmesh} --listen {inventory}",
            "python examples/orders/app.py": f"--confmesh {confmesh} --inventory {inventory} "
            f"--listen {orders}",
        }
        for start, args in extra.items():
            if command.startswith(start):
                command = command.replace(start, f"{start} {args}", 1)
        return command

    def run(self, block: Block) -> None:
        kind, arg = block.marker or ("", "")
        if kind == "skip":
            assert arg, f"{self.where(block.line)}: a skipped block says why"
            return
        if kind == "file":
            target = self.cwd / arg
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.localise(block.body))
            return
        if block.lang == "python":
            if kind == "background":
                script = self.cwd / f"block_{block.line}.py"
                script.write_text(self.localise(block.body))
                self.start([sys.executable, str(script)], block.line, wait_for="")  # its first print
            return
        if block.lang != "bash":
            return
        for command in block.commands():
            if command.text.startswith(NOT_RUN):
                continue
            self.one(command)

    def start(self, argv: list[str], line: int, wait_for: str | None) -> subprocess.Popen[str]:
        log = (self.cwd / f"background-{line}.log").open("w")
        proc = subprocess.Popen(
            argv, cwd=self.cwd, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )  # fmt: skip
        self.background.append(proc)
        if wait_for is not None:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith(wait_for), f"{self.where(line)}: {first!r}"
        return proc

    def one(self, command: Command) -> None:
        text = self.rewrite(command.text)
        shown = f"{self.where(command.line)}: {command.text}"
        if command.text.startswith(BACKGROUND):
            wait_for = "confmesh serving on" if command.text.startswith("confmesh serve") else None
            proc = self.start(["bash", "-c", f"exec {text}"], command.line, wait_for)
            if command.expected:
                assert proc.stdout is not None
                got = "".join(proc.stdout.readline() for _ in command.expected)
                assert matches(command.expected, got), self.broken(shown, command, got)
            elif command.text.startswith("python examples/"):
                self.wait_listening(command)
            return
        deadline = time.monotonic() + (10 if command.text.startswith(READ_ONLY) else 0)
        while True:
            done = subprocess.run(
                ["bash", "-c", text], cwd=self.cwd, env=self.env, text=True, capture_output=True, timeout=60
            )
            got = done.stdout if done.returncode == 0 else done.stdout + done.stderr
            if not command.expected:
                assert done.returncode == 0, f"{shown}\n  exit {done.returncode}: {done.stderr}"
                return
            if matches(command.expected, got):
                return
            if time.monotonic() > deadline:
                raise AssertionError(self.broken(shown, command, got))
            time.sleep(0.3)

    @staticmethod
    def broken(shown: str, command: Command, got: str) -> str:
        promised = "\n".join(f"  # {line}" for line in command.expected)
        return f"{shown}\nthe document shows:\n{promised}\nthe command printed:\n{got}"

    def logs(self) -> str:
        return "\n".join(
            f"== {log.name}\n{log.read_text()[-3000:]}" for log in self.cwd.glob("background-*.log")
        )

    def wait_listening(self, command: Command) -> None:
        port = self.ports[8000 if "orders" in command.text else 50051]
        deadline = time.monotonic() + 20
        while subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                             capture_output=True).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, f"{self.where(command.line)}: nothing listens on {port}"
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in reversed(self.background):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in reversed(self.background):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_every_shell_example_shows_what_it_prints(doc: str, tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    subprocess.run(["cp", "-r", f"{FILES}/.", str(tmp_path)], check=True)
    story = Story(doc, tmp_path)
    try:
        for block in blocks((ROOT / doc).read_text()):
            story.run(block)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{story.logs()}") from None
    finally:
        story.stop()
    # What ran in the background ran cleanly: no traceback, no task left pending at exit.
    for log in tmp_path.glob("background-*.log"):
        text = log.read_text()
        assert "Traceback" not in text and "Task was destroyed" not in text, f"{log.name}:\n{text[-3000:]}"


def test_the_harness_reads_commands_output_and_markers() -> None:
    text = (
        "<!-- doc-test: skip: needs certificates -->\n```bash\nconfmesh serve --tls-cert x\n```\n"
        "```bash\nconfmesh put a 1   # a comment\nconfmesh get a \\\n  --env e\n# 1\n#   more\n```\n"
    )
    first, second = list(blocks(text))
    assert first.marker == ("skip", "needs certificates") and second.marker is None
    got = [(c.text, c.expected) for c in second.commands()]
    quoted = Block("bash", 1, "confmesh flags set f --definition '{\"a\":\n  1}'\n# ok\n", None)
    assert [(c.text, c.expected) for c in quoted.commands()] == [
        ("confmesh flags set f --definition '{\"a\":\n  1}'", ["ok"])
    ]
    assert got == [("confmesh put a 1   # a comment", []), ("confmesh get a --env e", ["1", "  more"])]
    assert matches(["server …  serving", "x  1"], "server host-1  serving\nx      1\n")
    assert not matches(["version 4"], "version 5")
