"""The relay: a turn's events reach every follower, from the first or from the last one it had, by id."""

import threading

from tests.conftest import under_gevent
from webapp.turns.events import ALIVE, DELTA, DONE, TICK
from webapp.turns.relay import LocalRelay, coalesced


def test_a_follower_that_fell_behind_gets_adjacent_deltas_as_one_with_the_last_ones_id():
    events = [("1", DELTA, "a"), ("2", DELTA, "b"), ("3", ALIVE, None), ("4", DELTA, "c"), ("5", DELTA, "d"),
              ("6", DONE, {})]
    assert coalesced(events) == [("2", DELTA, "ab"), ("3", ALIVE, None), ("5", DELTA, "cd"), ("6", DONE, {})]
    assert coalesced(events[3:]) == [("5", DELTA, "cd"), ("6", DONE, {})]


def test_a_follower_resumes_after_the_last_event_it_had_with_no_gap_and_no_repeat():
    relay = LocalRelay()
    for piece in ("one ", "two ", "three"):
        relay.publish(DELTA, piece)
    relay.publish(DONE, {"text": "one two three"}, final=True)
    everything = list(relay.listen())
    assert everything == [("3", DELTA, "one two three"), ("4", DONE, {"text": "one two three"})]
    assert list(relay.listen(after="1")) == [("3", DELTA, "two three"), ("4", DONE, {"text": "one two three"})]
    assert list(relay.listen(after="3")) == [("4", DONE, {"text": "one two three"})]
    assert list(relay.listen(after="nonsense")) == everything  # an id it never gave: from the start
    assert relay.before("2") == ("2", "one two ") and relay.before("9") == (None, "")
    assert relay.position() == ("4", "one two three")  # what a progress save records
    relay.publish(DELTA, "after the end")  # a settled turn takes nothing more
    assert list(relay.listen()) == everything


def test_followers_wait_for_new_events_without_polling():
    relay = LocalRelay()
    relay.publish(DELTA, "first")
    seen = []

    def follow():
        for event in relay.listen(tick=30.0):  # a long tick: only a publish can wake it in time
            seen.append(event)

    follower = threading.Thread(target=follow)
    follower.start()
    relay.publish(DELTA, " second")
    relay.publish(DONE, {}, final=True)
    follower.join(5)
    assert not follower.is_alive()
    assert "".join(data for _, kind, data in seen if kind == DELTA) == "first second"
    assert seen[-1] == ("3", DONE, {})
    assert relay.wait(0)


def test_a_quiet_relay_ticks_so_the_stream_can_send_a_keep_alive():
    relay = LocalRelay()
    follower = relay.listen(tick=0.01)
    assert next(follower) == (None, TICK, None)


def test_under_gevent_waking_a_follower_never_lets_other_greenlets_run_under_the_relay_lock():
    """A Condition over gevent's plain lock asks "do I hold it?" by trying it without blocking, and
    gevent answers a failed try by running every other ready greenlet first: each word published to
    a turn with a follower (a reloaded page, a second tab, another host's Mirror) held the relay's
    lock for a round of the event loop."""
    seen, kinds = under_gevent("""
        import gevent
        from webapp.turns.relay import LocalRelay
        relay = LocalRelay()
        got = []
        gevent.spawn(lambda: got.extend(relay.listen(tick=5.0)))
        gevent.sleep(0.05)  # the follower waits on the relay
        seen = []
        gevent.spawn(lambda: seen.append(relay._cond._lock.locked()))  # ready at the next switch
        relay.publish("delta", "hello")  # wakes the follower
        gevent.sleep(0)
        relay.publish("done", {}, final=True)
        gevent.sleep(0.05)
        print([seen, [kind for _, kind, _ in got]])
    """)
    assert seen == [False] and kinds == ["delta", "done"]
