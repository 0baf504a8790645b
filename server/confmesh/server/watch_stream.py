"""One Watch stream's protocol state: what it was offered, sent, ACKed and NACKed, and how it ends.

The Watch service (``confmesh.server.config_service``) owns these; the snapshot plane only offers
them snapshots (``offer``) and heartbeats (``ping``) through its ``Receiver`` seam.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict

from confmesh import errors
from confmesh.keys import Scope
from confmesh.server.access import Caller
from confmesh.server.resolver import Resolved

SENT_MEMORY = 64

_ids = itertools.count(1)


class Subscriber:
    """A stream's state. Each has a one-slot mailbox: a newer snapshot replaces one that has not
    been sent yet, so a slow client costs one pending snapshot of memory and never delays others."""

    __slots__ = (
        "accept_delta",
        "base",
        "caller",
        "created",
        "ended",
        "error",
        "heartbeat_now",
        "id",
        "instance_id",
        "last_offered",
        "legacy",
        "nacked",
        "pending",
        "scope",
        "sent",
        "wakeup",
    )  # fmt: skip

    def __init__(
        self,
        scope: Scope,
        known_version: int,
        known_hash: str,
        instance_id: str = "",
        *,
        legacy: bool = False,
        caller: Caller | None = None,
    ) -> None:
        self.id = next(_ids)
        # The client checks leafsum256 hashes only: every hash on this stream is one, and no deltas.
        self.legacy = legacy
        self.scope = scope
        self.instance_id = instance_id
        self.caller = caller
        self.pending: Resolved | None = None
        self.wakeup = asyncio.Event()
        self.last_offered: tuple[int, str] = (known_version, known_hash)
        # Versions sent on this stream, so an ACK/NACK can be checked.
        self.sent: OrderedDict[int, str] = OrderedDict()
        self.nacked: set[int] = set()
        # How the stream ends: `ended` set, with `error` the status to end it with (None: the
        # client closed its side, so it ends quietly).
        self.ended = False
        self.error: errors.ConfmeshError | None = None
        self.heartbeat_now = False
        self.created = time.time()
        # Deltas: whether the client takes them, and the version it runs (None: unknown).
        self.accept_delta = False
        self.base: tuple[int, str] | None = (known_version, known_hash) if known_version > 0 else None

    def offer(self, snapshot: Resolved) -> None:
        offered = (snapshot.version, snapshot.hash_for(self.legacy))
        if offered == self.last_offered:
            return
        if offered[1] == self.last_offered[1] and snapshot.version <= self.last_offered[0]:
            return
        self.last_offered = offered
        self.pending = snapshot
        self.wakeup.set()

    def resend_if_behind(self, current: Resolved, version: int, hash_: str) -> bool:
        """The client says it runs (version, hash): offer `current` again if that differs.

        A version this stream NACKed is never re-sent; the next change will be.
        """
        if (version, hash_) == (
            current.version,
            current.hash_for(self.legacy),
        ) or current.version in self.nacked:
            return False
        if self.pending is not None:
            return False
        self.last_offered = (version, hash_)
        if self.base is not None:
            self.base = (version, hash_)
        self.offer(current)
        return True

    def delta_base(self) -> tuple[int, str] | None:
        """What the snapshot being sent may be a delta from: the version the client runs, if known."""
        return self.base if self.accept_delta and not self.legacy else None

    def ping(self) -> None:
        self.heartbeat_now = True
        self.wakeup.set()

    def take(self) -> Resolved | None:
        snapshot, self.pending = self.pending, None
        if snapshot is not None:
            self.sent[snapshot.version] = snapshot.hash_for(self.legacy)
            while len(self.sent) > SENT_MEMORY:
                self.sent.popitem(last=False)
        return snapshot

    def fail(self, error: errors.ConfmeshError) -> None:
        """End the stream with `error` as its status."""
        self.ended, self.error = True, error
        self.wakeup.set()

    def close(self) -> None:
        """The client closed its side: end quietly."""
        self.ended = True
        self.wakeup.set()
