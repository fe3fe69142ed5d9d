"""Several conversations per browser, the model picker, settings, usage and cost, the context budget,
export and import: the JS-off forms (plain posts, as a browser without script sends them) through
Flask's test client, and a real gunicorn where separate processes matter, all against the strict
fake OpenRouter."""

import hashlib
import json
import os
import re
import secrets
import threading
import time
from html import unescape
from io import BytesIO

import pytest

from tests.conftest import alert, messages, textarea
from tests.fake_openrouter import MODELS, TINY_MODEL, error, raw, reply
from tests.serving import Browser, csrf_token_in
from tests.sse import sse_events

CID_URL = re.compile(r"^/c/([A-Za-z0-9_-]+)(#.*)?$")
CONTEXT_ERROR = ("This endpoint's maximum context length is 200000 tokens. However, you requested about "
                 "210000 tokens (201000 of text input, 9000 in the output). Please reduce the length.")


# --- helpers ----------------------------------------------------------------------------------------

def cid_in(location):
    match = CID_URL.match(location)
    assert match, f"not a conversation URL: {location!r}"
    return match.group(1)


def start(client, text="hello", **fields):
    """A JS-off first send from an empty chat (the form posts to /c/new); the new conversation's id."""
    response = client.post("/c/new", data={"message": text, **fields})
    assert response.status_code == 303, response.get_data(as_text=True)
    return cid_in(response.headers["Location"])


def send(client, cid, text, **fields):
    response = client.post(f"/c/{cid}", data={"message": text, **fields})
    assert response.status_code == 303, response.get_data(as_text=True)
    assert cid_in(response.headers["Location"]) == cid  # Post/Redirect/Get back to its own page
    return response


def get(client, path, status=200):
    response = client.get(path)
    assert response.status_code == status, (path, response.status_code)
    return response.get_data(as_text=True)


def sidebar(html):
    """The conversation list as (id, title, is_current), in page order."""
    nav = re.search(r'<nav aria-label="Conversations">(.*?)</nav>', html, re.S)
    assert nav, "no <nav aria-label=\"Conversations\">"
    return [(cid, unescape(title).strip(), bool(current)) for cid, current, title in re.findall(
        r'<a href="/c/([^"/]+)"( aria-current="page")?>(.*?)</a>', nav.group(1), re.S)]


def composer(html):
    match = re.search(r'<form id="composer".*?</form>', html, re.S)
    assert match, "no chat form"
    return match.group(0)


def model_options(html):
    """The model picker inside the chat form: [(group, id, label, selected)]."""
    select = re.search(r'<select id="model" name="model"[^>]*>(.*?)</select>', composer(html), re.S)
    assert select, 'no <select name="model"> in the chat form'
    found = []
    for group, body in re.findall(r'<optgroup label="([^"]*)">(.*?)</optgroup>', select.group(1), re.S):
        for value, attrs, label in re.findall(r'<option value="([^"]*)"([^>]*)>(.*?)</option>', body, re.S):
            found.append((unescape(group), unescape(value), unescape(label).strip(),
                          re.search(r"\sselected\b", attrs) is not None))
    return found


def selected_model(html):
    chosen = [value for _, value, _, selected in model_options(html) if selected]
    assert len(chosen) == 1, chosen
    return chosen[0]


def by_role(html, role):
    return [unescape(re.sub(r"<[^>]+>", "", text)).strip()
            for text in re.findall(rf'data-role="{role}"[^>]*>(.*?)</p>', html, re.S)]


def instructions_box(html):
    match = re.search(r'<textarea id="instructions" name="instructions"[^>]*>(.*?)</textarea>', html, re.S)
    assert match, 'no <textarea name="instructions">'
    return unescape(match.group(1))


def store_of(app):
    return app.extensions["chat_store"]


def stored(app, cid):
    """The history as stored (decoded from the store itself, not the process's kept copy)."""
    store = store_of(app)
    blob = store.backend.get_blob("conv:" + cid)
    return store.backend.decode(blob) if blob is not None else None


def record_store(app, monkeypatch):
    """Every key the store reads or writes from now on: [(operation, key)]."""
    backend, seen = store_of(app).backend, []
    for op in ("get", "set", "delete", "get_blob", "set_blob"):  # histories go as encoded blobs
        original = getattr(backend, op)

        def wrapper(key, *args, _op=op.removesuffix("_blob"), _original=original, **kwargs):
            seen.append((_op, key))
            return _original(key, *args, **kwargs)
        monkeypatch.setattr(backend, op, wrapper)
    return seen


def token_for(client, path):
    return csrf_token_in(get(client, path))


def with_tiny(fake):
    fake.models = {"data": MODELS["data"] + [TINY_MODEL]}




# --- a URL per conversation, and the list of them -------------------------------------------------------

def test_nothing_is_stored_until_the_first_send_and_get_slash_opens_an_empty_chat(app, monkeypatch):
    client = app.test_client()
    seen = record_store(app, monkeypatch)
    for path in ("/", "/new", "/"):
        html = get(client, path)
        assert 'action="/c/new"' in composer(html)
        assert sidebar(html) == [] and "No conversations yet." in html
        assert messages(html) == []
    assert client.post("/new").status_code == 303  # New chat with nothing open: still nothing stored
    assert not [key for op, key in seen if op == "set" and key.startswith(("conv:", "browser:", "turn:"))]


def test_a_no_js_send_redirects_to_its_own_unguessable_url_and_slash_opens_the_latest(client, fake):
    first = start(client, "first topic")
    second = start(client, "second topic")
    for cid in (first, second):
        assert len(cid) >= 22 and re.fullmatch(r"[A-Za-z0-9_-]+", cid)  # ~128 random bits, URL-safe
    assert first != second
    assert messages(get(client, f"/c/{first}")) == [("user", "first topic"),
                                                     ("assistant", "Reply 1: first topic")]
    assert messages(get(client, "/"))[0] == ("user", "second topic")  # the most recent one
    send(client, first, "back to the first")
    html = get(client, "/")
    assert messages(html)[-1] == ("assistant", "Reply 2: back to the first")
    assert 'action="/c/%s"' % first in composer(html)
    assert [len(r["body"]["input"]) for r in fake.requests] == [1, 1, 3]


