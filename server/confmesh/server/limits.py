"""What a peer may make the server hold, in one place (docs/security.md has the table).

Every field a Watch client sends is capped here before the ledger or the
usage store keeps it: longer text is cut and marked, extra entries dropped
and counted. Repeated log lines go through ``Throttled`` so one noisy
stream cannot fill the disk.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from confmesh import errors

MAX_NACK_ERROR = 1024  # characters of a NACK's error text kept
MAX_FIELD_PATHS = 32  # field paths kept per NACK
MAX_FIELD_PATH = 256  # characters per field path
MAX_LABELS = 16  # labels kept per instance
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_USAGE_ENTRIES = 1000  # counts per usage report (more: the stream is refused)
MAX_USAGE_NAME = 256  # characters of a flag or variant name in a usage report
MAX_HASH_SCHEMES = 8  # hash schemes a client may offer (Subscribe/GetSnapshotRequest.hash_schemes)
MAX_HASH_SCHEME_NAME = 64  # characters per offered scheme name
MAX_VARIANTS_PER_FLAG = 64  # distinct variants tracked per flag; the rest count as OTHER_VARIANT
OTHER_VARIANT = "(other)"
MAX_ERROR_MESSAGE = 4096  # characters of an error the server sends (it travels in the trailers twice)
MAX_ISSUE_MESSAGE = 300  # characters of one schema issue's message (they quote the offending value)
PAGE_BYTES = 1024 * 1024  # status and usage answers are paged at about this size
LOG_INTERVAL = 10.0  # at most one line per (logger key) this often


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with the cut marked."""
    if len(text) <= limit:
        return text
    marker = f"… [{len(text) - limit} more characters cut]"
    return text[: max(0, limit - len(marker))] + marker


def clip_middle(text: str, limit: int) -> str:
    """`text` cut in the middle to about `limit` characters (keeps what a message says after a value)."""
    if len(text) <= limit:
        return text
    keep = max(0, limit // 2 - 16)
    return f"{text[:keep]}… [{len(text) - 2 * keep} characters cut] …{text[-keep:] if keep else ''}"


def clip_paths(paths: Iterable[str]) -> list[str]:
    out = []
    for i, path in enumerate(paths):
        if i == MAX_FIELD_PATHS:
            out.append("… [more field paths cut]")
            break
        out.append(clip(path, MAX_FIELD_PATH))
    return out


def clip_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The first MAX_LABELS labels (by key), keys and values cut; a dropped count is a label of its own."""
    keys = sorted(labels)
    out = {clip(k, MAX_LABEL_KEY): clip(labels[k], MAX_LABEL_VALUE) for k in keys[:MAX_LABELS]}
    if len(keys) > MAX_LABELS:
        out["confmesh.labels_dropped"] = str(len(keys) - MAX_LABELS)
    return out


class KeyedCount:
    """How many of something each key holds, and all keys together (connections per peer, requests per
    caller): callers compare the counts with their own limits before `take`."""

    def __init__(self) -> None:
        self.total = 0
        self._by_key: dict[str, int] = {}

    def of(self, key: str) -> int:
        return self._by_key.get(key, 0)

    def take(self, key: str) -> None:
        self.total += 1
        self._by_key[key] = self._by_key.get(key, 0) + 1

    def release(self, key: str) -> None:
        self.total -= 1
        left = self._by_key[key] - 1
        if left:
            self._by_key[key] = left
        else:
            del self._by_key[key]


class Throttled:
    """Log a repeated line at most once per `interval` per key, saying how many were held back."""

    def __init__(
        self, logger: logging.Logger, interval: float = LOG_INTERVAL, max_keys: int = 10_000
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[object, tuple[float, int]] = {}

    def log(self, level: int, key: object, msg: str, *args: object) -> None:
        now = time.monotonic()
        last, held = self._last.get(key, (-self.interval, 0))
        if now - last < self.interval:
            self._last[key] = (last, held + 1)
            return
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = (now, 0)
        if held:
            msg += " (%d similar lines held back)"
            args = (*args, held)
        self.logger.log(level, msg, *args, stacklevel=2)


_BAD_TOKEN = "page_token is not one this server gave"


def page_token(key: Sequence[object]) -> str:
    """An opaque token for "after the item with this sort key"."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def after_token(token: str) -> list[Any] | None:
    """The sort key a page token stands for (None: start at the beginning)."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError) as exc:
        raise errors.InvalidArgument(_BAD_TOKEN, field="page_token") from exc
    if not isinstance(key, list):
        raise errors.InvalidArgument(_BAD_TOKEN, field="page_token")
    return key


class Pager:
    """Fills one answer page up to PAGE_BYTES, after the token's item (items in sort-key order)."""

    def __init__(self, token: str, limit: int = PAGE_BYTES) -> None:
        self.after = after_token(token)
        self.limit = limit
        self.used = 0
        self.next_token = ""

    def wants(self, key: Sequence[object]) -> bool:
        """Whether the item with `key` belongs on this page (False once the page is full)."""
        if self.next_token:
            return False
        try:
            return self.after is None or list(key) > self.after
        except TypeError as exc:
            raise errors.InvalidArgument(
                "page_token is not one this server gave", field="page_token"
            ) from exc

    def added(self, key: Sequence[object], size: int) -> None:
        """Count an added item; the page is full once PAGE_BYTES is reached."""
        self.used += size
        if self.used >= self.limit:
            self.next_token = page_token(key)


NICE = 10  # the nice value of the threads that run control-plane work (Linux)


def lower_thread_priority() -> None:
    """On Linux a thread has its own nice value: the kernel then prefers the event loop's thread (and
    every other process) to this one when the cores are busy."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
