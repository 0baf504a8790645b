"""What ``serve`` checks before it starts anything, so each mistake is one clear line.

The data directory must be a directory this process can write, and no other
server may be using it: a server holds an exclusive lock on
``<data-dir>/confmesh.lock`` (with its pid inside) for as long as it runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import IO

from confmesh.errors import StartupError
from confmesh.server.embedded_etcd import EmbeddedEtcd

log = logging.getLogger("confmesh.server.app")  # the start-up lines, under one name

LOCK_NAME = "confmesh.lock"


class DataDirLock:
    """The exclusive lock on a data directory, released by `release` (or when the process ends)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the server's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                by = f" (pid {holder})" if holder.isdigit() else ""
                raise StartupError(
                    f"--data-dir {self.path.parent} is in use by another confmesh process{by}; "
                    "stop it, or give this one its own --data-dir"
                ) from None
            raise StartupError(f"cannot lock --data-dir {self.path.parent}: {exc.strerror}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def prepare_data_dir(data_dir: Path) -> DataDirLock:
    """Create `data_dir` if needed, check it is a writable directory, and lock it."""
    if data_dir.exists() and not data_dir.is_dir():
        raise StartupError(f"--data-dir {data_dir} is a file, not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create --data-dir {data_dir}: {exc.strerror}") from None
    probe = data_dir / ".confmesh-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"--data-dir {data_dir} is not writable: {exc.strerror}") from None
    lock = DataDirLock(data_dir)
    lock.acquire()
    return lock


def check_port_free(listen: str, what: str) -> None:
    """Fail at once, before etcd starts, when HOST:PORT is taken (port 0 is always free)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Like the real listener: a port held only by TIME_WAIT connections is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"{what} {listen}: the address is in use (is another server running?)"
                ) from None
            raise StartupError(f"{what} {listen}: {exc.strerror}") from None


async def start_embedded_etcd(data_dir: Path, serving: str = "") -> tuple[DataDirLock, EmbeddedEtcd]:
    """Lock `data_dir` and start the development etcd under it, saying it is for development.

    `serving` says for whom, in the warning (e.g. " for 2 workers").
    """
    lock = prepare_data_dir(data_dir)
    log.warning(
        "no --etcd given: starting an embedded etcd under %s%s "
        "(development only; production uses an external etcd >= 3.5.6)",
        data_dir / "etcd",
        serving,
    )
    embedded = EmbeddedEtcd(data_dir / "etcd")
    try:
        await embedded.start()
    except BaseException:
        lock.release()
        raise
    return lock, embedded
