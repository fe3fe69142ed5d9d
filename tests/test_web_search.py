"""Web search: the "Search the web" checkbox puts OpenRouter's server tool on that message's request
(and nothing otherwise), the reply's url_citation annotations are kept exactly and sent back, its
sources are listed under it (http(s) as links, anything else as text, titles as text), the search is
in its cost, and a model without tools cannot search: refused before anything is sent."""

import json
import re

from tests.conftest import alert, textarea
from tests.fake_openrouter import MODELS, TINY_MODEL, reply
from webapp import conversation
from webapp.openrouter import Client, StreamState

TOOL = [{"type": "openrouter:web_search", "parameters": {"max_results": 5}}]
HOSTILE = [
    {"type": "url_citation", "url": "https://news.example/a?x=1&y=2", "title": "<b>Bold</b> & <script>x</script>",
     "start_index": 0, "end_index": 4},
    {"type": "url_citation", "url": "javascript:alert(1)", "title": "Click me", "start_index": 0, "end_index": 4},
    {"type": "url_citation", "url": "data:text/html,<script>alert(1)</script>", "title": "Data",
     "start_index": 0, "end_index": 4},
    {"type": "url_citation", "url": "https://news.example/a?x=1&y=2", "title": "Again", "start_index": 5,
     "end_index": 9},
]


def send(client, text, cid="new", **fields):
    return client.post(f"/c/{cid}", data={"message": text, **fields})


def cid_of(response):
    return re.search(r"/c/([\w-]+)", response.headers["Location"]).group(1)


def sources_html(html):
    found = re.findall(r'<div class="sources" data-role="sources">(.*?)</div>', html, re.S)
    return found


def test_ticked_the_request_carries_the_web_search_tool_and_unticked_none(client, fake):
    cid = cid_of(send(client, "What happened this week?", web_search="on"))
    assert fake.requests[-1]["body"]["tools"] == TOOL
    send(client, "And without searching?", cid=cid)
    assert "tools" not in fake.requests[-1]["body"]


def test_max_results_comes_from_the_setting(make_app, fake):
    client = make_app(WEB_SEARCH_MAX_RESULTS=3).test_client()
    send(client, "search", web_search="on")
    assert fake.requests[-1]["body"]["tools"][0]["parameters"] == {"max_results": 3}


def test_sources_are_listed_as_links_with_titles_as_text(client, fake):
    fake.queue(reply("News today.", annotations=HOSTILE))
    cid = cid_of(send(client, "news?", web_search="on"))
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    [block] = sources_html(html)
    links = re.findall(r'<a href="([^"]*)" rel="noopener noreferrer">(.*?)</a>', block)
    assert links == [("https://news.example/a?x=1&amp;y=2", "&lt;b&gt;Bold&lt;/b&gt; &amp; &lt;script&gt;x&lt;/script&gt;")]
    assert 'href="javascript' not in html and 'href="data:' not in html
    assert "Click me" in block and "Data" in block  # shown, as text
    assert "<script>" not in html.split('data-role="log"')[1]


def test_annotations_are_stored_exactly_and_sent_back(client, fake):
    fake.queue(reply("Cited.", annotations=HOSTILE[:1]))
    cid = cid_of(send(client, "cite", web_search="on"))
    send(client, "next", cid=cid)
    sent = fake.requests[-1]["body"]["input"][1]
    assert sent["content"][0]["annotations"] == HOSTILE[:1]
    stored = client.application.extensions["chat_store"].load(cid)["items"][1]
    assert stored == sent


def test_the_search_is_in_the_reply_cost(client, fake):
    cid = cid_of(send(client, "priced?", web_search="on"))
    meta = client.application.extensions["chat_store"].load(cid)["meta"][-1]
    assert meta["usage"]["cost"] >= 5 * 0.004  # the fake prices results as OpenRouter does
    html = client.get(f"/c/{cid}").get_data(as_text=True)
    assert "$0.02" in html


def test_a_model_without_tools_cannot_search(client, fake):
    fake.models = {"data": MODELS["data"] + [TINY_MODEL]}
    response = send(client, "search please", model="tiny/4k", web_search="on")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "cannot search the web" in alert(html) and textarea(html) == "search please"
    assert fake.requests == []
    # The page on that model shows the checkbox disabled, with a note.
    cid = cid_of(send(client, "plain", model="tiny/4k"))
    page = client.get(f"/c/{cid}").get_data(as_text=True)
    box = re.search(r'<input type="checkbox" id="web_search" name="web_search"[^>]*>', page).group(0)
    assert "disabled" in box
    note = re.search(r'<span class="search-note"([^>]*)>', page).group(1)
    assert "hidden" not in note
    assert all("tools" not in r["body"] for r in fake.requests)


def test_the_page_offers_the_checkbox_on_a_model_that_can_search(client):
    page = client.get("/").get_data(as_text=True)
    box = re.search(r'<input type="checkbox" id="web_search" name="web_search"[^>]*>', page).group(0)
    assert "disabled" not in box
    assert re.search(r'<label for="web_search">Search the web</label>', page)


def test_streamed_annotations_are_kept_when_the_final_event_lacks_them(fake):
    # The stream says each citation as it is added; the final response repeats them (or may not).
    fake.queue(reply("Streamed and cited.", annotations=HOSTILE[:1]))
    client = Client(fake.api_key, fake.base_url, "openai/o4-mini", 100)
    state = StreamState()
    events = list(client.stream([conversation.user_item("q")], state, web_search=5))
    done = events[-1][1]
    assert done.annotations == HOSTILE[:1] and state.annotations == HOSTILE[:1]


def test_export_and_import_keep_the_citations(client, fake):
    fake.queue(reply("Cited.", annotations=HOSTILE[:1]))
    cid = cid_of(send(client, "cite", web_search="on"))
    exported = client.get(f"/c/{cid}/export.json").data
    assert json.loads(exported)["items"][1]["content"][0]["annotations"] == HOSTILE[:1]
    import io
    imported = client.post("/import", data={"file": (io.BytesIO(exported), "c.json")},
                           content_type="multipart/form-data")
    new = cid_of(imported)
    assert client.application.extensions["chat_store"].load(new)["items"][1]["content"][0]["annotations"] \
        == HOSTILE[:1]
    send(client, "continue", cid=new)
    assert fake.requests[-1]["body"]["input"][1]["content"][0]["annotations"] == HOSTILE[:1]


def test_sources_come_with_the_streamed_reply_when_it_ends(client, fake):
    fake.queue(reply("Streamed news.", annotations=HOSTILE[:1]))
    response = client.post("/c/new/turns", data={"message": "news", "web_search": "on"},
                           headers={"Accept": "text/event-stream"})
    body = response.get_data(as_text=True)
    final = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {") and '"articles"' in line]
    assert final and 'data-role="sources"' in final[-1]["articles"]
    assert "https://news.example/a?x=1&amp;y=2" in final[-1]["articles"]
    assert fake.requests[-1]["body"]["tools"] == TOOL
