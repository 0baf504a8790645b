"""Auto-abort: a rollout whose canary instances NACK too much is aborted, by whichever replica sees
it first (exactly one transition commits)."""

from __future__ import annotations

import asyncio
import logging

from confmesh.errors import ConfmeshError, FailedPrecondition
from confmesh.keys import KeyLayout
from confmesh.server.etcd import Etcd
from confmesh.server.fleet import FleetView
from confmesh.server.plane import SnapshotPlane
from confmesh.server.record_kinds import ROLLOUTS
from confmesh.server.records import abort_rollout, canary_counts
from confmesh.server.store import ConfigStore

log = logging.getLogger(__name__)


class RolloutGuard:
    def __init__(
        self,
        etcd: Etcd,
        layout: KeyLayout,
        store: ConfigStore,
        plane: SnapshotPlane,
        fleet: FleetView,
        *,
        actor: str,
        interval: float = 1.0,
    ) -> None:
        self.etcd, self.layout, self.store, self.plane, self.fleet = etcd, layout, store, plane, fleet
        self.actor = actor
        self.interval = interval

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> None:
        """Abort each active rollout once too many of its canaries, fleet-wide, NACK its version."""
        for scope, (rollout, at) in list(self.store.records(ROLLOUTS).items()):
            if not rollout.active:
                continue
            if not self.fleet.covers(at):
                continue  # some replica has not published since this rollout changed
            version = self.plane.canary(scope).version
            n, _acked, nacked = canary_counts(rollout, version, self.fleet.records())
            if n == 0 or nacked / n <= rollout.max_nack_rate:
                continue
            why = (
                f"auto-abort: {nacked} of {n} canary instances rejected version {version} "
                f"(limit {rollout.max_nack_rate:.0%})"
            )
            # Conditioned on the record as this replica saw it: when several replicas decide at once,
            # or an operator promotes meanwhile, exactly one transition commits.
            try:
                await abort_rollout(self.etcd, self.layout, rollout, at, actor=self.actor, why=why)
            except FailedPrecondition:
                log.info("rollout %s of %s changed before this replica's abort; left as it is",
                         rollout.name, scope)  # fmt: skip
            except ConfmeshError as exc:
                log.warning("could not abort rollout %s of %s: %s", rollout.name, scope, exc.message)
            else:
                log.warning("rollout %s of %s: %s", rollout.name, scope, why)
