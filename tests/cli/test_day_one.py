"""What a new user hits in the first hour, run as they run it: real processes, real servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from confmesh.cli.common import stable_order
from confmesh.client import AdminClient
from confmesh.keys import Layer
from confmesh.server import ConfmeshServer
from confmesh.version import __version__
from tests.cli.test_cli import _etcd_processes_under, cli

pytestmark = pytest.mark.etcd  # starts servers or an etcd of its own

IN_USE = "the address is in use (is another server running?)"


class Serve:
    """`confmesh serve ARGS` in its own process group, as systemd or `timeout` runs it."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.cwd, self.args = cwd, args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "confmesh.cli", "serve", *self.args,
            cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode()
        assert line.startswith("confmesh serving on "), line
        return line.split()[3]

    async def stop_group(self, timeout: float) -> tuple[int, str]:
        """SIGTERM to the whole group (etcd included); the exit code and stderr."""
        assert self.proc is not None and self.proc.stderr is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        return self.proc.returncode or 0, (await self.proc.stderr.read()).decode()


async def serve_fails(cwd: Path, *args: str) -> str:
    """Run a `serve` that must fail: rc 1 and exactly one line on stderr, which is returned."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "confmesh.cli", "serve", *args,
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = err.decode().splitlines()
    assert (proc.returncode, out, len(lines)) == (1, b"", 1), err.decode()
    assert lines[0].startswith("error: ")
    return lines[0]


def listening_socket() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_change_set_file_is_repeatable_and_has_a_dry_run(admin: AdminClient, server: ConfmeshServer,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    await admin.put("flag.on", True, env="prod")
    changes = tmp_path / "changes.yaml"
    changes.write_text(
        "reason: rotate\nchanges:\n"
        "  - {key: database.pool.max, env: prod, value: 50}\n"
        "  - {key: flag.on, env: prod, value: 1}\n"  # true -> 1 is a change, though True == 1 in Python
        "  - {key: legacy.timeout, env: prod, delete: true}\n"  # not set: nothing to delete
    )
    code, out, err = await cli(server.address, "apply", str(changes), "--dry-run")
    assert code == 0, err
    assert out.splitlines() == [
        "+ env/prod:database.pool.max  50",
        "~ env/prod:flag.on  true -> 1",
        "= env/prod:legacy.timeout  (not set: nothing to delete)",
        "2 change(s) (dry run: nothing applied)",
    ]
    assert (await admin.get_layer(Layer.env("prod")))[1] == {"flag.on": True}
    code, out, err = await cli(server.address, "apply", str(changes))
    assert code == 0, err
    first = out.splitlines()
    assert first[0].endswith("2 key(s) changed")
    assert "  = env/prod/legacy.timeout (not set: nothing to delete)" in first
    version = (await admin.resolve("prod", "orders")).version
    code, out, err = await cli(server.address, "apply", str(changes))
    assert code == 0, err
    assert out.startswith("ok: nothing to change")
    assert out.count("(already so)") == 2 and out.count("(not set: nothing to delete)") == 1
    assert (await admin.resolve("prod", "orders")).version == version  # no new version
    code, out, _ = await cli(server.address, "apply", str(changes), "--dry-run")
    assert out.splitlines()[-1] == "0 change(s) (dry run: nothing applied)"


async def test_a_directory_apply_tells_true_from_1(admin: AdminClient, server: ConfmeshServer,
                                                    tmp_path: Path) -> None:  # fmt: skip
    await admin.put("feature.x", True, env="qa")
    (tmp_path / "d" / "qa").mkdir(parents=True)
    (tmp_path / "d" / "qa" / "a.yaml").write_text("feature:\n  x: 1\n")
    code, _out, err = await cli(server.address, "apply", "-f", str(tmp_path / "d"))
    assert code == 0, err
    assert (await admin.get_layer(Layer.env("qa")))[1] == {"feature.x": 1}
    assert (await admin.get_layer(Layer.env("qa")))[1]["feature.x"] is not True


async def test_a_second_server_on_a_busy_port_is_refused_in_one_line(
    server: ConfmeshServer, tmp_path: Path
) -> None:
    line = await serve_fails(tmp_path, "--listen", server.address, "--data-dir", "second")
    assert line == f"error: cannot listen on {server.address}: {IN_USE}"
    assert not (tmp_path / "second").exists()  # refused before anything started
    assert _etcd_processes_under(tmp_path / "second") == []


async def test_every_serve_mistake_is_one_line_and_rc_1(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    assert "is a file, not a directory" in await serve_fails(tmp_path, "--data-dir", "afile")
    assert "cannot create --data-dir afile/sub" in await serve_fails(tmp_path, "--data-dir", "afile/sub")
    assert "--data-dir /proc/self is not writable" in await serve_fails(tmp_path, "--data-dir", "/proc/self")
    held, busy = listening_socket()
    with held:
        line = await serve_fails(
            tmp_path, "--listen", "127.0.0.1:0", "--metrics-listen", busy, "--data-dir", "m"
        )
        assert line == f"error: cannot serve metrics on {busy}: {IN_USE}"
        line = await serve_fails(tmp_path, "--listen", busy, "--data-dir", "m")
        assert line.startswith(f"error: cannot listen on {busy}")
    assert "--server 127.0.0.1" not in line


@pytest.mark.slow
async def test_a_data_directory_in_use_is_named_at_once(tmp_path: Path) -> None:
    first = Serve(tmp_path, "--listen", "127.0.0.1:0")
    await first.start()
    try:
        started = time.monotonic()
        line = await serve_fails(tmp_path, "--listen", "127.0.0.1:0")
        assert time.monotonic() - started < 10
        assert line.startswith("error: --data-dir confmesh-data is in use by another confmesh process"), line
    finally:
        code, _ = await first.stop_group(10)
    assert code == 0


@pytest.mark.slow
async def test_twenty_group_sigterms_each_exit_within_10_s_leaving_no_etcd(tmp_path: Path) -> None:
    for run in range(20):
        data = tmp_path / f"d{run % 2}"
        server = Serve(tmp_path, "--listen", "127.0.0.1:0", "--data-dir", data.name)
        address = await server.start()
        if run % 5 == 0:
            assert (await cli(address, "put", "run", str(run)))[0] == 0
        started = time.monotonic()
        code, err = await server.stop_group(10)
        took = time.monotonic() - started
        assert code == 0, (run, err)
        assert took < 10, (run, took)
        assert "lost etcd" not in err and "Traceback" not in err, err
        assert _etcd_processes_under(data) == [], run


async def test_watch_against_a_dead_port_says_so_and_honours_timeout(tmp_path: Path) -> None:
    held, address = listening_socket()
    held.close()  # a port nobody listens on
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "confmesh.cli", "--server", address, "watch", "--env", "prod", "--service", "x",
        "--timeout", "4", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    started = time.monotonic()
    first = (await asyncio.wait_for(proc.stderr.readline(), 5)).decode()
    assert first.startswith(f"connecting to {address}")
    second = (await asyncio.wait_for(proc.stderr.readline(), 5)).decode()
    assert time.monotonic() - started < 2.5, "the reason it is not connected comes within 2 s"
    assert second.startswith(f"not connected to {address} yet:") and "retrying" in second
    await asyncio.wait_for(proc.wait(), 10)
    elapsed = time.monotonic() - started
    rest = (await proc.stderr.read()).decode().splitlines()
    assert proc.returncode == 1 and 3.5 < elapsed < 8, elapsed
    assert rest[-1].startswith("error: no valid configuration for prod/x within 4.0s")


def _stable(line: str) -> dict[str, object]:
    """A JSON output line, checked to print every object below the top level sorted by key."""
    value = json.loads(line)
    assert line == json.dumps(stable_order(value), ensure_ascii=False), line
    assert isinstance(value, dict)
    return value


async def test_json_output_keeps_integers_and_a_stable_key_order(
    admin: AdminClient, server: ConfmeshServer, tmp_path: Path
) -> None:
    addr = server.address
    await admin.put("pool.max", 5, env="qa")
    await admin.put("pool.max", 10, env="qa", reason="more")
    code, out, err = await cli(addr, "audit", "--env", "qa", "--json")
    assert code == 0, err
    newest = _stable(out.splitlines()[0])
    assert type(newest["revision"]) is int and newest["reason"] == "more"
    change = newest["changes"][0]  # type: ignore[index]
    assert type(change["new_value"]) is int and change["new_value"] == 10
    assert type(change["old_value"]) is int and change["old_value"] == 5
    assert isinstance(newest["at"], str) and newest["at"].endswith("Z")

    code, out, err = await cli(addr, "history", "--env", "qa", "--json")
    assert code == 0, err
    versions = [_stable(line) for line in out.splitlines()]
    assert [v["revision"] for v in versions] == sorted((v["revision"] for v in versions), reverse=True)
    assert versions[0]["changes"][0]["new_value"] == 10  # type: ignore[index]

    code, out, err = await cli(addr, "status", "--json")
    assert code == 0, err
    status = _stable(out.rstrip("\n"))
    assert type(status["revision"]) is int and status["server_version"] == __version__

    runs = {(await cli(addr, "get", "--env", "qa", "--service", "api", "--json"))[1] for _ in range(3)}
    assert len(runs) == 1


async def test_flags_explain_has_json(tmp_path: Path) -> None:
    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps({"beta": {"type": "userList", "users": ["u1"]}}))
    code, out, err = await cli(
        "127.0.0.1:1", "flags", "explain", "beta", "--flags-file", str(flags_file),
        "--context", '{"userId": "u1"}', "--json",
    )  # fmt: skip
    assert code == 0, err
    explained = _stable(out.rstrip("\n"))
    assert (explained["value"], explained["variant"], explained["reason"]) == (True, "on", "TARGETING_MATCH")
    steps = explained["steps"]
    assert isinstance(steps, list) and steps[0].startswith("flag 'beta'")
    assert not any(step.startswith("=>") for step in steps)


async def test_explain_needs_a_key_and_says_when_layers_merge(
    admin: AdminClient, server: ConfmeshServer
) -> None:
    addr = server.address
    code, out, err = await cli(addr, "get", "--env", "prod", "--service", "orders", "--explain")
    assert (code, out) == (
        1,
        "",
    ) and err == "error: --explain needs a KEY: which key's layers should it show?\n"

    await admin.put("database.pool.max", 10)
    await admin.put("database.host", "db-orders", env="prod", service="orders")
    code, out, err = await cli(addr, "get", "database", "--env", "prod", "--service", "orders", "--explain")
    assert code == 0, err
    head, *rows = out.splitlines()
    assert head.endswith(", merged from 2 layers)")
    marks = {row.split()[0]: row.endswith("<- merged") for row in rows}
    assert marks == {"defaults": True, "env/prod": False, "service/prod/orders": True}
    assert "<- wins" not in out

    code, out, _ = await cli(
        addr, "get", "database", "--env", "prod", "--service", "orders", "--explain", "--json"
    )
    explained = _stable(out.rstrip("\n"))
    assert explained["winner"] is None
    assert explained["merged_from"] == ["defaults", "service/prod/orders"]

    await admin.put("database", "replaced", env="prod")  # a scalar between: it replaces what is below
    code, out, _ = await cli(addr, "get", "database", "--env", "prod", "--service", "orders", "--explain")
    assert "merged" not in out.splitlines()[0] and out.splitlines()[-1].endswith("<- wins")
    assert out.count("<-") == 1


async def test_a_server_without_a_port_means_7070_and_bad_ones_are_refused() -> None:
    code, _, err = await cli("127.0.0.1", "status")
    assert code == 1 and "127.0.0.1:7070" in err, err
    for bad in ("127.0.0.1:", "127.0.0.1:http", "::1", "[::1", "127.0.0.1:70000"):
        code, out, err = await cli(bad, "status")
        assert (code, out) == (1, ""), bad
        assert err.startswith(f"error: --server {bad!r}") and err.count("\n") == 1, err
