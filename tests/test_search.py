"""Search: `GET /search?q=` lists this browser's conversations whose title or messages hold every
word (case-insensitive), newest first, each linking to it with an escaped snippet where the words are
marked; nothing of another browser's; JS off (a plain GET form in the sidebar)."""

import re

from tests.fake_openrouter import reply
from webapp import search


def start(client, text):
    response = client.post("/c/new", data={"message": text})
    return re.search(r"/c/([\w-]+)", response.headers["Location"]).group(1)


def results(client, query):
    response = client.get("/search", query_string={"q": query})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    block = re.search(r'<ol class="results" data-role="results">(.*?)</ol>', html, re.S)
    found = re.findall(r'<li><a href="/c/([\w-]+)">', block.group(1)) if block else []
    return found, html


def test_the_sidebar_has_a_search_form(client):
    html = client.get("/").get_data(as_text=True)
    form = re.search(r'<form role="search" method="get" action="/search"[^>]*>(.*?)</form>', html, re.S)
    assert form and re.search(r'<input type="search" id="q" name="q"', form.group(1))


def test_conversations_holding_every_word_are_listed_newest_first_with_marked_snippets(client, fake):
    older = start(client, "How do I bake sourdough BREAD at home?")
    start(client, "Tell me about rockets")
    fake.queue(reply("Knead the dough; bake the bread hot."))
    newer = start(client, "Another question about baking")
    found, html = results(client, "bread bake")
    assert found == [newer, older]
    assert "<mark>bake</mark>" in html and "<mark>BREAD</mark>" in html
    assert results(client, "Rockets")[0] and results(client, "rockets bread")[0] == []


def test_a_search_that_matches_nothing_lists_no_conversation(client):
    start(client, "hello there")
    found, html = results(client, "zebra")
    assert found == [] and "0 conversations found" in html
    # The usual sidebar is still there (its one conversation), and nothing else links a conversation.
    assert len(re.findall(r'href="/c/[\w-]+"', html)) == 1


def test_another_browsers_conversations_never_appear(make_app, fake):
    app = make_app()
    mine, theirs = app.test_client(), app.test_client()
    start(theirs, "secret plans for the weekend")
    assert results(mine, "secret")[0] == []
    assert results(theirs, "secret")[0] != []


def test_the_snippet_and_query_are_escaped(client):
    start(client, "<script>alert(1)</script> needle <b>bold</b>")
    found, html = results(client, "needle")
    assert found
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "<mark>needle</mark>" in html
    _, html = results(client, '"><img src=x>')
    assert "<img src=x>" not in html


def test_mark_wraps_each_word_and_escapes_the_rest():
    assert str(search.mark("A <b> and a b", ["a", "b"])) == \
        "<mark>A</mark> &lt;<mark>b</mark>&gt; <mark>a</mark>nd <mark>a</mark> <mark>b</mark>"
    assert search.words_of("  Foo foo BAR ") == ["foo", "bar"]