def test_the_sidebar_lists_newest_activity_first_titled_from_the_first_message(client):
    long_text = "Why is the sky blue at noon but red at sunset, and what does Rayleigh scattering have to do with it?"
    a = start(client, long_text)
    b = start(client, "Short one")
    c = start(client, "  spaced\n\nout   title  ")
    html = get(client, f"/c/{b}")
    listed = sidebar(html)
    assert [cid for cid, _, _ in listed] == [c, b, a]
    assert [current for _, _, current in listed] == [False, True, False]  # aria-current: the open one
    titles = dict((cid, title) for cid, title, _ in listed)
    assert titles[b] == "Short one" and titles[c] == "spaced out title"
    assert long_text.startswith(titles[a].rstrip("…")) and titles[a].endswith("…") and len(titles[a]) <= 60
    send(client, a, "more")  # activity moves it to the top
    assert [cid for cid, _, _ in sidebar(get(client, "/"))] == [a, c, b]
    assert [current for _, _, current in sidebar(get(client, "/"))] == [True, False, False]


def test_new_chat_keeps_the_old_conversation_and_opens_an_empty_one(client, fake):
    old = start(client, "old topic")
    response = client.post("/new")
    assert response.status_code == 303
    html = get(client, response.headers["Location"])
    assert messages(html) == [] and 'action="/c/new"' in composer(html)
    assert sidebar(html) == [(old, "old topic", False)]  # still listed, not the open one
    new = start(client, "new topic")
    assert new != old
    assert [cid for cid, _, _ in sidebar(get(client, "/"))] == [new, old]
    assert messages(get(client, f"/c/{old}")) == [("user", "old topic"), ("assistant", "Reply 1: old topic")]
    assert len(fake.requests[-1]["body"]["input"]) == 1


def test_rename_through_a_page_behind_a_link_named_rename(client):
    cid = start(client, "original title")
    html = get(client, f"/c/{cid}")
    assert re.search(rf'<a href="/c/{cid}/rename">Rename</a>', html)
    form = get(client, f"/c/{cid}/rename")
    assert re.search(r'<input[^>]*name="title"[^>]*value="original title"', form)
    assert re.search(r'<button type="submit">Rename</button>', form)
    response = client.post(f"/c/{cid}/rename", data={"title": "  My   renamed\tchat "})
    assert response.status_code == 303 and cid_in(response.headers["Location"]) == cid
    html = get(client, f"/c/{cid}")
    assert sidebar(html) == [(cid, "My renamed chat", True)]
    assert "<title>My renamed chat · Chat</title>" in html
    send(client, cid, "another message")  # a later turn keeps the chosen title
    assert sidebar(get(client, "/"))[0][1] == "My renamed chat"
    for bad in ("   ", "x" * 201):
        refused = client.post(f"/c/{cid}/rename", data={"title": bad})
        assert refused.status_code == 400 and "1 to 200 characters" in refused.get_data(as_text=True)
    assert sidebar(get(client, "/"))[0][1] == "My renamed chat"


BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_rename_strips_bidirectional_overrides(client):
    cid = start(client, "original title")
    response = client.post(f"/c/{cid}/rename", data={"title": "invoice\u202e\u2066fdp.exe\u2069 \u200fnow"})
    assert response.status_code == 303
    html = get(client, f"/c/{cid}")
    assert sidebar(html) == [(cid, "invoicefdp.exe now", True)]
    assert '<h2 id="conversation-title">invoicefdp.exe now</h2>' in html
    assert not any(ch in html for ch in BIDI)
    refused = client.post(f"/c/{cid}/rename", data={"title": f" {BIDI} "})  # nothing left: no title
    assert refused.status_code == 400 and "1 to 200 characters" in refused.get_data(as_text=True)
    assert sidebar(get(client, "/"))[0][1] == "invoicefdp.exe now"


def test_a_first_message_with_a_bidi_override_titles_the_chat_without_it(client, fake):
    cid = start(client, "look at \u202egnp.exe\u202c please")
    html = get(client, f"/c/{cid}")
    assert sidebar(html) == [(cid, "look at gnp.exe please", True)]
    assert '<h2 id="conversation-title">look at gnp.exe please</h2>' in html
    assert messages(html)[0] == ("user", "look at \u202egnp.exe\u202c please")  # the message itself is kept
    assert fake.requests[-1]["body"]["input"][0]["content"][0]["text"] == "look at \u202egnp.exe\u202c please"
    # The script's send titles a new chat the same way.
    events = sse_events(client.post("/c/new/turns", data={"message": "\u2067js\u2069 send"}).get_data(as_text=True))
    assert dict(events).get("done") is not None
    assert sidebar(get(client, "/"))[0][1] == "js send"


def test_delete_asks_on_a_page_then_removes_it_from_the_store_and_the_sidebar(app, client):
    keep = start(client, "keep me")
    gone = start(client, "delete me")
    html = get(client, f"/c/{gone}")
    # The button named Delete leads (JS off) to a confirmation page whose button is also Delete.
    # A link (a GET form would leave the page's URL ending in "?"), shown as a button.
    form = re.search(rf'<a href="/c/{gone}/delete" role="button"[^>]*>Delete</a>', html)
    assert form, "no Delete button leading to the confirmation page"
    confirm = get(client, f"/c/{gone}/delete")
    assert re.search(rf'<form method="post" action="/c/{gone}/delete">', confirm)
    assert re.search(r'<button type="submit"[^>]*>Delete</button>', confirm)
    assert stored(app, gone) is not None  # asking deletes nothing
    response = client.post(f"/c/{gone}/delete")
    assert response.status_code == 303
    assert stored(app, gone) is None and store_of(app).load_pending(gone) is None
    html = get(client, response.headers["Location"])
    assert [cid for cid, _, _ in sidebar(html)] == [keep]
    assert "delete me" not in html
    for path in (f"/c/{gone}", f"/c/{gone}/export.json", f"/c/{gone}/rename", f"/c/{gone}/delete"):
        assert client.get(path).status_code == 404
    assert client.post(f"/c/{gone}", data={"message": "hello?"}).status_code == 404
    assert messages(get(client, f"/c/{keep}"))[0] == ("user", "keep me")


def test_two_conversations_sent_to_alternately_each_keep_their_own_history(client, fake):
    a = start(client, "A1")
    b = start(client, "B1")
    send(client, a, "A2")
    send(client, b, "B2")
    send(client, a, "A3")
    assert [t for role, t in messages(get(client, f"/c/{a}")) if role == "user"] == ["A1", "A2", "A3"]
    assert [t for role, t in messages(get(client, f"/c/{b}")) if role == "user"] == ["B1", "B2"]
    users = [[part["text"] for item in r["body"]["input"] if item["role"] == "user" for part in item["content"]]
             for r in fake.requests]
    assert users == [["A1"], ["B1"], ["A1", "A2"], ["B1", "B2"], ["A1", "A2", "A3"]]


