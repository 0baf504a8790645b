"""Flag lifecycle: which flags are stale, and how old flags get (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from confmesh.flags.model import Flag


@dataclass(frozen=True)
class StaleFlag:
    environment: str
    flag: str
    reason: str


def stale_flags(
    environment: str,
    flags: Mapping[str, Flag],
    usage: Mapping[str, Mapping[str, int]],
    *,
    now: datetime,
    min_evaluations: int = 100,
) -> list[StaleFlag]:
    """Flags past their expiry date, and flags that served one variant to everyone.

    `usage` maps flag -> variant -> evaluations over the window of interest.
    """
    out = []
    for key in sorted(flags):
        flag = flags[key]
        if flag.expires is not None and flag.expires <= now:
            out.append(StaleFlag(environment, key, f"expired on {flag.expires.date().isoformat()}"))
            continue
        variants = {v: n for v, n in usage.get(key, {}).items() if n > 0}
        total = sum(variants.values())
        if len(variants) == 1 and total >= min_evaluations:
            (variant,) = variants
            shown = variant or "the caller's default"
            out.append(
                StaleFlag(environment, key, f"served only {shown!r} ({total} evaluations in the window)")
            )
    return out


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def flag_ages(flags: Iterable[Flag], now: datetime) -> list[float]:
    return [(now - f.created).total_seconds() for f in flags if f.created is not None]
