"""Shared benchmark plumbing: a throwaway etcd and a `confmesh serve` process next to it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confmesh.server.embedded_etcd import EmbeddedEtcd, free_port


@dataclass(frozen=True)
class Stack:
    etcd_endpoint: str
    address: str
    server: subprocess.Popen[bytes]


@contextmanager
def etcd_and_server(*serve_args: str) -> Iterator[Stack]:
    """A fresh etcd (in a temporary directory) and one confmesh server process on loopback
    (`serve_args` added to its command line, e.g. --workers 2)."""
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EmbeddedEtcd(Path(tmp) / "etcd")
        asyncio.run(etcd.start())
        address = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen(
            [sys.executable, "-m", "confmesh.cli", "serve", "--listen", address, "--etcd", etcd.endpoint,
             "--log-level", "warning", *serve_args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            server.stdout.readline()  # "confmesh serving on ..."
            yield Stack(etcd.endpoint, address, server)
        finally:
            server.terminate()
            server.wait()
            asyncio.run(etcd.stop())