# --- another browser's conversation, or an unknown id: 404 everywhere, nothing sent ------------------

ROUTES = [
    ("GET", "/c/{cid}"), ("POST", "/c/{cid}"), ("POST", "/c/{cid}/turns"),
    ("GET", "/c/{cid}/turns/{turn}"), ("POST", "/c/{cid}/stop"),
    ("GET", "/c/{cid}/rename"), ("POST", "/c/{cid}/rename"),
    ("GET", "/c/{cid}/delete"), ("POST", "/c/{cid}/delete"), ("POST", "/c/{cid}/drop"),
    ("GET", "/c/{cid}/export.md"), ("GET", "/c/{cid}/export.json"),
    ("POST", "/c/{cid}/edit"), ("POST", "/c/{cid}/edit/cancel"),
]


def start_streaming(client, cid, text):
    """A JS send whose reply the fake holds after its first words: returns (response iterator, turn)."""
    token = token_for(client, f"/c/{cid}")
    response = client.post(f"/c/{cid}/turns", data={"message": text, "csrf_token": token}, csrf=False,
                           headers={"X-CSRFToken": token, "Accept": "text/event-stream"}, buffered=False)
    assert response.status_code == 200
    chunks, buffer = iter(response.response), ""
    for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        if '"turn"' in buffer and "event: delta" in buffer:
            break
    turn = re.search(r'"turn": "([^"]+)"', buffer).group(1)
    return response, chunks, turn


@pytest.mark.parametrize("whose", ["another browser's", "an unknown id"])
def test_every_route_of_a_conversation_that_is_not_this_browsers_is_a_404(app, fake, whose):
    alice = app.test_client()
    cid = start(alice, "alice's secret")
    gate = threading.Event()
    fake.queue(reply("alice's second answer", gate=gate, chunks=["alice's", " second answer"]))
    response, chunks, turn = start_streaming(alice, cid, "alice asks again")
    try:
        if whose == "an unknown id":
            intruder, target = alice, secrets.token_urlsafe(18)  # alice herself, with an id she does not own
        else:
            intruder, target = app.test_client(), cid
            start(intruder, "bob's own chat")  # bob has conversations too: they do not open alice's
        sent_before = len(fake.requests)
        form = {"message": "intruder", "title": "pwned", "turn": turn, "model": "openai/o4-mini",
                "instructions": "leak", "regenerate": "", "edit": ""}
        wrong = []
        for method, pattern in ROUTES + [("GET", "/turns/{turn}")] * (whose != "an unknown id"):
            path = pattern.format(cid=target, turn=turn)
            answer = intruder.get(path) if method == "GET" else intruder.post(path, data=dict(form))
            if answer.status_code != 404:
                wrong.append(f"{method} {path}: {answer.status_code}")
            assert "alice" not in answer.get_data(as_text=True)
        assert wrong == []
        assert len(fake.requests) == sent_before  # nothing sent upstream
        assert not gate.is_set() and store_of(app).load_pending(cid)["turn"] == turn  # not stopped
    finally:
        gate.set()
        rest = "".join(c.decode() if isinstance(c, bytes) else c for c in chunks)
        response.close()
    assert "event: done" in rest
    html = get(alice, f"/c/{cid}")
    assert messages(html) == [("user", "alice's secret"), ("assistant", "Reply 1: alice's secret"),
                              ("user", "alice asks again"), ("assistant", "alice's second answer")]
    assert sidebar(html)[0][:2] == (cid, "alice's secret")  # not renamed, not deleted


# --- cost stays flat ------------------------------------------------------------------------------------

def test_a_turn_in_one_of_30_conversations_reads_and_writes_no_other(make_app, fake, tmp_path, monkeypatch):
    app = make_app(RATE_LIMIT_PER_SESSION=None)
    client = app.test_client()
    cids = [start(client, f"topic {i}") for i in range(30)]
    folder = tmp_path / "sessions"
    files = {cid: folder / hashlib.sha256(f"conv:{cid}".encode()).hexdigest() for cid in cids}
    assert all(path.is_file() for path in files.values())
    past = time.time() - 3600
    for path in files.values():
        os.utime(path, (past, past))
    mtimes = {cid: path.stat().st_mtime_ns for cid, path in files.items()}
    target, others = cids[7], [cid for cid in cids if cid != cids[7]]
    token = token_for(client, f"/c/{target}")
    seen = record_store(app, monkeypatch)

    # JS off: a whole turn.
    response = client.post(f"/c/{target}", data={"message": "one more", "csrf_token": token}, csrf=False)
    assert response.status_code == 303
    # JS on: a streamed turn (read to its end).
    streamed = client.post(f"/c/{target}/turns", data={"message": "and streamed", "csrf_token": token},
                           csrf=False, headers={"X-CSRFToken": token})
    assert "event: done" in streamed.get_data(as_text=True)
    # Rendering its page.
    get(client, f"/c/{target}")

    touched = {key for _, key in seen if key.startswith(("conv:", "turn:"))}
    assert touched <= {f"conv:{target}", f"turn:{target}"}, sorted(touched - {f"conv:{target}", f"turn:{target}"})
    changed = [cid for cid in cids if files[cid].stat().st_mtime_ns != mtimes[cid]]
    assert changed == [target]
    assert all(files[cid].stat().st_mtime_ns == mtimes[cid] for cid in others)
    assert [len(r["body"]["input"]) for r in fake.requests[-2:]] == [3, 5]


# --- models -----------------------------------------------------------------------------------------------

def test_the_model_picker_is_in_the_chat_form_filled_from_models_grouped_with_context_and_price(make_app, fake):
    with_tiny(fake)
    client = make_app().test_client()
    html = get(client, "/")
    options = model_options(html)
    assert [(group, mid) for group, mid, _, _ in options] == [
        ("OpenAI", "openai/gpt-4o-mini"), ("OpenAI", "openai/o4-mini"), ("Tiny", "tiny/4k")]
    labels = {mid: label for _, mid, label, _ in options}
    # Short enough for a closed picker to show whole: the group names the provider.
    assert labels["openai/o4-mini"] == "o4-mini · 200K context · $1.10/$4.40 per M"
    assert labels["openai/gpt-4o-mini"] == "GPT-4o-mini · 128K context · $0.15/$0.60 per M"
    assert labels["tiny/4k"] == "4K · 4K context · free"
    assert selected_model(html) == "openai/o4-mini"  # OPENROUTER_MODEL for a new conversation
    for _ in range(3):
        get(client, "/new")
    start(client, "hi")
    assert fake.model_fetches == 1  # cached


