"""A flag's evaluations per minute: this replica's buckets, other replicas' published minutes, and
peer documents that are malformed or oversized never trusted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from confmesh.server.limits import MAX_VARIANTS_PER_FLAG
from confmesh.server.usage import (
    MAX_PUBLISHED_MINUTE_CELLS,
    FlagUsageStore,
    merge_series,
)

T0 = 1_800_000_000.0  # a minute boundary


def test_a_replicas_minutes_are_published_with_its_hour_and_merged_by_another() -> None:
    mine, theirs = FlagUsageStore(), FlagUsageStore()
    for minute, n in ((0, 3), (1, 5), (3, 2)):
        mine.record("prod", [("checkout", "on", n)], T0 + minute * 60 + 1)
        theirs.record("prod", [("checkout", "off", n * 10)], T0 + minute * 60 + 2)
    doc = theirs.hour_doc(int(T0 // 3600) * 3600)
    assert doc["prod/checkout"]["m"][str(int(T0) + 60)] == {"off": 50}
    merged = merge_series(mine.series("prod", "checkout", T0), [doc], "prod", "checkout", T0)
    assert merged == {
        int(T0): {"on": 3, "off": 30},
        int(T0) + 60: {"on": 5, "off": 50},
        int(T0) + 180: {"on": 2, "off": 20},
    }
    # The window cuts older minutes, from both sources.
    later = merge_series(mine.series("prod", "checkout", T0 + 120), [doc], "prod", "checkout", T0 + 120)
    assert list(later) == [int(T0) + 180]


def test_minute_detail_is_bounded_and_the_busiest_flags_keep_it() -> None:
    store = FlagUsageStore()
    flags = MAX_PUBLISHED_MINUTE_CELLS // 60 + 10
    for minute in range(60):
        counts = [(f"f{i}", "on", 1 + (i == 0) * 1000) for i in range(flags)]
        store.record("prod", counts, T0 + minute * 60)
    doc = store.hour_doc(int(T0 // 3600) * 3600)
    assert len(doc) == flags  # every flag keeps its totals
    assert "m" in doc["prod/f0"]  # the most evaluated keeps its minutes
    assert sum(len(slot) for row in doc.values() for slot in row.get("m", {}).values()) <= (
        MAX_PUBLISHED_MINUTE_CELLS
    )


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["prod/checkout", "prod/other", "x"]),
        junk
        | st.fixed_dictionaries({"m": junk})
        | st.fixed_dictionaries(
            {"m": st.dictionaries(st.sampled_from([str(int(T0)), "60", "x", str(int(T0) + 7)]), junk)}
        ),
        max_size=3,
    )
)
def test_whatever_a_peer_published_merging_never_fails_nor_invents_counts(doc: dict[str, object]) -> None:
    merged = merge_series({}, [doc], "prod", "checkout", T0 - 60)
    for start, variants in merged.items():
        assert start % 60 == 0 and start + 60 > T0 - 60
        assert len(variants) <= MAX_VARIANTS_PER_FLAG
        assert all(isinstance(v, str) and isinstance(n, int) and n > 0 for v, n in variants.items())


def test_a_published_count_too_large_for_a_number_is_skipped() -> None:
    """`1e999` is JSON a float cannot hold (Python reads it as infinity): skipped, not a crash."""
    from confmesh.merge import loads_json
    from confmesh.server.usage import merge_hour_docs

    doc = loads_json(
        b'{"prod/checkout": {"v": {"on": 1e999}, "f": 0, "l": 1, "m": {"1800000000": {"on": 1e999}}}}'
    )
    assert merge_hour_docs([], [doc], "prod") == []
    assert merge_series({}, [doc], "prod", "checkout", 0) == {}
