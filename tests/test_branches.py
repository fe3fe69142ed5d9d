"""Branches: editing any message (or regenerating any reply) keeps what came after it as the
previous version; Previous / Next version switch the whole conversation, remembered for the page,
the next send and the export; upstream always gets exactly the branch on screen."""

import json
import re

from tests.conftest import messages, textarea
from tests.fake_openrouter import error
from webapp import conversation


def send(client, text, cid="new", **fields):
    return client.post(f"/c/{cid}", data={"message": text, **fields})


def cid_of(response):
    return re.search(r"/c/([\w-]+)", response.headers["Location"]).group(1)


def replies(html):
    return re.findall(r'name="regenerate" value="([^"]+)"', html)


def texts(client, cid):
    return [t for _, t in messages(client.get(f"/c/{cid}").get_data(as_text=True))]


def sent(fake):
    return [conversation.item_text(i) for i in fake.requests[-1]["body"]["input"]]


def three_turns(client):
    cid = cid_of(send(client, "one"))
    send(client, "two", cid)
    send(client, "three", cid)
    return cid


def test_editing_the_first_of_three_turns_sends_one_message_and_switching_back_sends_them_all(client, fake):
    cid = three_turns(client)
    first_reply = replies(client.get(f"/c/{cid}").get_data(as_text=True))[0]
    editing = client.post(f"/c/{cid}/edit", data={"reply": first_reply}, follow_redirects=True)
    html = editing.get_data(as_text=True)
    assert textarea(html) == "one" and f'name="edit" value="{first_reply}"' in html  # the JS-off form
    send(client, "one, edited", cid, edit=first_reply)
    assert sent(fake) == ["one, edited"]
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    assert texts(client, cid) == ["one, edited", "Reply 1: one, edited"]
    assert re.search(r'<span data-role="versions">2 / 2</span>', html)
    assert 'aria-label="Previous version"' in html and 'aria-label="Next version"' in html
    switched = client.post(f"/c/{cid}/versions", data={"at": "0", "to": "0"})
    assert switched.status_code == 303
    assert texts(client, cid) == ["one", "Reply 1: one", "two", "Reply 2: two", "three", "Reply 3: three"]
    send(client, "four", cid)
    assert sent(fake) == ["one", "Reply 1: one", "two", "Reply 2: two", "three", "Reply 3: three", "four"]
    assert all(i.get("id") and i.get("status") for i in fake.requests[-1]["body"]["input"] if i["role"] == "assistant")
    exported = json.loads(client.get(f"/c/{cid}/export.json").data)
    assert len(exported["items"]) == 8  # the branch on screen
    client.post(f"/c/{cid}/versions", data={"at": "0", "to": "1"})
    assert texts(client, cid) == ["one, edited", "Reply 1: one, edited"]
    assert len(json.loads(client.get(f"/c/{cid}/export.json").data)["items"]) == 2


def test_regenerating_an_earlier_reply_makes_a_version_and_the_choice_is_remembered(client, fake):
    cid = three_turns(client)
    second_reply = replies(client.get(f"/c/{cid}").get_data(as_text=True))[1]
    send(client, "", cid, regenerate=second_reply)
    assert sent(fake) == ["one", "Reply 1: one", "two"]
    assert texts(client, cid)[-2:] == ["two", "Reply 2: two"] and len(texts(client, cid)) == 4
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    assert '<span data-role="versions">2 / 2</span>' in html
    client.post(f"/c/{cid}/versions", data={"at": "2", "to": "0"})
    assert len(texts(client, cid)) == 6  # reopening shows the branch chosen last


def test_nested_versions_survive_switching_above_them(client, fake):
    cid = three_turns(client)
    third = replies(client.get(f"/c/{cid}").get_data(as_text=True))[2]
    send(client, "three, b", cid, edit=third)  # a version at message 4
    first = replies(client.get(f"/c/{cid}").get_data(as_text=True))[0]
    send(client, "one, b", cid, edit=first)  # a version at message 0
    client.post(f"/c/{cid}/versions", data={"at": "0", "to": "0"})
    assert texts(client, cid)[-2] == "three, b"  # the nested choice came back with its branch
    client.post(f"/c/{cid}/versions", data={"at": "4", "to": "0"})
    assert texts(client, cid)[-2] == "three"


def test_a_stale_version_switch_or_edit_is_refused(client, fake):
    cid = three_turns(client)
    assert client.post(f"/c/{cid}/versions", data={"at": "0", "to": "1"}).status_code == 404
    assert client.post(f"/c/{cid}/versions", data={"at": "x", "to": "1"}).status_code == 404
    response = send(client, "nope", cid, edit="msg_not_here")
    assert response.status_code == 409 and textarea(response.get_data(as_text=True)) == "nope"


def test_another_browser_cannot_switch_versions(make_app, fake):
    app = make_app()
    owner, other = app.test_client(), app.test_client()
    cid = three_turns(owner)
    assert other.post(f"/c/{cid}/versions", data={"at": "0", "to": "0"}).status_code == 404