def test_a_catalogue_of_hundreds_of_models_is_worked_out_once_per_fetch(make_app, fake, monkeypatch):
    """OpenRouter lists hundreds of models: grouping, labelling and rendering them must not happen on
    every page and every send, and what each supports is asked apart (/models.json, when the picker
    is used), listing only the options the page has fields for."""
    from webapp import catalogue

    many = [{"id": f"acme{i % 9}/model-{i}", "name": f"Acme: Model {i}", "context_length": 131072,
             "pricing": {"prompt": "0.0000003", "completion": "0.0000012"},
             "supported_parameters": ["frequency_penalty", "max_tokens", "seed", "stop", "temperature",
                                      "tool_choice", "tools", "top_k", "top_p"]} for i in range(300)]
    fake.models = {"data": MODELS["data"] + many}
    worked_out = []
    original = catalogue.options
    monkeypatch.setattr(catalogue, "options", lambda *a, **k: worked_out.append(1) or original(*a, **k))
    client = make_app().test_client()
    html = get(client, "/")
    assert len(model_options(html)) == 302 and selected_model(html) == "openai/o4-mini"
    start(client, "hi", model="acme3/model-12")
    html = get(client, "/")
    assert selected_model(html) == "acme3/model-12"  # the conversation's own, and only it
    assert selected_model(get(client, "/new")) == "openai/o4-mini"
    assert len(worked_out) == 1
    assert re.search(r'<option value="acme3/model-12" selected>Model 12 ', html)
    assert len(html.encode()) < 300 * 150  # about 120 bytes an option: what they support is asked apart
    listed = client.get("/models.json")
    assert listed.cache_control.max_age == 300 and listed.cache_control.private
    assert len(listed.json["models"]) == 302
    assert listed.json["models"]["acme3/model-12"] == {"context": 131072, "params": "max_tokens temperature tools"}
    assert listed.json["models"]["openai/o4-mini"] == {"context": 200000, "params": "max_tokens reasoning tools"}
    assert len(worked_out) == 1


def test_new_chat_starts_on_the_model_last_used(client, fake):
    cid = start(client, "use the small one", model="openai/gpt-4o-mini")
    # New chat submits the page's form (its picker included), as the button does.
    opened = client.post("/new", data={"model": "openai/gpt-4o-mini"})
    assert opened.status_code == 303
    html = get(client, opened.headers["Location"])
    assert selected_model(html) == "openai/gpt-4o-mini" and 'action="/c/new"' in composer(html)
    other = start(client, "in the new chat", model=selected_model(html))
    assert other != cid and fake.requests[-1]["body"]["model"] == "openai/gpt-4o-mini"
    # A model that is not offered is no way in: the default.
    refused = client.post("/new", data={"model": "evil/model"})
    assert selected_model(get(client, refused.headers["Location"])) == "openai/o4-mini"


def test_a_conversation_keeps_its_model_and_new_ones_start_on_the_default(client, fake):
    cid = start(client, "use the small one", model="openai/gpt-4o-mini")
    assert fake.requests[-1]["body"]["model"] == "openai/gpt-4o-mini"
    html = get(client, f"/c/{cid}")
    assert selected_model(html) == "openai/gpt-4o-mini"  # preselected on reload
    assert "openai/gpt-4o-mini" in re.search(r'<p class="meta">(.*?)</p>', html, re.S).group(1)
    send(client, cid, "a form without the picker keeps it")  # (the field left out)
    assert fake.requests[-1]["body"]["model"] == "openai/gpt-4o-mini"
    other = start(client, "fresh")
    assert fake.requests[-1]["body"]["model"] == "openai/o4-mini"
    assert selected_model(get(client, "/new")) == "openai/o4-mini"
    assert selected_model(get(client, f"/c/{other}")) == "openai/o4-mini"
    send(client, cid, "switch back", model="openai/o4-mini")
    assert fake.requests[-1]["body"]["model"] == "openai/o4-mini"
    assert selected_model(get(client, f"/c/{cid}")) == "openai/o4-mini"


def test_openrouter_model_is_where_new_conversations_start(make_app, fake):
    client = make_app(OPENROUTER_MODEL="openai/gpt-4o-mini").test_client()
    assert selected_model(get(client, "/")) == "openai/gpt-4o-mini"
    start(client, "hi")
    assert fake.requests[-1]["body"]["model"] == "openai/gpt-4o-mini"


@pytest.mark.parametrize("model", ["openai/gpt-5-imaginary", "", "tiny/4k"])
def test_a_model_that_is_not_offered_gets_a_400_and_nothing_is_sent_or_stored(app, fake, monkeypatch, model):
    client = app.test_client()
    seen = record_store(app, monkeypatch)
    response = client.post("/c/new", data={"message": "keep this text", "model": model})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "not offered" in html and textarea(html) == "keep this text"
    assert not [key for op, key in seen if op == "set" and key.startswith(("conv:", "browser:"))]
    cid = start(client, "a real one")
    before = stored(app, cid)
    refused = client.post(f"/c/{cid}", data={"message": "again", "model": model})
    assert refused.status_code == 400 and textarea(refused.get_data(as_text=True)) == "again"
    streamed = client.post(f"/c/{cid}/turns", data={"message": "again", "model": model})
    assert streamed.status_code == 400 and "not offered" in streamed.get_json()["error"]
    assert stored(app, cid) == before
    assert [r["body"]["input"][-1]["content"][0]["text"] for r in fake.requests] == ["a real one"]


def test_allowed_models_narrows_the_list(make_app, fake):
    with_tiny(fake)
    client = make_app(ALLOWED_MODELS=["openai/o4-mini", "tiny/4k"]).test_client()
    assert [mid for _, mid, _, _ in model_options(get(client, "/"))] == ["openai/o4-mini", "tiny/4k"]
    assert sorted(client.get("/models.json").json["models"]) == ["openai/o4-mini", "tiny/4k"]
    refused = client.post("/c/new", data={"message": "hi", "model": "openai/gpt-4o-mini"})
    assert refused.status_code == 400 and fake.requests == []
    start(client, "hi", model="tiny/4k")
    assert [r["body"]["model"] for r in fake.requests] == ["tiny/4k"]


def test_when_models_cannot_be_reached_the_default_model_still_works(make_app, fake):
    fake.models_response = error(503, "models are down")
    client = make_app().test_client()
    html = get(client, "/")
    assert "The model list is unavailable" in html
    assert [mid for _, mid, _, _ in model_options(html)] == ["openai/o4-mini"]
    assert selected_model(html) == "openai/o4-mini"
    cid = start(client, "still works", model="openai/o4-mini")
    assert fake.requests[-1]["body"]["model"] == "openai/o4-mini"
    html = get(client, f"/c/{cid}")
    assert messages(html)[-1] == ("assistant", "Reply 1: still works")
    assert "The model list is unavailable" in html
    assert fake.model_fetches == 1  # a failure is remembered for a while, not asked on every page


