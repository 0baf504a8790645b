"""One Watch stream's state, alone: the one-slot mailbox, what may be re-sent, how a stream ends."""

from __future__ import annotations

from confmesh import errors
from confmesh.keys import Scope
from confmesh.server.resolver import Resolved
from confmesh.server.watch_stream import SENT_MEMORY, Subscriber

SCOPE = Scope("prod", "orders")


def snap(version: int, hash_: str | None = None) -> Resolved:
    return Resolved(SCOPE, version, hash_ or f"h{version}", {"v": version}, {}, 0.0)


def test_a_newer_offer_replaces_one_not_yet_sent_and_an_old_one_is_ignored() -> None:
    sub = Subscriber(SCOPE, 0, "")
    sub.offer(snap(2))
    sub.offer(snap(3))
    assert sub.take() == snap(3) and sub.take() is None  # one pending at most: the newest
    sub.offer(snap(3))  # what it was just sent
    sub.offer(snap(2, "h3"))  # an older version with the same content
    assert sub.pending is None
    assert sub.sent == {3: "h3"}


def test_what_a_stream_was_sent_is_remembered_within_bounds() -> None:
    sub = Subscriber(SCOPE, 0, "")
    for v in range(1, SENT_MEMORY + 10):
        sub.offer(snap(v))
        sub.take()
    assert len(sub.sent) == SENT_MEMORY and min(sub.sent) == 10


def test_a_client_behind_is_offered_the_current_one_again_but_never_a_version_it_refused() -> None:
    sub = Subscriber(SCOPE, 5, "h5")
    assert sub.resend_if_behind(snap(7), 5, "h5") and sub.take() == snap(7)
    assert not sub.resend_if_behind(snap(7), 7, "h7")  # current: nothing to send
    sub.nacked.add(8)
    assert not sub.resend_if_behind(snap(8), 7, "h7")  # refused: the next change will be sent


def test_deltas_need_a_known_base_and_a_client_that_takes_them() -> None:
    fresh = Subscriber(SCOPE, 0, "")
    fresh.accept_delta = True
    assert fresh.delta_base() is None  # it runs nothing yet
    resumed = Subscriber(SCOPE, 4, "h4")
    assert resumed.delta_base() is None  # it did not ask for deltas
    resumed.accept_delta = True
    assert resumed.delta_base() == (4, "h4")
    legacy = Subscriber(SCOPE, 4, "h4", legacy=True)
    legacy.accept_delta = True
    assert legacy.delta_base() is None  # leafsum256-only clients get whole snapshots


def test_a_stream_ends_with_its_status_or_quietly() -> None:
    failed, closed = Subscriber(SCOPE, 0, ""), Subscriber(SCOPE, 0, "")
    failed.fail(errors.InvalidArgument("bad", code="empty_message"))
    closed.close()
    assert failed.ended and failed.error is not None and failed.error.code == "empty_message"
    assert closed.ended and closed.error is None
    assert failed.wakeup.is_set() and closed.wakeup.is_set()
