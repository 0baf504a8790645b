"""The instances relays below a server report: each relay's whole subtree, replaced by its next
report, kept for a TTL after its stream ends (so a relay restarting does not flap its subtree out
of the view) and then dropped. ``LocalInstances`` joins them with the server's own ledger: that is
what the server publishes as its fleet summary, and what a relay reports further up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from confmesh.server.fleet import decode, encode
from confmesh.server.ledger import InstanceRecord, Ledger
from confmesh.server.limits import clip
from confmesh.v1 import relay_pb2

# Bounds on one report: 200 chunks of at most 1,000 instances.
MAX_CHUNKS = 200
MAX_PATH = 256
MAX_RELAYS = 1_000
MAX_REASON = 512
GONE_TTL = 30.0


@dataclass
class Subtree:
    """What one relay stream reported last: its instances, and the freshness of the relay and of
    every relay below it (paths from this server)."""

    records: list[InstanceRecord]
    relays: list[relay_pb2.RelayState]
    reported_at: float
    ended: float | None = None  # monotonic time the stream ended


class RelayedFleet:
    def __init__(self, ttl: float = GONE_TTL, server_id: str = "") -> None:
        self.ttl = ttl
        # Relayed instances are held as this server's: the fleet view shows them here, behind a path.
        self.server_id = server_id
        self._subtrees: dict[object, Subtree] = {}
        self.generation = 0

    def decode(
        self, relay_id: str, report: relay_pb2.FleetReport, allowed: Callable[[InstanceRecord], bool]
    ) -> tuple[list[InstanceRecord], list[relay_pb2.RelayState]]:
        """`report`'s records that `allowed` passes, each behind ``relay_id/<path>``, and its relays'
        states on the same paths (ValueError: past the bounds). Pure CPU: run it off the event loop."""
        if len(report.chunks) > MAX_CHUNKS or len(report.relays) > MAX_RELAYS:
            raise ValueError(f"a fleet report takes at most {MAX_CHUNKS} chunks and {MAX_RELAYS} relays")
        records = []
        for chunk in report.chunks:
            if len(chunk.path) > MAX_PATH:
                raise ValueError(f"a relay path is at most {MAX_PATH} characters")
            via = f"{relay_id}/{chunk.path}" if chunk.path else relay_id
            records += [replace(r, via=via, server_id=self.server_id)
                        for r in decode(relay_id, chunk.summary) if allowed(r)]  # fmt: skip
        relays = []
        for state in report.relays:
            if len(state.path) > MAX_PATH:
                raise ValueError(f"a relay path is at most {MAX_PATH} characters")
            path = f"{relay_id}/{state.path}" if state.path else relay_id
            reason = clip(state.stale_reason, MAX_REASON)
            relays.append(relay_pb2.RelayState(path=path, stale_reason=reason, lost_at=state.lost_at,
                                               revision=state.revision))  # fmt: skip
        return records, relays

    def keep(
        self, stream: object, records: list[InstanceRecord], relays: list[relay_pb2.RelayState] | None = None
    ) -> None:
        """Replace `stream`'s subtree with `records` (and its relays' states)."""
        self._subtrees[stream] = Subtree(records, relays or [], time.time())
        self.generation += 1

    def gone(self, stream: object) -> None:
        """`stream` ended: its subtree leaves the view after the TTL unless it reports again."""
        found = self._subtrees.get(stream)
        if found is not None:
            found.ended = time.monotonic()
            self.generation += 1

    def _live(self) -> list[Subtree]:
        now = time.monotonic()
        for stream, subtree in list(self._subtrees.items()):
            if subtree.ended is not None and now - subtree.ended > self.ttl:
                del self._subtrees[stream]
                self.generation += 1
        return list(self._subtrees.values())

    def records(self) -> list[InstanceRecord]:
        return [r for subtree in self._live() for r in subtree.records]

    def relays(self) -> list[tuple[relay_pb2.RelayState, bool, float]]:
        """Every relay below this server: (its state, whether its stream is open, when it reported)."""
        return [(state, subtree.ended is None, subtree.reported_at)
                for subtree in self._live() for state in subtree.relays]  # fmt: skip


class LocalInstances:
    """A server's own instances and its relays' (the fleet view's and the publisher's ``Instances``)."""

    def __init__(self, ledger: Ledger, relayed: RelayedFleet) -> None:
        self.ledger = ledger
        self.relayed = relayed

    def records(self) -> list[InstanceRecord]:
        """The ledger's, then the relays', each in a stable order (a publisher rewrites only the
        chunks that changed); the fleet view sorts what it shows."""
        return [*self.ledger.records(), *self.relayed.records()]

    def generation(self) -> int:
        return self.ledger.generation + self.relayed.generation

    def report(self, own: relay_pb2.RelayState | None = None) -> relay_pb2.FleetReport:
        """The whole subtree as a relay sends it up: its own instances at path "", each relayed
        instance at the path it is behind, and `own` state with the relays' below. Pure CPU: run it
        off the event loop."""
        by_path: dict[str, list[InstanceRecord]] = {}
        for r in self.ledger.records():
            by_path.setdefault("", []).append(r)
        for r in self.relayed.records():
            by_path.setdefault(r.via, []).append(replace(r, via=""))
        report = relay_pb2.FleetReport()
        for path, records in sorted(by_path.items()):
            for value in encode(records):
                report.chunks.add(path=path, summary=value)
        if own is not None:
            report.relays.append(own)
        report.relays.extend(state for state, connected, _ in self.relayed.relays() if connected)
        return report


__all__ = ["GONE_TTL", "LocalInstances", "RelayedFleet"]