# --- the system prompt and the model's options ------------------------------------------------------------

def test_the_system_prompt_is_sent_as_instructions_on_every_turn(client, fake):
    cid = start(client, "hi", instructions="Answer like a pirate.")
    html = get(client, f"/c/{cid}")
    assert instructions_box(html) == "Answer like a pirate."
    assert '<textarea id="instructions" name="instructions"' in composer(html)
    send(client, cid, "and again", instructions="Answer like a pirate.")
    send(client, cid, "a form without the field keeps it")
    assert [r["body"].get("instructions") for r in fake.requests] == ["Answer like a pirate."] * 3
    send(client, cid, "now without", instructions="")
    assert "instructions" not in fake.requests[-1]["body"]
    other = start(client, "another conversation")
    assert "instructions" not in fake.requests[-1]["body"]  # per conversation
    assert instructions_box(get(client, f"/c/{other}")) == ""


def test_options_are_offered_and_sent_only_where_the_model_supports_them(client, fake):
    html = get(client, "/")  # o4-mini: output limit and reasoning, no temperature
    form = composer(html)
    assert re.search(r'<p class="param" data-param="temperature" hidden>', form)
    assert re.search(r'id="temperature"[^>]*\sdisabled', form)
    assert re.search(r'<p class="param" data-param="max_tokens">', form)
    assert re.search(r'<p class="param" data-param="reasoning">', form)
    cid = start(client, "plain")
    body = fake.requests[-1]["body"]
    assert "temperature" not in body and "reasoning" not in body and body["max_output_tokens"] == 9000
    send(client, cid, "set", max_output_tokens="500", effort="high", temperature="0.5")
    body = fake.requests[-1]["body"]
    assert body["max_output_tokens"] == 500 and body["reasoning"]["effort"] == "high"
    assert "temperature" not in body  # o4-mini does not take it: never sent
    html = get(client, f"/c/{cid}")
    assert re.search(r'<option value="high" selected>', html) and 'value="500"' in composer(html)

    other = start(client, "gpt", model="openai/gpt-4o-mini", temperature="0.3", effort="high")
    body = fake.requests[-1]["body"]
    assert body["temperature"] == 0.3 and "reasoning" not in body
    form = composer(get(client, f"/c/{other}"))
    assert re.search(r'<p class="param" data-param="temperature">', form)
    assert re.search(r'<p class="param" data-param="reasoning" hidden>', form)
    send(client, other, "unset", temperature="")
    assert "temperature" not in fake.requests[-1]["body"]
    refused = client.post(f"/c/{other}", data={"message": "x", "temperature": "7"})
    assert refused.status_code == 400 and len(fake.requests) == 4


def test_a_reasoning_summary_is_shown_collapsed_above_the_answer_and_never_sent_back(client, fake):
    fake.queue(reply("The answer.", reasoning=["First I thought.", "Then I knew."]))
    cid = start(client, "think")
    html = get(client, f"/c/{cid}")
    article = re.search(r'<article class="msg assistant.*?</article>', html, re.S).group(0)
    details = re.search(r'<details class="reasoning">(.*?)</details>', article, re.S)
    assert details, "no collapsed reasoning"  # <details> without `open`
    assert "First I thought." in details.group(1) and "Then I knew." in details.group(1)
    assert article.index("reasoning") < article.index('data-role="assistant"')
    send(client, cid, "next")
    sent = fake.requests[-1]["body"]["input"][1]
    assert sent["content"] == [{"type": "output_text", "text": "The answer.", "annotations": []}]
    assert "thought" not in json.dumps(fake.requests[-1]["body"])


# --- usage and cost ------------------------------------------------------------------------------------

def test_each_reply_shows_its_usage_and_cost_and_the_page_one_total(client, fake):
    html = get(client, "/")
    assert by_role(html, "total") == ["Total: $0 · no replies yet"]
    cid = start(client, "hello")
    # The fake's usage: 1 in, 12 out (8 reasoning), cost 1*1.1e-6 + 12*4.4e-6 = $0.0000539.
    html = get(client, f"/c/{cid}")
    assert by_role(html, "usage") == ["1 in · 12 out (8 reasoning) · $0.000054"]
    send(client, cid, "again")  # 2 in, 12 out: $0.000055
    html = get(client, f"/c/{cid}")
    assert by_role(html, "usage") == ["1 in · 12 out (8 reasoning) · $0.000054",
                                      "2 in · 12 out (8 reasoning) · $0.000055"]
    assert by_role(html, "total") == ["Total: 3 in · 24 out · $0.00011"]
    assert html.count('data-role="total"') == 1
    assert "$0.00 " not in html and "$0.00<" not in html


