"""A synchronous facade for threaded apps: the async client on a background thread."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from confmesh.client._apply import AppliedSnapshot
from confmesh.client._client import ChangeCallback, ClientState, ConfigClient, Rejection

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from confmesh.flags import FlagEvaluator
    from confmesh.keys import Scope
    from confmesh.tls import TLSConfig

T = TypeVar("T")


class SyncConfigClient(Generic[T]):
    """ConfigClient for threaded apps: ``with SyncConfigClient(...) as client:``.

    It takes ConfigClient's arguments and offers its members; the stream runs on a daemon thread
    with its own event loop, and change and state callbacks run on that thread.
    """

    def __init__(
        self,
        target: str,
        *,
        environment: str,
        service: str,
        schema: type[T] | None = None,
        instance_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        start_from_defaults: bool = False,
        startup_timeout: float = 10.0,
        history_size: int = 16,
        usage_interval: float = 10.0,
        report_interval: float = 30.0,
        cache_path: str | os.PathLike[str] | None = None,
        max_cache_age: float | None = 7 * 24 * 3600,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        channel_options: list[tuple[str, Any]] | None = None,
        tls: TLSConfig | None = None,
        tracer_provider: TracerProvider | None = None,
        token: str | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="confmesh-client", daemon=True)
        self._async: ConfigClient[T] = ConfigClient(
            target,
            environment=environment,
            service=service,
            schema=schema,
            instance_id=instance_id,
            labels=labels,
            start_from_defaults=start_from_defaults,
            startup_timeout=startup_timeout,
            history_size=history_size,
            usage_interval=usage_interval,
            report_interval=report_interval,
            cache_path=cache_path,
            max_cache_age=max_cache_age,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            channel_options=channel_options,
            tls=tls,
            tracer_provider=tracer_provider,
            token=token,
        )

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
    def async_client(self) -> ConfigClient[T]:
        return self._async

    # What the instance runs.

    @property
    def config(self) -> T:
        return self._async.config

    @property
    def version(self) -> int:
        return self._async.version

    @property
    def hash(self) -> str:
        return self._async.hash

    @property
    def raw(self) -> Mapping[str, Any]:
        return self._async.raw

    @property
    def flags(self) -> FlagEvaluator:
        return self._async.flags

    @property
    def history(self) -> list[AppliedSnapshot]:
        return list(self._async.history)

    def get(self, key: str, default: Any = None) -> Any:
        return self._async.get(key, default)

    # How it is connected.

    @property
    def state(self) -> ClientState:
        return self._async.state

    @property
    def connected(self) -> bool:
        return self._async.connected

    @property
    def cached(self) -> bool:
        return self._async.cached

    @property
    def server_stale(self) -> bool:
        return self._async.server_stale

    @property
    def last_error(self) -> str:
        return self._async.last_error

    @property
    def last_rejection(self) -> Rejection | None:
        return self._async.last_rejection

    @property
    def reconnects(self) -> int:
        return self._async.reconnects

    @property
    def deltas_applied(self) -> int:
        return self._async.deltas_applied

    @property
    def scope_notice(self) -> str | None:
        return self._async.scope_notice

    def describe_scope(self, timeout: float | None = 10.0) -> str | None:
        """What the server said of this scope's names ("" when it knows them); see ConfigClient."""
        result: str | None = self._call(self._async.describe_scope(), timeout)
        return result

    # Who it is.

    @property
    def target(self) -> str:
        return self._async.target

    @property
    def scope(self) -> Scope:
        return self._async.scope

    @property
    def instance_id(self) -> str:
        return self._async.instance_id

    @property
    def labels(self) -> dict[str, str]:
        return self._async.labels

    # Callbacks and waiting.

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        return self._async.on_change(callback)

    def on_state(self, callback: Callable[[ClientState], None]) -> Callable[[], None]:
        return self._async.on_state(callback)

    def wait_for_version(self, version: int, timeout: float | None = None) -> None:
        self._call(self._async.wait_for_version(version, timeout))
