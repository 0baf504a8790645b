"""Flag evaluation counts reported by clients, aggregated and bounded.

Counts are kept per (environment, flag) in one-minute buckets for
`retention` seconds. Memory stays bounded whatever clients send: at most
`max_flags` flags are tracked and at most `max_cells` (bucket, variant)
counters in all (the least recently seen flags are dropped first), and each
flag tracks at most MAX_VARIANTS_PER_FLAG distinct variants (the rest are
counted as OTHER_VARIANT).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from confmesh.server.limits import MAX_VARIANTS_PER_FLAG, OTHER_VARIANT

BUCKET_SECONDS = 60


@dataclass
class _Track:
    first_seen: float
    last_seen: float
    buckets: deque[tuple[int, dict[str, int]]] = field(default_factory=deque)
    variants: set[str] = field(default_factory=set)
    cells: int = 0


@dataclass(frozen=True)
class UsageSummary:
    environment: str
    flag: str
    variants: dict[str, int]
    first_seen: float
    last_seen: float


class FlagUsageStore:
    def __init__(
        self, *, retention: float = 7 * 24 * 3600, max_flags: int = 20_000, max_cells: int = 500_000
    ) -> None:
        self.retention = retention
        self.max_flags = max_flags
        self.max_cells = max_cells
        self.cells = 0
        self._tracks: OrderedDict[tuple[str, str], _Track] = OrderedDict()

    def record(self, environment: str, counts: Iterable[tuple[str, str, int]], now: float) -> None:
        bucket = int(now // BUCKET_SECONDS) * BUCKET_SECONDS
        for flag, variant, count in counts:
            key = (environment, flag)
            track = self._tracks.get(key)
            if track is None:
                track = self._tracks[key] = _Track(now, now)
            self._tracks.move_to_end(key)
            track.last_seen = now
            if variant not in track.variants:
                if len(track.variants) >= MAX_VARIANTS_PER_FLAG:
                    variant = OTHER_VARIANT
                track.variants.add(variant)
            if not track.buckets or track.buckets[-1][0] != bucket:
                track.buckets.append((bucket, {}))
            slot = track.buckets[-1][1]
            if variant not in slot:
                track.cells += 1
                self.cells += 1
            slot[variant] = slot.get(variant, 0) + count
            while track.buckets and track.buckets[0][0] < now - self.retention:
                removed = len(track.buckets.popleft()[1])
                track.cells -= removed
                self.cells -= removed
        while len(self._tracks) > self.max_flags or (self.cells > self.max_cells and len(self._tracks) > 1):
            _, dropped = self._tracks.popitem(last=False)
            self.cells -= dropped.cells

    def summary(self, environment: str, window: float, now: float) -> list[UsageSummary]:
        since = now - (window or self.retention)
        out = []
        for (env, flag), track in self._tracks.items():
            if environment and env != environment:
                continue
            variants: dict[str, int] = {}
            for start, slot in track.buckets:
                if start + BUCKET_SECONDS > since:
                    for variant, n in slot.items():
                        variants[variant] = variants.get(variant, 0) + n
            if variants:
                out.append(UsageSummary(env, flag, variants, track.first_seen, track.last_seen))
        return sorted(out, key=lambda s: (s.environment, s.flag))