def test_a_reply_without_usage_cost_is_priced_from_the_model_and_marked_as_an_estimate(client, fake):
    body = {"id": "resp_estimate", "object": "response", "model": "openai/o4-mini", "status": "completed",
            "output": [{"type": "message", "id": "msg_estimate", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Priced by estimate", "annotations": []}]}],
            "usage": {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}}
    fake.queue(raw(200, json.dumps(body), "application/json"))
    cid = start(client, "what does it cost?")
    html = get(client, f"/c/{cid}")
    # 1000 × $0.0000011 + 500 × $0.0000044 = $0.0033
    assert by_role(html, "usage") == ["1,000 in · 500 out · ≈ $0.0033 (estimate)"]
    assert by_role(html, "total") == ["Total: 1,000 in · 500 out · ≈ $0.0033 (estimate)"]


def test_the_streamed_reply_carries_usage_and_the_new_total(client, fake):
    cid = start(client, "hello")
    events = sse_events(client.post(f"/c/{cid}/turns", data={"message": "again"}).get_data(as_text=True))
    done = dict(events)["done"]
    assert done["usage"] == "2 in · 12 out (8 reasoning) · $0.000055"
    assert done["total"] == "3 in · 24 out · $0.00011"
    assert done["reasoning"] == "thinking…"


# --- the context budget ----------------------------------------------------------------------------------

def long_text(label, chars=3000):
    return (label + " " + "lorem ipsum dolor sit amet " * 200)[:chars]


def tiny_conversation(client):
    """A conversation on the fake's 4K-context model, two long turns in: the next long one cannot fit."""
    cid = start(client, long_text("turn one"), model="tiny/4k")
    send(client, cid, long_text("turn two"))
    return cid


def test_the_budget_is_a_meter_with_text_and_max_output_tokens_is_capped_to_what_is_left(make_app, fake):
    with_tiny(fake)
    client = make_app().test_client()
    cid = tiny_conversation(client)
    for request in fake.requests:
        body = request["body"]
        assert body["model"] == "tiny/4k"
        assert 0 < body["max_output_tokens"] < 9000  # capped (the fake refuses input + output > 4096)
        chars = sum(len(p["text"]) for item in body["input"] for p in item["content"])
        assert -(-chars // 4) + body["max_output_tokens"] <= 4096
    html = get(client, f"/c/{cid}")
    meter = re.search(r'<meter id="budget"([^>]*)></meter>', html)
    assert meter and 'max="4096"' in meter.group(1) and 'aria-labelledby="budget-text"' in meter.group(1)
    used = int(re.search(r'value="(\d+)"', meter.group(1)).group(1))
    text = unescape(re.search(r'<span id="budget-text">(.*?)</span>', html, re.S).group(1))
    assert text == f"Context: About {used:,} of 4,096 tokens ({round(used / 4096 * 100)}%)"


def test_a_turn_that_would_not_fit_is_not_sent_and_drop_oldest_turns_drops_just_enough(make_app, fake):
    with_tiny(fake)
    client = make_app().test_client()
    cid = tiny_conversation(client)
    third = long_text("turn three")
    response = client.post(f"/c/{cid}", data={"message": third})
    assert response.status_code == 303 and cid_in(response.headers["Location"]) == cid
    assert len(fake.requests) == 2  # not sent
    html = get(client, f"/c/{cid}")
    assert "longer than the model" in alert(html)
    assert textarea(html) == third  # kept in the box
    assert re.search(rf'formaction="/c/{cid}/drop"[^>]*>Drop oldest turns</button>', html)
    assert "New chat" in html and "larger context" in html
    assert len(messages(html)) == 4

    dropped = client.post(f"/c/{cid}/drop", data={"message": third})
    assert dropped.status_code == 303
    assert dropped.headers["Location"].endswith("#dropped")  # the page opens at the divider
    html = get(client, f"/c/{cid}")
    assert textarea(html) == third
    # The red banner and the Drop button are gone (pressing it again would drop more); a neutral
    # notice says how many turns stopped being sent.
    assert alert(html) is None and "Drop oldest turns" not in html and "Retry" not in html
    notice = unescape(re.search(r'id="notice"[^>]*>(.*?)</p>', html, re.S).group(1))
    assert notice == ("The oldest turn (2 messages) is no longer sent to the model; it stays above the "
                      "divider. Your message fits now: send it.")
    assert len(messages(html)) == 4  # still visible...
    assert re.search(r'<p class="divider" id="dropped" role="note">', html)
    before, _, after = html.partition('<p class="divider" id="dropped" role="note">')
    assert after, "no divider"
    assert "no longer sent" in after.split("</p>")[0]
    assert len(messages(before)) == 2 and len(messages(after)) == 2  # ...one turn above the divider, just enough
    send(client, cid, third)
    body = fake.requests[-1]["body"]
    texts = [item["content"][0]["text"] for item in body["input"]]
    assert len(texts) == 3 and texts[0].startswith("turn two") and texts[-1] == third
    assert len(messages(get(client, f"/c/{cid}"))) == 6


def test_the_js_send_that_would_not_fit_says_so_and_keeps_the_text(make_app, fake):
    with_tiny(fake)
    client = make_app().test_client()
    cid = tiny_conversation(client)
    answer = client.post(f"/c/{cid}/turns", data={"message": long_text("turn three")})
    assert answer.status_code == 400
    assert answer.get_json()["context"] is True and answer.get_json()["url"] == f"/c/{cid}"
    assert len(fake.requests) == 2
    html = get(client, f"/c/{cid}")
    assert textarea(html) == long_text("turn three") and "Drop oldest turns" in html


def test_an_upstream_context_length_error_offers_the_same_ways_out(client, fake):
    cid = start(client, "first")
    send(client, cid, "second")
    fake.queue(error(400, CONTEXT_ERROR))
    send(client, cid, "third")
    html = get(client, f"/c/{cid}")
    assert "maximum context length" in alert(html)
    assert textarea(html) == "third"
    assert re.search(rf'formaction="/c/{cid}/drop"[^>]*>Drop oldest turns</button>', html)
    assert len(messages(html)) == 4


def test_drop_oldest_turns_after_an_upstream_context_error_drops_at_least_one_turn(client, fake):
    cid = start(client, "first")
    send(client, cid, "second")
    fake.queue(error(400, CONTEXT_ERROR))
    send(client, cid, "third")
    assert client.post(f"/c/{cid}/drop", data={"message": "third"}).status_code == 303
    html = get(client, f"/c/{cid}")
    assert '<p class="divider" id="dropped" role="note">' in html and "maximum context length" not in html
    send(client, cid, "third")
    texts = [item["content"][0]["text"] for item in fake.requests[-1]["body"]["input"]]
    assert "first" not in texts and texts[-1] == "third"


# --- export and import ------------------------------------------------------------------------------------

def exported(client, cid):
    response = client.get(f"/c/{cid}/export.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    return response.get_json()


def upload(client, content, name="conversation.json"):
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    return client.post("/import", data={"file": (BytesIO(data), name)}, content_type="multipart/form-data")


def test_export_markdown_has_every_message_and_the_page_links_both_exports(client, fake):
    cid = start(client, "first *question*", instructions="Be brief.")
    send(client, cid, "second question")
    html = get(client, f"/c/{cid}")
    assert f'href="/c/{cid}/export.md"' in html and f'href="/c/{cid}/export.json"' in html
    response = client.get(f"/c/{cid}/export.md")
    assert response.status_code == 200 and response.mimetype == "text/markdown"
    assert re.match(r'attachment; filename="[^"/]+\.md"', response.headers["Content-Disposition"])
    text = response.get_data(as_text=True)
    for message in ("first *question*", "Reply 1: first *question*", "second question",
                    "Reply 2: second question", "Be brief."):
        assert message in text
    assert text.count("## You") == 2 and text.count("## Assistant") == 2


def test_export_json_holds_the_exact_items_and_import_continues_them_unchanged(app, fake):
    alice = app.test_client()
    cid = start(alice, "first", model="openai/gpt-4o-mini", instructions="Be brief.")
    send(alice, cid, "second")
    alice.post(f"/c/{cid}/rename", data={"title": "Exported chat"})
    data = exported(alice, cid)
    assert data["items"] == stored(app, cid)["items"]
    assert data["title"] == "Exported chat" and data["model"] == "openai/gpt-4o-mini"
    assert data["instructions"] == "Be brief."
    assert data["usage"]["replies"] == 2 and data["usage"]["cost"] > 0
    send(alice, cid, "third")
    assert fake.requests[-1]["body"]["input"][:4] == data["items"]

    bob = app.test_client()  # another browser brings it back
    start(bob, "bob's own")
    response = upload(bob, data)
    assert response.status_code == 303
    new = cid_in(response.headers["Location"])
    assert new != cid
    html = get(bob, f"/c/{new}")
    assert [t for _, t in messages(html)] == ["first", "Reply 1: first", "second", "Reply 2: second"]
    assert sidebar(html)[0] == (new, "Exported chat (imported)", True) and len(sidebar(html)) == 2
    assert selected_model(html) == "openai/gpt-4o-mini" and instructions_box(html) == "Be brief."
    send(bob, new, "continued")
    body = fake.requests[-1]["body"]
    assert body["input"][:4] == data["items"]  # exactly the exported items, unchanged
    assert body["input"][4]["content"][0]["text"] == "continued" and len(body["input"]) == 5
    assert body["model"] == "openai/gpt-4o-mini" and body["instructions"] == "Be brief."
    assert len(stored(app, cid)["items"]) == 6  # alice's own is untouched


def test_the_import_page_has_a_file_input_behind_a_link_named_import(client):
    html = get(client, "/")
    assert re.search(r'<a href="/import">Import</a>', html)
    page = get(client, "/import")
    assert re.search(r'<form method="post" action="/import" enctype="multipart/form-data">', page)
    assert re.search(r'<input[^>]*type="file"', page) and 'name="file"' in page


def valid_export():
    return {"format": "chat-conversation", "version": 1, "title": "Imported", "model": "openai/o4-mini",
            "instructions": None, "settings": {"max_output_tokens": None, "temperature": None, "effort": None},
            "items": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                      {"type": "message", "role": "assistant", "id": "msg_imported", "status": "completed",
                       "content": [{"type": "output_text", "text": "hello", "annotations": []}]}],
            "meta": [{"at": 1700000000}, {"at": 1700000001, "model": "openai/o4-mini", "usage": None}]}


def mutated(change):
    data = valid_export()
    change(data)
    return data


def _set(path, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _delete(path):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


USER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
HOSTILE = {
    "broken JSON": b'{"items": [',
    "empty file": b"",
    "not UTF-8": b'{"title": "\xff\xfe"}',
    "NaN": b'{"items": NaN}',
    "nested too deeply": b"[" * 100_000 + b"]" * 100_000,
    "a list, not an object": b"[]",
    "another format": mutated(_set(["format"], "something-else")),
    "no items": mutated(_delete(["items"])),
    "no messages": mutated(_set(["items"], [])),
    "a system role": mutated(_set(["items", 0, "role"], "system")),
    "a developer role": mutated(_set(["items", 1, "role"], "developer")),
    "assistant first": mutated(lambda d: d["items"].reverse()),
    "ends with the user": mutated(lambda d: d["items"].append(USER)),
    "assistant without id": mutated(_delete(["items", 1, "id"])),
    "assistant with an empty id": mutated(_set(["items", 1, "id"], "")),
    "assistant without status": mutated(_delete(["items", 1, "status"])),
    "an unknown status": mutated(_set(["items", 1, "status"], "done")),
    "an extra key in an item": mutated(_set(["items", 0, "metadata"], {"secret": 1})),
    "an extra key in a part": mutated(_set(["items", 1, "content", 0, "logprobs"], [])),
    "an extra key in settings": mutated(_set(["settings", "store"], True)),
    "a function call item": mutated(_set(["items", 1, "type"], "function_call")),
    "a part of the wrong type": mutated(_set(["items", 0, "content", 0, "type"], "input_image")),
    "annotations with content": mutated(_set(["items", 1, "content", 0, "annotations"], [{"url": "x"}])),
    "a lone surrogate": json.dumps(valid_export()).replace('"hi"', '"\\ud800"').encode(),
    "a control character in the title": mutated(_set(["title"], "line\nbreak")),
    "a bad model id": mutated(_set(["model"], "../../etc/passwd now")),
    "a temperature of 9": mutated(_set(["settings", "temperature"], 9)),
    "a message over the limit": mutated(_set(["items", 0, "content", 0, "text"], "x" * 100_001)),
    "too many messages": mutated(lambda d: d.__setitem__("items", (d["items"] * 1001))),
}


def test_a_valid_export_imports(client):
    response = upload(client, valid_export())
    assert response.status_code == 303
    assert messages(get(client, response.headers["Location"])) == [("user", "hi"), ("assistant", "hello")]


@pytest.mark.parametrize("content", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_broken_or_hostile_import_gets_a_400_page_and_stores_nothing(app, monkeypatch, content):
    client = app.test_client()
    cid = start(client, "already here")
    listed = sidebar(get(client, "/"))
    seen = record_store(app, monkeypatch)
    response = upload(client, content)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "That file cannot be imported: " in alert(html)
    assert re.search(r'<input[^>]*type="file"', html)  # the form is there to try another file
    assert not [key for op, key in seen if op == "set" and key.startswith(("conv:", "browser:", "turn:"))]
    assert sidebar(get(client, "/")) == listed and listed[0][0] == cid


def test_an_import_without_a_file_is_a_400(client):
    response = client.post("/import", data={}, content_type="multipart/form-data")
    assert response.status_code == 400 and "Choose a JSON file" in alert(response.get_data(as_text=True))


def test_a_file_over_the_upload_limit_gets_a_clear_message_and_stores_nothing(make_app, monkeypatch):
    # The import limit is settings.upload_limit: MAX_CONTENT_LENGTH plus the attachments one
    # message may carry (as base64); here a megabyte and a few files of a few bytes.
    app = make_app(MAX_ATTACHMENTS=1, MAX_ATTACHMENT_BYTES=100)
    client = app.test_client()
    start(client, "already here")
    listed = sidebar(get(client, "/"))
    seen = record_store(app, monkeypatch)
    response = upload(client, b'{"items": "' + b"x" * (1024 * 1024 + 128 * 1024) + b'"}')
    assert not [key for op, key in seen if op == "set" and key.startswith(("conv:", "browser:", "turn:"))]
    assert sidebar(get(client, "/")) == listed
    assert response.status_code in (400, 413)
    html = response.get_data(as_text=True)
    assert re.search(r'<input[^>]*type="file"', html) and "too large" in (alert(html) or "")



def imported_page(client, content):
    response = upload(client, content)
    assert response.status_code == 303, response.get_data(as_text=True)
    cid = cid_in(response.headers["Location"])
    return cid, get(client, f"/c/{cid}")


def page_title(html):
    match = re.search(r'<h2 id="conversation-title">(.*?)</h2>', html, re.S)
    assert match, 'no <h2 id="conversation-title">'
    return unescape(match.group(1)).strip()


def test_an_imported_conversation_is_titled_as_imported(client):
    original = start(client, "Trip plans")
    data = exported(client, original)
    assert data["title"] == "Trip plans"
    cid, html = imported_page(client, data)
    assert sidebar(html) == [(cid, "Trip plans (imported)", True), (original, "Trip plans", False)]
    assert page_title(html) == "Trip plans (imported)"
    assert "<title>Trip plans (imported) · Chat</title>" in html
    assert exported(client, cid)["title"] == "Trip plans (imported)"

    cid, html = imported_page(client, mutated(_set(["title"], None)))
    assert sidebar(html)[0] == (cid, "Imported conversation", True)
    assert page_title(html) == "Imported conversation"

    long = "A very long title about the history of the Roman aqueducts and their engineering " * 2
    cid, html = imported_page(client, mutated(_set(["title"], long.strip())))
    title = sidebar(html)[0][1]
    assert title.endswith("\u2026 (imported)") and len(title) <= 60 and long.startswith(title[:40])
    assert page_title(html) == title


def test_an_imported_title_drops_bidi_controls(client):
    cid, html = imported_page(client, mutated(_set(["title"], "\u202eslp.exe\u202c report")))
    assert sidebar(html)[0] == (cid, "slp.exe report (imported)", True)
    assert page_title(html) == "slp.exe report (imported)"
    cid, html = imported_page(client, mutated(_set(["title"], BIDI)))
    assert sidebar(html)[0] == (cid, "Imported conversation", True)


def test_an_import_with_absurd_usage_numbers_still_shows_and_exports(client):
    huge = {"input_tokens": 10**30, "output_tokens": 1e300, "total_tokens": 10**40,
            "output_tokens_details": {"reasoning_tokens": 10**25}, "cost": 1e26}
    data = mutated(_set(["meta", 1, "usage"], huge))
    data["items"] += data["items"]
    data["items"][3] = dict(data["items"][3], id="msg_imported_2")
    data["meta"] += [{"at": 1700000002}, {"at": 1700000003, "usage": {"cost": 1.7976931348623157e308,
                                                                      "input_tokens": 12}}]
    cid, html = imported_page(client, data)
    assert [t for _, t in messages(html)] == ["hi", "hello", "hi", "hello"]
    assert by_role(html, "total") == ["Total: 12 in · 0 out · cost unknown"]
    assert "e+" not in html
    assert messages(get(client, "/")) == messages(html)
    markdown = client.get(f"/c/{cid}/export.md")
    assert markdown.status_code == 200 and "cost unknown" in markdown.get_data(as_text=True)
    back = exported(client, cid)
    assert back["meta"][1]["usage"] is None and back["meta"][3]["usage"] == {"input_tokens": 12}


def test_a_reply_with_absurd_usage_from_upstream_still_shows(client, fake):
    body = {"id": "resp_huge", "object": "response", "model": "openai/o4-mini", "status": "completed",
            "output": [{"type": "message", "id": "msg_huge", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Huge", "annotations": []}]}],
            "usage": {"input_tokens": 10**30, "output_tokens": 3, "total_tokens": 1e300, "cost": 1e26}}
    fake.queue(raw(200, json.dumps(body), "application/json"))
    cid = start(client, "how much?")
    html = get(client, f"/c/{cid}")
    assert by_role(html, "usage") == ["3 out · ≈ $0.000013 (estimate)"]
    for path in ("/", f"/c/{cid}/export.md", f"/c/{cid}/export.json"):
        assert client.get(path).status_code == 200, path


def test_exports_name_their_charset_once(client):
    cid = start(client, "hello")
    markdown = client.get(f"/c/{cid}/export.md")
    assert markdown.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert markdown.headers.getlist("Content-Type") == ["text/markdown; charset=utf-8"]
    data = client.get(f"/c/{cid}/export.json")
    assert data.headers.getlist("Content-Type") == ["application/json"]
    assert json.loads(data.get_data().decode("utf-8"))["title"] == "hello"


# --- under a real gunicorn (two workers): each tab sends to its own conversation -------------------------

def test_two_tabs_on_two_conversations_send_at_once_each_to_their_own(served, fake):
    tabs = Browser()
    urls = {}
    for name in ("A", "B"):
        response = tabs.post(served.url + "/c/new", data={"message": f"{name}0"}, allow_redirects=False)
        assert response.status_code == 303
        urls[name] = served.url + "/c/" + cid_in(response.headers["Location"])
    failures = []

    def tab(name):
        for i in range(1, 4):
            response = tabs.post(urls[name], data={"message": f"{name}{i}"}, allow_redirects=False)
            if response.status_code != 303 or not response.headers["Location"].startswith(
                    urls[name][len(served.url):]):
                failures.append((name, i, response.status_code))

    threads = [threading.Thread(target=tab, args=(name,)) for name in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    for name, url in urls.items():
        users = [t for role, t in messages(tabs.get(url).text) if role == "user"]
        assert users == [f"{name}{i}" for i in range(4)]
    stranger = Browser()
    for url in urls.values():
        assert stranger.get(url).status_code == 404
        assert stranger.post(url, data={"message": "x"}, allow_redirects=False).status_code == 404
        assert stranger.get(url + "/export.json").status_code == 404
    assert len(fake.requests) == 8


def test_a_send_reads_only_what_it_needs(app, monkeypatch):
    """Store less: a first try needs no check that its waiting place was cancelled (nobody knows its
    waiter id yet), nor that its conversation is still listed (it was just moved to the top of the
    list: only a send that waited behind another reply looks again)."""
    client = app.test_client()
    cid = start(client, "first")
    token = token_for(client, f"/c/{cid}")
    seen = record_store(app, monkeypatch)
    response = client.post(f"/c/{cid}", data={"message": "second", "csrf_token": token}, csrf=False)
    assert response.status_code == 303
    reads = [key.split(":")[0] for op, key in seen if op == "get"]
    # Is it ours (and already on top of the list, so touching it reads and writes nothing more).
    assert reads.count("browser") == 1 and "cancel" not in reads, reads
    assert reads.count("conv") == 2  # under the lock to begin, and to settle
