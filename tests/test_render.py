"""Assistant markdown becomes safe HTML: hostile model output stays text, markdown still renders."""

import os
import time
from html.parser import HTMLParser

import pytest

from webapp import render

HOSTILE = [
    "<script>window.pwned = 1</script>",
    '<img src=x onerror="window.pwned = 1">',
    "[click me](javascript:window.pwned=1)",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    '<a href="javascript:window.pwned=1">raw link</a>',
    "<iframe src=https://evil.example></iframe>",
    '<div style="background:url(javascript:x)" onclick="window.pwned=1">x</div>',
]


class Tags(HTMLParser):
    def __init__(self, html):
        super().__init__()
        self.found = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_output_never_becomes_markup(text):
    for tag, attrs in Tags(str(render.markdown(text))).found:
        assert tag in render.TAGS
        assert not any(name.startswith("on") or name == "style" for name in attrs)
        assert not attrs.get("href", "https:").lower().startswith(("javascript:", "data:"))


def test_raw_html_inside_markdown_is_shown_as_text():
    html = str(render.markdown("Hello <b>bold</b> and <script>x()</script>"))
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "&lt;script&gt;" in html


def test_links_get_safe_rel_and_images_do_not_load():
    html = str(render.markdown("[site](https://example.com) ![pic](https://example.com/p.png)"))
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">site</a>' in html
    assert "<img" not in html


def test_tables_strikethrough_and_highlighted_code_render():
    html = str(render.markdown(
        "| a | b |\n|---|--:|\n| 1 | 2 |\n\n~~old~~\n\n```python\ndef f():\n    return 1\n```\n"))
    assert "<table>" in html and '<td class="align-right">2</td>' in html
    assert "<s>old</s>" in html
    assert '<code class="language-python"><span class="k">def</span>' in html


def test_unknown_code_languages_stay_plain_escaped_text():
    html = str(render.markdown("```nosuchlang\n<b>x</b>\n```"))
    assert "&lt;b&gt;x&lt;/b&gt;" in html


def test_user_text_is_escaped():
    assert str(render.plain("<b>hi</b>\nthere")) == "&lt;b&gt;hi&lt;/b&gt;\nthere"


def test_the_shipped_code_stylesheet_is_the_generated_one():
    path = os.path.join(os.path.dirname(__file__), "..", "static", "code.css")
    with open(path) as f:
        assert f.read() == render.code_css()


def test_streaming_renders_are_spaced_by_how_many_replies_stream_at_once(monkeypatch):
    from webapp.views import streaming

    clock = [100.0]
    monkeypatch.setattr(streaming.time, "monotonic", lambda: clock[0])
    real = streaming.render.markdown

    def slow(text):  # each render "takes" 10 ms
        clock[0] += 0.01
        return real(text)

    monkeypatch.setattr(streaming.render, "markdown", slow)
    monkeypatch.setattr(streaming._Snapshots, "last_cost", 0.01)
    first, intervals = {}, {}
    for live in (1, 50, 1000):
        snapshots = streaming._Snapshots(live=lambda live=live: live)
        snapshots.add("**bold** text")
        assert snapshots.due(clock[0]) is None  # the first delta is not rendered at once
        first[live] = snapshots.interval
        clock[0] += snapshots.interval + 0.001
        assert "<strong>bold</strong>" in snapshots.due(clock[0])
        intervals[live] = snapshots.interval
        snapshots.add(" more")
        assert snapshots.due(clock[0] + snapshots.interval - 0.02) is None  # not due yet
        clock[0] += snapshots.interval + 0.001
        assert "more" in snapshots.due(clock[0])
    assert first == intervals  # the first render is spaced like the others
    assert intervals[1] == pytest.approx(streaming.HTML_EVERY)  # 10 × 10 ms is less than the floor
    assert intervals[50] == pytest.approx(10 * 50 * 0.01)
    assert intervals[1000] == streaming.HTML_AT_MOST  # formatting still shows within seconds


def test_a_burst_of_new_replies_spaces_their_first_renders_by_the_latest_render(monkeypatch):
    """Replies that all began before any render: once one has rendered, the others' first renders
    wait for the spacing that render's cost and the number streaming call for."""
    from webapp.views import streaming

    clock = [100.0]
    monkeypatch.setattr(streaming.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(streaming._Snapshots, "last_cost", 0.0)  # a fresh worker: nothing rendered yet
    replies = [streaming._Snapshots(live=lambda: 500) for _ in range(3)]
    for snapshots in replies:
        snapshots.add("first token")
    clock[0] += streaming.HTML_EVERY + 0.001
    real = streaming.render.markdown

    def slow(text):  # each render "takes" 1 ms
        clock[0] += 0.001
        return real(text)

    monkeypatch.setattr(streaming.render, "markdown", slow)
    assert replies[0].due(clock[0]) is not None  # the first is due: no render has cost anything yet
    assert replies[1].due(clock[0]) is None  # now 10 × 500 × 1 ms apart: the others wait
    assert replies[2].due(clock[0] + 4.0) is None
    assert replies[2].due(clock[0] + streaming.HTML_AT_MOST + 0.001) is not None  # never past the cap


def test_a_resumed_reply_is_rendered_at_once(monkeypatch):
    """After a reload the first delta is the whole text so far: its formatting must not wait."""
    from webapp.views import streaming

    monkeypatch.setattr(streaming._Snapshots, "last_cost", 0.01)
    snapshots = streaming._Snapshots(live=lambda: 1000, at_once=True)
    snapshots.add("| a | b |\n|---|---|\n| 1 | 2 |\n\nand **more**")
    html = snapshots.due(time.monotonic())
    assert "<table>" in html and "<strong>more</strong>" in html
    snapshots.add(" then")
    assert snapshots.due(time.monotonic()) is None  # later renders are spaced as usual
