"""A synchronous facade for threaded apps: the async client on a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from confmesh.client._client import AppliedSnapshot, ChangeCallback, ConfigClient

T = TypeVar("T")


class SyncConfigClient(Generic[T]):
    """Same arguments as ConfigClient; use as ``with SyncConfigClient(...) as client:``.

    The stream runs on a daemon thread with its own event loop; change
    callbacks run on that thread.
    """

    def __init__(self, target: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="confmesh-client", daemon=True)
        self._async: ConfigClient[T] = ConfigClient(target, **kwargs)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        try:
            self._call(self._async.start())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._async.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> SyncConfigClient[T]:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def config(self) -> T:
        return self._async.config

    @property
    def version(self) -> int:
        return self._async.version

    @property
    def raw(self) -> Mapping[str, Any]:
        return self._async.raw

    @property
    def history(self) -> list[AppliedSnapshot]:
        return list(self._async.history)

    @property
    def async_client(self) -> ConfigClient[T]:
        return self._async

    def get(self, key: str, default: Any = None) -> Any:
        return self._async.get(key, default)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        return self._async.on_change(callback)

    def wait_for_version(self, version: int, timeout: float | None = None) -> None:
        self._call(self._async.wait_for_version(version, timeout))
