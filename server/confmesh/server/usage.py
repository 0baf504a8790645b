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
from typing import Any

from confmesh.server.limits import MAX_VARIANTS_PER_FLAG, OTHER_VARIANT

BUCKET_SECONDS = 60
HOUR = 3600
# What one replica publishes per hour for the fleet (see hour_doc): the (flag, variant) cells of
# the most evaluated flags, and their (minute, variant) cells for the charts, about 1 MiB of JSON
# at most.
MAX_PUBLISHED_CELLS = 20_000
MAX_PUBLISHED_MINUTE_CELLS = 20_000
# How far back a flag's evaluations over time go (one bucket a minute).
MAX_SERIES_SECONDS = 24 * HOUR


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
        # Hours (start, in seconds) with counts not yet published to the fleet (hour_doc).
        self.touched: set[int] = set()

    def record(self, environment: str, counts: Iterable[tuple[str, str, int]], now: float) -> None:
        bucket = int(now // BUCKET_SECONDS) * BUCKET_SECONDS
        self.touched.add(int(now // HOUR) * HOUR)
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

    def series(self, environment: str, flag: str, since: float) -> dict[int, dict[str, int]]:
        """One flag's counts per minute (bucket start -> variant -> evaluations) from `since` on."""
        track = self._tracks.get((environment, flag))
        if track is None:
            return {}
        return {start: dict(slot) for start, slot in track.buckets if start + BUCKET_SECONDS > since}

    def hour_doc(self, hour: int) -> dict[str, dict[str, Any]]:
        """This replica's counts of one hour, as it publishes them for the fleet:
        ``{"env/flag": {"v": {variant: n}, "f": first seen, "l": last seen, "m": {minute start:
        {variant: n}}}}`` (minute precision), at most MAX_PUBLISHED_CELLS variant cells and
        MAX_PUBLISHED_MINUTE_CELLS minute cells, the most evaluated flags first."""
        rows: list[tuple[int, str, dict[str, int], float, float, dict[str, dict[str, int]]]] = []
        for (env, flag), track in self._tracks.items():
            variants: dict[str, int] = {}
            minutes: dict[str, dict[str, int]] = {}
            first = last = 0.0
            for start, slot in track.buckets:
                if hour <= start < hour + HOUR:
                    for variant, n in slot.items():
                        variants[variant] = variants.get(variant, 0) + n
                    minutes[str(start)] = dict(slot)
                    first = first or float(start)
                    last = float(start + BUCKET_SECONDS)
            if variants:
                rows.append((sum(variants.values()), f"{env}/{flag}", variants, first, last, minutes))
        rows.sort(key=lambda r: (-r[0], r[1]))
        doc: dict[str, dict[str, Any]] = {}
        cells = minute_cells = 0
        for _, key, variants, first, last, minutes in rows:
            cells += len(variants)
            if cells > MAX_PUBLISHED_CELLS:
                break
            doc[key] = {"v": variants, "f": first, "l": last}
            minute_cells += sum(len(slot) for slot in minutes.values())
            if minute_cells <= MAX_PUBLISHED_MINUTE_CELLS:
                doc[key]["m"] = minutes
        return doc


def merge_hour_docs(
    local: list[UsageSummary], docs: Iterable[dict[str, Any]], environment: str
) -> list[UsageSummary]:
    """`local` (this replica's summary) with other replicas' published hours added in."""
    merged: dict[tuple[str, str], UsageSummary] = {(s.environment, s.flag): s for s in local}
    for doc in docs:
        for key, row in doc.items():
            env, _, flag = key.partition("/")
            if not flag or (environment and env != environment):
                continue
            try:
                variants = {str(v): int(n) for v, n in dict(row["v"]).items()}
                first, last = float(row["f"]), float(row["l"])
            except (KeyError, TypeError, ValueError, OverflowError):
                continue
            old = merged.get((env, flag))
            if old is not None:
                for v, n in old.variants.items():
                    variants[v] = variants.get(v, 0) + n
                first, last = min(first, old.first_seen), max(last, old.last_seen)
            merged[(env, flag)] = UsageSummary(env, flag, variants, first, last)
    return sorted(merged.values(), key=lambda s: (s.environment, s.flag))


def merge_series(
    local: dict[int, dict[str, int]],
    docs: Iterable[dict[str, Any]],
    environment: str,
    flag: str,
    since: float,
) -> dict[int, dict[str, int]]:
    """`local` (this replica's minutes of one flag) with other replicas' published minutes added in.

    Peer documents are read defensively: a malformed row or count is skipped, never trusted."""
    merged = {start: dict(slot) for start, slot in local.items()}
    key = f"{environment}/{flag}"
    for doc in docs:
        row = doc.get(key)
        minutes = row.get("m") if isinstance(row, dict) else None
        if not isinstance(minutes, dict):
            continue
        for start_text, slot in minutes.items():
            try:
                start = int(start_text)
                counts = {str(v): int(n) for v, n in dict(slot).items()}
            except (TypeError, ValueError, OverflowError):
                continue
            if start % BUCKET_SECONDS or start + BUCKET_SECONDS <= since:
                continue
            target = merged.setdefault(start, {})
            for variant, n in counts.items():
                if n > 0 and (variant in target or len(target) < MAX_VARIANTS_PER_FLAG):
                    target[variant] = target.get(variant, 0) + n
    return dict(sorted(merged.items()))
