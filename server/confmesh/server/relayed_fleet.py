"""The instances relays below a server report: each relay's whole subtree, replaced by its next
report, kept for a TTL after its stream ends (so a relay restarting does not flap its subtree out
of the view) and then dropped. ``LocalInstances`` joins them with the server's own ledger: that is
what the server publishes as its fleet summary, and what a relay reports further up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from confmesh.server.fleet import decode, encode
from confmesh.server.ledger import InstanceRecord, Ledger
from confmesh.v1 import relay_pb2

# Bounds on one report: 200 chunks of at most 1,000 instances.
MAX_CHUNKS = 200
MAX_PATH = 256
GONE_TTL = 30.0


class RelayedFleet:
    def __init__(self, ttl: float = GONE_TTL) -> None:
        self.ttl = ttl
        # stream key -> (records, when the stream ended or None)
        self._subtrees: dict[object, tuple[list[InstanceRecord], float | None]] = {}
        self.generation = 0

    @staticmethod
    def decode(
        relay_id: str, report: relay_pb2.FleetReport, allowed: Callable[[InstanceRecord], bool]
    ) -> list[InstanceRecord]:
        """`report`'s records that `allowed` passes, each behind ``relay_id/<path>`` (ValueError:
        past the bounds). Pure CPU: run it off the event loop."""
        if len(report.chunks) > MAX_CHUNKS:
            raise ValueError(f"a fleet report takes at most {MAX_CHUNKS} chunks")
        records = []
        for chunk in report.chunks:
            if len(chunk.path) > MAX_PATH:
                raise ValueError(f"a relay path is at most {MAX_PATH} characters")
            via = f"{relay_id}/{chunk.path}" if chunk.path else relay_id
            records += [replace(r, via=via) for r in decode(relay_id, chunk.summary) if allowed(r)]
        return records

    def keep(self, stream: object, records: list[InstanceRecord]) -> None:
        """Replace `stream`'s subtree with `records`."""
        self._subtrees[stream] = (records, None)
        self.generation += 1

    def gone(self, stream: object) -> None:
        """`stream` ended: its subtree leaves the view after the TTL unless it reports again."""
        found = self._subtrees.get(stream)
        if found is not None:
            self._subtrees[stream] = (found[0], time.monotonic())
            self.generation += 1

    def records(self) -> list[InstanceRecord]:
        now = time.monotonic()
        for stream, (_, ended) in list(self._subtrees.items()):
            if ended is not None and now - ended > self.ttl:
                del self._subtrees[stream]
                self.generation += 1
        return [r for records, _ in self._subtrees.values() for r in records]


class LocalInstances:
    """A server's own instances and its relays' (the fleet view's and the publisher's ``Instances``)."""

    def __init__(self, ledger: Ledger, relayed: RelayedFleet) -> None:
        self.ledger = ledger
        self.relayed = relayed

    def records(self) -> list[InstanceRecord]:
        server_id = self.ledger.server_id
        relayed = [replace(r, server_id=server_id) for r in self.relayed.records()]
        return sorted([*self.ledger.records(), *relayed], key=InstanceRecord.sort_key)

    def generation(self) -> int:
        return self.ledger.generation + self.relayed.generation

    def report(self) -> relay_pb2.FleetReport:
        """The whole subtree as a relay sends it up: its own instances at path "", each relayed
        instance at the path it is behind. Pure CPU: run it off the event loop."""
        by_path: dict[str, list[InstanceRecord]] = {}
        for r in self.ledger.records():
            by_path.setdefault("", []).append(r)
        for r in self.relayed.records():
            by_path.setdefault(r.via, []).append(replace(r, via=""))
        report = relay_pb2.FleetReport()
        for path, records in sorted(by_path.items()):
            for value in encode(records):
                report.chunks.add(path=path, summary=value)
        return report


__all__ = ["GONE_TTL", "LocalInstances", "RelayedFleet"]
