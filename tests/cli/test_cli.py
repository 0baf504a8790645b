"""The confmesh CLI as users run it: real processes against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from confmesh.server import ConfmeshServer


async def cli(server: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "confmesh.cli",
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CONFMESH_SERVER": server, "CONFMESH_ACTOR": "cli-test"},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_put_get_explain_delete_apply(server: ConfmeshServer, tmp_path: Path) -> None:
    addr = server.address
    assert (await cli(addr, "put", "database.pool.max", "10"))[0] == 0
    assert (await cli(addr, "put", "database.pool.max", "50", "--env", "prod"))[0] == 0
    code, out, _ = await cli(
        addr, "put", "database.host", "db-orders", "--env", "prod", "--service", "orders"
    )
    assert code == 0 and "service/prod/orders/database.host" in out

    code, out, _ = await cli(addr, "get", "database.pool.max", "--env", "prod", "--service", "orders")
    assert (code, out.strip()) == (0, "50")
    code, out, _ = await cli(
        addr, "get", "database.pool.max", "--env", "prod", "--service", "orders", "--explain"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("database.pool.max = 50")
    assert "defaults" in lines[1] and "10" in lines[1]
    assert "env/prod" in lines[2] and "<- wins" in lines[2]
    assert lines[3].split() == ["service/prod/orders", "-"]
    code, out, _ = await cli(
        addr, "get", "database.pool.max", "--env", "prod", "--service", "orders", "--explain", "--json"
    )
    data = json.loads(out)
    assert data["value"] == 50 and data["winner"] == "env/prod" and len(data["layers"]) == 2

    code, out, _ = await cli(addr, "delete", "database.pool.max", "--env", "prod")
    assert code == 0
    code, out, _ = await cli(addr, "get", "database.pool.max", "--env", "prod", "--service", "orders")
    assert out.strip() == "10"

    apply_file = tmp_path / "change.yaml"
    apply_file.write_text(
        "reason: test\nchanges:\n"
        "  - {key: feature.limit, env: prod, value: 3}\n"
        "  - {key: database.host, env: prod, service: orders, delete: true}\n"
    )
    code, out, _ = await cli(addr, "apply", str(apply_file))
    assert code == 0 and "2 key(s) changed" in out
    code, out, _ = await cli(addr, "get", "--env", "prod", "--service", "orders", "--json")
    assert json.loads(out)["config"] == {"database": {"pool": {"max": 10}}, "feature": {"limit": 3}}

    code, out, _ = await cli(addr, "apply", "-", stdin='{"changes": [{"key": "x", "value": [1, 2]}]}')
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("put", "bad key", "1"), "invalid key 'bad key'"),
        (("put", "a", "{oops"), "looks like JSON but does not parse"),
        (("put", "a", "1", "--service", "orders"), "--service needs --env"),
        (("put", "a", "1", "--env", "PROD"), "invalid environment name 'PROD'"),
        (("delete", "never.set", "--env", "prod"), "is not set in layer env/prod"),
        (("get", "nothing", "--env", "prod", "--service", "orders"), "nothing is not set for prod/orders"),
    ],
)
async def test_errors_are_one_line_and_non_zero(
    server: ConfmeshServer, args: tuple[str, ...], message: str
) -> None:
    code, _, err = await cli(server.address, *args)
    assert code == 1
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


async def test_conflicting_layer_writes_are_refused_and_nothing_is_written(server: ConfmeshServer) -> None:
    addr = server.address
    assert (await cli(addr, "put", "a", "5"))[0] == 0
    code, _, err = await cli(addr, "put", "a.b", "1")
    assert code == 1 and "is not an object" in err
    code, _, err = await cli(
        addr, "apply", "-", stdin=('{"changes": [{"key": "ok", "value": 1}, {"key": "a.c", "value": 2}]}')
    )
    assert code == 1
    code, out, _ = await cli(addr, "get", "--env", "e", "--service", "s")
    assert json.loads(out) == {"a": 5}


async def test_an_unreachable_server_is_one_clear_line() -> None:
    code, _, err = await cli("127.0.0.1:1", "status")
    assert code == 1 and "unavailable" in err and "Traceback" not in err


async def test_status_and_watch(server: ConfmeshServer) -> None:
    addr = server.address
    await cli(addr, "put", "n", "1", "--env", "prod")
    watch = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "confmesh.cli",
        "--server",
        addr,
        "watch",
        "--env",
        "prod",
        "--service",
        "api",
        "--instance-id",
        "watcher-1",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert watch.stdout is not None
        first = json.loads(await asyncio.wait_for(watch.stdout.readline(), 20))
        assert first["config"] == {"n": 1}
        await cli(addr, "put", "n", "2", "--env", "prod")
        second = json.loads(await asyncio.wait_for(watch.stdout.readline(), 10))
        assert second["config"] == {"n": 2} and second["version"] > first["version"]
        assert second["hash"].startswith("jcs-leafsum256:")

        code, out, _ = await cli(addr, "status", "--json")
        assert code == 0
        status = json.loads(out)
        (inst,) = [i for i in status["instances"] if i["instance_id"] == "watcher-1"]
        assert inst["environment"] == "prod" and inst["service"] == "api" and inst["connected"]
        assert inst["last_nack"] is None
        _, out, _ = await cli(addr, "status")
        assert "watcher-1" in out and "prod/api" in out

        # Ctrl-C ends it quietly, with 130 as a shell expects; nothing claims a lost connection.
        watch.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(watch.wait(), 20) == 130
        assert watch.stderr is not None
        err = (await watch.stderr.read()).decode()
        assert err.strip().splitlines()[-1] == f"connected to {addr}", err
        assert "lost" not in err and "Task was destroyed" not in err and "Traceback" not in err, err
    finally:
        if watch.returncode is None:
            watch.terminate()
            await watch.wait()


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _etcd_processes_under(path: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "etcd" in cmdline and str(path) in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.etcd
async def test_serve_with_no_arguments_starts_serves_and_stops_embedded_etcd(tmp_path: Path) -> None:
    args = [] if _free(7070) else ["--listen", "127.0.0.1:0"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "confmesh.cli",
        "serve",
        *args,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("confmesh serving on ")
        address = line.split()[3]
        assert (await cli(address, "put", "hello", '"world"'))[0] == 0
        code, out, _ = await cli(address, "get", "hello", "--env", "dev", "--service", "demo")
        assert out.strip() == '"world"'
        assert _etcd_processes_under(tmp_path / "confmesh-data")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
    assert _etcd_processes_under(tmp_path / "confmesh-data") == []
    assert (tmp_path / "confmesh-data" / "etcd" / "member").is_dir()


@pytest.mark.slow
@pytest.mark.etcd
async def test_a_sigkilled_server_takes_its_embedded_etcd_with_it(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "confmesh.cli",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        "d",
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 60)
    assert _etcd_processes_under(tmp_path / "d")
    proc.kill()
    await proc.wait()
    for _ in range(100):
        if not _etcd_processes_under(tmp_path / "d"):
            break
        await asyncio.sleep(0.1)
    assert _etcd_processes_under(tmp_path / "d") == []


async def test_global_options_work_after_the_command(server: ConfmeshServer) -> None:
    """As etcdctl and kubectl take them: `confmesh put k v --server HOST:PORT`."""
    dead = "127.0.0.1:1"  # CONFMESH_SERVER; the option after the command wins over it
    code, out, err = await cli(dead, "put", "late.option", "1", "--env", "qa", "--server", server.address)
    assert code == 0, err
    code, out, err = await cli(
        dead, "get", "late.option", "--env", "qa", "--service", "api", f"--server={server.address}"
    )
    assert (code, out) == (0, "1\n"), err
    code, out, _ = await cli(dead, "--version")
    assert code == 0 and out.startswith("confmesh, version ")


async def test_a_change_set_file_can_hold_flags(server: ConfmeshServer, tmp_path: Path) -> None:
    changes = tmp_path / "flags.yaml"
    changes.write_text(
        "changes:\n"
        "  - {key: db.pool, env: dev, service: orders, value: 5}\n"
        "  - flag: beta\n"
        "    env: dev\n"
        '    value: {variants: {"on": true, "off": false}, default_variant: "off"}\n'
    )
    code, out, err = await cli(server.address, "apply", "-f", str(changes))
    assert code == 0 and "flags/dev/beta" in out, err
    code, out, _ = await cli(server.address, "flags", "list", "--env", "dev")
    assert code == 0 and "beta" in out
    changes.write_text("changes:\n  - {flag: beta, service: orders, value: {}}\n")
    code, _, err = await cli(server.address, "apply", "-f", str(changes))
    assert code != 0 and "flags are per environment" in err