def test_a_failed_edit_of_an_earlier_message_keeps_the_text_and_changes_nothing(client, fake):
    cid = three_turns(client)
    first = replies(client.get(f"/c/{cid}").get_data(as_text=True))[0]
    fake.queue(error(500, "boom"))
    send(client, "one, edited", cid, edit=first)
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    assert textarea(html) == "one, edited" and f'name="edit" value="{first}"' in html
    assert len(texts(client, cid)) == 6 and "data-role=\"versions\"" not in html


def three_turns_with_a_second_version_of_the_second():
    """A conversation in memory: three turns, then the second message edited (two versions of it)."""
    conv = conversation.new()
    for n in range(3):
        conversation.add_turn(conv, f"q{n}", f"msg_{n}", "completed", f"a{n}")
    conversation.fork(conv, 2)
    conversation.add_turn(conv, "q1b", "msg_b", "completed", "a1b")
    return conv


def test_branches_are_pure_data():
    conv = three_turns_with_a_second_version_of_the_second()
    assert [conversation.item_text(i) for i in conv["items"]] == ["q0", "a0", "q1b", "a1b"]
    assert conversation.versions(conv, 2) == (1, 2)
    assert conversation.switch(conv, 2, 0)
    assert [conversation.item_text(i) for i in conv["items"]][2:] == ["q1", "a1", "q2", "a2"]
    assert conversation.switch(conv, 2, 5) is False
    assert len(conversation.all_items(conv)) == 8


def test_fork_and_switch_never_change_the_forks_of_the_copy_they_were_given_from():
    # The store hands out a history whose forks are shared with the copy it keeps (store._copy):
    # fork and switch copy only what they change, and must never change that.
    import copy

    conv = three_turns_with_a_second_version_of_the_second()
    conversation.fork(conv, 0)
    conversation.add_turn(conv, "q0b", "msg_c", "completed", "a0b")
    kept = copy.deepcopy(conv)
    for step in (lambda c: conversation.fork(c, 0), lambda c: conversation.switch(c, 0, 0),
                 lambda c: conversation.fork(c, 2),
                 # a fork that came in with the version switched in, then changed
                 lambda c: conversation.switch(c, 0, 0) and conversation.fork(c, 2)):
        given = {**conv, "items": list(conv["items"]), "meta": list(conv["meta"])}  # as store._copy
        step(given)
        assert conv == kept
    conversation.switch(conv, 0, 0)
    conversation.fork(conv, 2)  # the version switched in carries its own fork at 2: a third version
    assert conversation.versions(conv, 2) == (2, 3) and conversation.versions(conv, 0) == (0, 2)


def test_versions_not_on_screen_are_stowed_so_the_history_holds_only_the_branch_on_screen(client, fake):
    store = client.application.extensions["chat_store"]
    cid = three_turns(client)
    one_branch = len(store.backend.get_blob(store.prefix + cid))
    for n in range(12):  # twelve versions of the whole conversation
        first = replies(client.get(f"/c/{cid}").get_data(as_text=True))[0]
        send(client, f"one, version {n} " + "long words " * 50, cid, edit=first)
        client.post(f"/c/{cid}/versions", data={"at": "0", "to": "0"})  # back to the three turns
    record = store.backend.decode(store.backend.get_blob(store.prefix + cid))
    versions = record["forks"]["0"]["versions"]
    assert len(versions) == 13 and versions[0] is None  # the original on screen
    assert all(set(v) == {"ref"} for v in versions[1:])  # the rest: references only
    # Opening or sending reads no more than the branch on screen (and a line per version).
    assert len(store.backend.get_blob(store.prefix + cid)) < one_branch + 13 * 80
    send(client, "four", cid)
    assert len(fake.requests[-1]["body"]["input"]) == 7
    client.post(f"/c/{cid}/versions", data={"at": "0", "to": "5"})
    assert texts(client, cid)[0].startswith("one, version 4 ")
    record = store.backend.decode(store.backend.get_blob(store.prefix + cid))
    refs = [v["ref"] for v in record["forks"]["0"]["versions"] if v]
    assert refs and all(store.get_branch(cid, ref) for ref in refs)
    client.post(f"/c/{cid}/delete")
    assert [store.get_branch(cid, ref) for ref in refs] == [None] * len(refs)


def test_stowed_versions_outlive_their_conversation_and_purge_reclaims_them_after(tmp_path):
    import time

    from cachelib.file import FileSystemCache

    from webapp.purge import purge
    from webapp.store import FileBackend, Store

    store = Store(FileBackend(FileSystemCache(str(tmp_path), threshold=0), str(tmp_path / "locks")), ttl=100)
    with store.update("c1") as conv:
        conversation.add_turn(conv, "q", "msg_1", "completed", "a")
    with store.update("c1") as conv:
        conversation.fork(conv, 0)
        conversation.add_turn(conv, "q2", "msg_2", "completed", "a2")
    ref = store.history("c1")["forks"]["0"]["versions"][0]["ref"]
    assert store.get_branch("c1", ref)["items"][0]["content"][0]["text"] == "q"
    purge(store, now=time.time() + 150)
    assert store.history("c1") is None and store.get_branch("c1", ref) is not None
    purge(store, now=time.time() + 250)
    assert store.get_branch("c1", ref) is None
