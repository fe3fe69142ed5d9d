"""Which browser owns which conversation, without Flask: a session mapping and a file store."""

import pytest
from cachelib.file import FileSystemCache

from webapp.ownership import Browser, NotYours
from webapp.store import FileBackend, Store


class Session(dict):
    sid = "session-id-1"


def a_store(tmp_path):
    return Store(FileBackend(FileSystemCache(str(tmp_path), threshold=0), str(tmp_path / "locks")), 3600)


def test_a_browser_gets_its_record_at_its_first_send_with_a_new_session_id(tmp_path):
    rotated = []
    me = Browser(a_store(tmp_path), Session(), lambda: rotated.append(True))
    assert me.id() is None and me.listed() == [] and me.latest() is None and rotated == []
    me.touch("c1", "a first message")
    assert me.id() and rotated == [True]  # made once, the session id issued anew
    me.touch("c2", "a second one")
    me.touch("c1", "again")  # written in again: first
    assert [e["id"] for e in me.listed()] == ["c1", "c2"] and rotated == [True]
    assert me.listed()[1]["title"] == "a second one"


def test_another_browsers_conversation_is_the_same_404_as_none(tmp_path):
    store = a_store(tmp_path)
    mine, theirs = Browser(store, Session(), lambda: None), Browser(store, Session(), lambda: None)
    mine.touch("mine", "hello")
    theirs.touch("theirs", "hi")
    assert mine.owned("mine")["id"] == "mine" and mine.target("mine") == "mine"
    for cid in ("theirs", "nobody"):
        with pytest.raises(NotYours) as refused:
            mine.owned(cid)
        assert refused.value.code == 404
    assert mine.target(None) == "mine" and mine.target("new") is None
    mine.rename("mine", "Renamed")
    mine.forget("theirs")  # not listed here: changes nothing
    assert mine.listed() == [dict(mine.listed()[0], title="Renamed")] and theirs.owned("theirs")
    mine.forget("mine")
    assert mine.listed() == []


def locks_taken(store, monkeypatch):
    """The keys whose lock `store` takes from now on."""
    taken, real = [], store.backend.lock
    monkeypatch.setattr(store.backend, "lock", lambda key, timeout: taken.append(key) or real(key, timeout))
    return taken


def test_a_send_in_the_conversation_already_on_top_does_not_lock_or_write_the_list(tmp_path, monkeypatch):
    store = a_store(tmp_path)
    me = Browser(store, Session(), lambda: None)
    me.touch("c2", "older")
    me.touch("c1", "newer")
    bid, taken = me.id(), locks_taken(store, monkeypatch)
    me = Browser(store, me.session, lambda: None)  # the next request
    assert me.target("c1") == "c1"  # a send names its conversation: the list is read
    me.touch("c1", "again")
    assert taken == []  # already on top: nothing to change, no lock taken
    me.target("c2")
    me.touch("c2", "again")  # not on top: moved there, under the list's lock
    assert taken == [store.index_prefix + bid] and [e["id"] for e in me.listed()] == ["c2", "c1"]


def test_a_list_past_half_its_lifetime_is_written_again_even_when_nothing_moves(tmp_path):
    store = a_store(tmp_path)
    me = Browser(store, Session(), lambda: None)
    me.touch("c1", "hello")
    key = store.index_prefix + me.id()
    store.backend.set(key, {"convs": store.conversations(me.id()), "saved": 1.0}, store.ttl)  # long ago
    me.target("c1")
    me.touch("c1", "again")  # on top, but its lifetime must start again: a browser that only ever
    assert store.backend.get(key)["saved"] > 1.0  # writes in its top conversation keeps its list
