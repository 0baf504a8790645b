"""`confmesh serve --workers N`: N server processes on one listen port, in one fleet.

The parent checks the port and the data directory, starts the embedded etcd when there is no
``--etcd``, then runs N workers: ``confmesh serve`` with ``--reuse-port``, ``--fleet`` and the
parent's etcd. They share the port through SO_REUSEPORT, so the kernel spreads connections over
them and one host's fan-out uses every core. Each worker has its own etcd watch and ledger, and
the fleet view joins them: `status` through the port lists every worker's instances.

SIGTERM or SIGINT to the parent drains every worker (each drains its own streams, as a single
server does) and then stops the embedded etcd. A worker that exits by itself stops the others
and the parent exits 1: the supervisor (systemd, Kubernetes) restarts the server whole, rather
than this process hiding a crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from confmesh.errors import StartupError
from confmesh.server.app import SHUTDOWN_EXTRA, ServerSettings
from confmesh.server.embedded_etcd import EmbeddedEtcd
from confmesh.server.startup import DataDirLock, check_port_free, start_embedded_etcd
from confmesh.version import __version__

log = logging.getLogger("confmesh.server.workers")

# Builds one worker's `confmesh serve` arguments: (listen, etcd endpoints, worker index).
WorkerArgs = Callable[[str, str, int], list[str]]


def worker_count(text: str) -> int:
    """`--workers`: a positive number, or `auto` for one per core."""
    if text == "auto":
        return max(1, os.cpu_count() or 1)
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise StartupError(f"--workers {text!r}: a number from 1 to 64, or auto")
    return int(text)


def fixed_port(listen: str) -> str:
    """HOST:PORT with port 0 replaced by a free port: every worker must bind the same one."""
    host, _, port = listen.rpartition(":")
    if port != "0":
        return listen
    bare = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((bare, 0))
        return f"{host}:{probe.getsockname()[1]}"


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Workers:
    def __init__(self, settings: ServerSettings, count: int, args: WorkerArgs) -> None:
        self.settings, self.count, self.args = settings, count, args
        self.listen = fixed_port(settings.listen)
        self.embedded: EmbeddedEtcd | None = None
        self._lock: DataDirLock | None = None
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        s = self.settings
        if not s.reuse_port:
            check_port_free(self.listen, "cannot listen on")
            if s.http_listen:
                check_port_free(s.http_listen, "cannot serve HTTP on")
        endpoints = ",".join(s.etcd_endpoints)
        if not endpoints:
            self._lock, self.embedded = await start_embedded_etcd(
                Path(s.data_dir), f" for {self.count} workers"
            )
            endpoints = self.embedded.endpoint
        for index in range(self.count):
            # Their own session: a signal to the parent's process group (Ctrl-C, a supervisor)
            # reaches each worker once, forwarded, not twice (a second signal cuts the drain).
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "confmesh.cli", "serve", *self.args(self.listen, endpoints, index),
                stdout=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
            self.procs.append(proc)
        await asyncio.gather(*(self._ready(i, p) for i, p in enumerate(self.procs)))

    async def _ready(self, index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(self.settings.sync_timeout + 30):
                line = await proc.stdout.readline()
        except TimeoutError:
            limit = self.settings.sync_timeout + 30
            raise StartupError(f"worker {index} did not start within {limit:.0f}s") from None
        if not line.startswith(b"confmesh serving on"):
            code = await proc.wait()
            raise StartupError(f"worker {index} exited ({code}) before serving; its error is above")

    async def wait(self) -> int | None:
        """Until a worker exits by itself (its index) or the parent is told to stop (None)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        exits = {asyncio.ensure_future(p.wait()): i for i, p in enumerate(self.procs)}
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({stopped, *exits}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, *exits):
            task.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        gone = [exits[t] for t in done if t in exits]
        return gone[0] if gone else None

    async def stop(self) -> bool:
        """SIGTERM every worker, wait for their drain (bounded), then stop the embedded etcd."""
        live = [p for p in self.procs if p.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        clean = True
        try:
            async with asyncio.timeout(self.settings.shutdown_grace + SHUTDOWN_EXTRA):
                await asyncio.gather(*(p.wait() for p in live))
        except TimeoutError:
            clean = False
            log.error("workers did not stop in time; killing them")
            for proc in live:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await asyncio.gather(*(p.wait() for p in live))
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        return clean


async def run_workers(settings: ServerSettings, count: int, args: WorkerArgs) -> bool:
    """Run `count` workers until SIGTERM/SIGINT or until one exits; False if that ended badly."""
    workers = Workers(settings, count, args)
    try:
        await workers.start()
    except BaseException:
        await workers.stop()
        raise
    print(f"confmesh serving on {workers.listen} (version {__version__}, {count} workers)", flush=True)
    crashed = await workers.wait()
    if crashed is not None:
        log.error("worker %d exited by itself; stopping the others", crashed)
    clean = await workers.stop()
    return clean and crashed is None
