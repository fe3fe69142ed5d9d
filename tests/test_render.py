"""Assistant markdown becomes safe HTML: hostile model output stays text, markdown still renders."""

import itertools
import random
import os
import threading
import time
from html.parser import HTMLParser

import pygments.lexer
import pytest

from tests.conftest import under_gevent
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


# A reply as models write them: headings, paragraphs, lists tight and loose, fences with blank lines
# inside, math, a table, a quote, an indented code block.
REPLY = """## Setting up

First, a few words on what we are building: a **service** that reads events and writes a summary.

- Python 3.11
- Redis 7

* a loose list

* of two items

1. Install it.

2. Configure it: a list with blank lines between its items is one list.

   Still the second item.

```python
BATCH = 100

def handle(event):

    return event["id"]
```

The average is $\\bar{x}_n = \\bar{x}_{n-1} + \\frac{x_n - \\bar{x}_{n-1}}{n}$, no history needed.

$$
\\sigma^2 = \\frac{1}{n} \\sum_i (x_i - \\bar{x})^2
$$

| Setting | Default |
|---|---:|
| `BATCH` | 100 |

> A worker that dies mid-batch leaves its events unacknowledged.

    indented code

    more of it

~~~
an unclosed fence

with a blank line
"""


@pytest.mark.parametrize("text", [REPLY, REPLY.replace("\n", "\r\n"), REPLY * 3])
def test_a_growing_reply_renders_as_the_whole_text_would_at_every_length(text):
    """Each snapshot of a streaming reply is the HTML the whole text so far renders to, although
    the blocks before the last cut are parsed only once."""
    steps = random.Random(7)
    growing, end = render.Growing(), 0
    while end < len(text):
        end = min(len(text), end + steps.randint(1, 30))
        assert str(growing.html(text[:end])) == str(render.markdown(text[:end])), text[:end][-60:]


# Lines that start, continue or end blocks, for texts no model would write but a parser might meet.
LINES = ["para text", "- item", "* star", "+ plus", "1. one", "2) two", "10. ten", "   indented", "    code",
         "\t tab", "```", "```python", "~~~", "> quote", "| a | b |", "|---|---|", "$$", "x = 1", "$a$",
         "\\[", "\\]", "# head", "---", "===", "<div>", "**bold", "bold**", "", "", "", "  "]


def test_growing_texts_of_random_blocks_render_as_the_whole_text_would_at_every_length():
    rng = random.Random(11)
    for _ in range(150):
        text = "\n".join(rng.choice(LINES) for _ in range(rng.randint(3, 40))) + rng.choice(["", "\n", "\r\n"])
        growing, end = render.Growing(), 0
        while end < len(text):
            end = min(len(text), end + rng.randint(1, 25))
            assert str(growing.html(text[:end])) == str(render.markdown(text[:end])), repr(text[:end])


def test_a_growing_reply_parses_only_what_follows_its_last_cut(monkeypatch):
    parsed = []
    real = render._MD.render
    monkeypatch.setattr(render._MD, "render", lambda text, env=None: parsed.append(text) or real(text, env))
    paragraphs = [f"Paragraph {i}: " + "words " * 40 + "\n\n" for i in range(40)]
    growing, text = render.Growing(), ""
    for paragraph in paragraphs:
        text += paragraph
        growing.html(text)
    # 40 renders of a text growing to 10,000 characters parsed each paragraph twice (as the one
    # being written, then once kept); the whole text each time would be 20 times the text.
    assert sum(map(len, parsed)) < 3 * len(text)
    assert str(growing.html(text)) == str(render.markdown(text))
    parsed.clear()
    growing.html(text + "The last one, still being written")
    assert sum(map(len, parsed)) < 300  # only the paragraph being written, not the 40 before it


def test_a_growing_render_starts_again_for_a_text_that_is_not_the_same_grown():
    growing = render.Growing()
    growing.html("First paragraph.\n\nSecond")
    assert str(growing.html("Another *text*\n\nentirely")) == str(render.markdown("Another *text*\n\nentirely"))


def test_a_link_whose_reference_comes_in_an_earlier_part_still_links():
    growing, text = render.Growing(), "[docs]: https://example.com/docs\n\nSee the [docs].\n\nMore text"
    for end in range(1, len(text) + 1):
        html = str(growing.html(text[:end]))
    assert '<a href="https://example.com/docs"' in html and html == str(render.markdown(text))


def test_streaming_renders_are_spaced_by_how_many_replies_stream_at_once(monkeypatch):
    from webapp.views import streaming

    clock = [100.0]
    monkeypatch.setattr(streaming.time, "monotonic", lambda: clock[0])
    real = streaming.render.Growing.html

    def slow(self, text):  # each render "takes" 10 ms
        clock[0] += 0.01
        return real(self, text)

    monkeypatch.setattr(streaming.render.Growing, "html", slow)
    monkeypatch.setattr(streaming._Snapshots, "last_cost", 0.01)
    first, intervals = {}, {}
    for live in (1, 5, 1000):
        snapshots = streaming._Snapshots(live=lambda live=live: live)
        snapshots.add("**bold** text")
        started = clock[0]
        assert snapshots.due(clock[0]) is None  # the first delta is not rendered at once
        html = None
        while html is None:  # asked again at each event: rendered once its spacing has passed
            clock[0] += 0.05
            html = snapshots.due(clock[0])
        first[live] = clock[0] - 0.01 - started  # (less the render's own 10 ms)
        assert "<strong>bold</strong>" in html
        intervals[live] = snapshots.interval
        snapshots.add(" more")
        assert snapshots.due(clock[0] + snapshots.interval - 0.02) is None  # not due yet
        clock[0] += snapshots.interval + 0.001
        assert "more" in snapshots.due(clock[0])
    assert first == pytest.approx(intervals, abs=0.06)  # the first render is spaced like the others
    assert intervals[1] == pytest.approx(streaming.HTML_EVERY)  # 10 ms ÷ 5 % is less than the floor
    assert intervals[5] == pytest.approx(5 * 0.01 / streaming.RENDER_SHARE)  # a twentieth of a core
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
    real = streaming.render.Growing.html

    def slow(self, text):  # each render "takes" 1 ms
        clock[0] += 0.001
        return real(self, text)

    monkeypatch.setattr(streaming.render.Growing, "html", slow)
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


# Rendering cost. Speed is measured by benchmarks, never by timed assertions: these tests spy on
# what runs (lexers, markdown-it's parser, the clock, time.sleep) instead.

def _spy_parse(monkeypatch):
    """The sizes of the texts markdown-it parses."""
    sizes, real = [], render._MD.parse

    def parse(src, env=None):
        sizes.append(len(src))
        return real(src, env)

    monkeypatch.setattr(render._MD, "parse", parse)
    return sizes


def _counting_clock(monkeypatch, step):
    """render's clock, reading `step` seconds later at each call."""
    ticks = itertools.count()
    monkeypatch.setattr(render, "_clock", lambda: next(ticks) * step)


@pytest.mark.parametrize("lang", ["autoit", "yaml", "make", "perl", "console", "ini", "nosuchlang"])
def test_code_in_a_language_outside_the_allowlist_is_never_lexed(monkeypatch, lang):
    """Some lexers are super-linear (30,000 spaces of autoit froze a worker for a minute): code in a
    language outside the allowlist stays plain escaped text, and no lexer runs at all."""
    def lexing(*args, **kwargs):
        raise AssertionError("a lexer ran")

    monkeypatch.setattr(pygments.lexer.Lexer, "get_tokens", lexing)
    for code in ("<b>x</b>\n", "<b>" + " " * 30_000 + "x\n"):
        html = str(render.markdown(f"```{lang}\n{code}```"))
        assert html.startswith(f'<pre><code class="language-{lang}">&lt;b&gt;')
        assert "<span" not in html and html.count(" ") == code.count(" ") + 1  # all of it, as text


def test_language_names_reach_pygments_only_through_the_allowlist(monkeypatch):
    asked, real = [], render.get_lexer_by_name
    monkeypatch.setattr(render, "get_lexer_by_name", lambda name: asked.append(name) or real(name))
    render._lexer.cache_clear()
    for lang in ("autoit", "YAML", "Python", "py", "c++", "JS", "sh", "rs", "../x", "python3"):
        render.markdown(f"```{lang}\nx = 1\n```")
    render._lexer.cache_clear()
    assert asked and set(asked) <= set(render.LANGUAGES.values())


@pytest.mark.parametrize("lang", ["python", "Python", "py", "js", "ts", "c++", "cs", "go", "rs", "rb",
                                  "sh", "sql"])
def test_allowlisted_languages_and_their_aliases_are_highlighted(lang):
    html = str(render.markdown(f"```{lang}\nx = f(1)\n```"))
    assert html.startswith(f'<pre><code class="language-{lang}"><span class="')


def test_code_is_highlighted_up_to_a_size_cap_and_stays_plain_beyond_it(monkeypatch):
    # The size cap alone: 7,000 tokens near the cap must not also meet the time limit (a garbage
    # collection in a long test run can spend it).
    monkeypatch.setattr(render, "HIGHLIGHT_TIME", 60.0)
    monkeypatch.setattr(render, "BUDGET", 60.0)
    line = "x = 1  # n\n"
    below = line * (render.HIGHLIGHT_MAX // len(line))
    above = below + line
    assert '<span class="n">x</span>' in str(render.markdown(f"```python\n{below}```"))
    html = str(render.markdown(f"```python\n{above}```"))
    assert "<span" not in html and html.count(line) == above.count(line)


def test_highlighting_stops_where_its_time_runs_out(monkeypatch):
    """Allowlisted lexers can be super-linear too (Python's on lines of one space: 8,000 characters
    take over a second): lexing stops at the deadline and the code stays plain."""
    _counting_clock(monkeypatch, 0.01)
    lexed, real = [], pygments.lexer.Lexer.get_tokens

    def get_tokens(self, text, *args):
        for token in real(self, text, *args):
            lexed.append(token)
            yield token

    monkeypatch.setattr(pygments.lexer.Lexer, "get_tokens", get_tokens)
    html = str(render.markdown("```python\n" + "x = 1\n" * 1000 + "```"))
    assert "<span" not in html and html.count("x = 1\n") == 1000
    assert 0 < len(lexed) < 1000  # the lexer was left early, not run to the end


def test_a_lexers_first_use_costs_neither_the_deadline_nor_the_budget(monkeypatch):
    """A lexer compiles its patterns on its first use in the process (Julia's take 0.18 s): that
    one-off must not leave the code plain, nor the rest of the message unrendered."""
    now = [0.0]
    monkeypatch.setattr(render, "_clock", lambda: now[0])
    real = render.get_lexer_by_name

    def compiling(name):
        now[0] += 1.0
        return real(name)

    monkeypatch.setattr(render, "get_lexer_by_name", compiling)
    render._lexer.cache_clear()
    html = str(render.markdown("```julia\nx = 1\n```\n\n" + "filler\n\n" * 2000 + "**last**"))
    render._lexer.cache_clear()
    assert html.startswith('<pre><code class="language-julia"><span') and "<strong>last</strong>" in html


def test_a_megabyte_of_brackets_is_never_parsed_whole(monkeypatch):
    """1 MB of `[` took markdown-it 16 s: a block longer than a chunk is shown as text instead."""
    sizes = _spy_parse(monkeypatch)
    text = "Intro **bold**\n\n<img src=x onerror=alert(1)>" + "[" * 1_000_000 + "\n\nOutro *em*"
    html = str(render.markdown(text))
    assert max(sizes) <= render.CHUNK
    assert "<strong>bold</strong>" in html and "<em>em</em>" in html
    assert '<p class="plain">&lt;img src=x onerror=alert(1)&gt;[[[' in html
    assert html.count("[") == 1_000_000 and "<img" not in html
    assert str(render.markdown("[" * 20_000)) == '<p class="plain">' + "[" * 20_000 + "</p>\n"


def test_a_long_reply_renders_in_chunks_as_it_would_whole(monkeypatch):
    """Split at blank lines outside code blocks, a long reply renders as it did in one piece; a
    fence longer than a chunk, blank lines and all, is parsed whole (markdown-it reads a fence's
    body in linear time). Chunking alone: the time limits are lifted (one chunk of it all shares one
    highlighting deadline, which a loaded machine can spend)."""
    monkeypatch.setattr(render, "HIGHLIGHT_TIME", 60.0)
    monkeypatch.setattr(render, "BUDGET", 60.0)
    section = ("## Step {n}\n\nSome **bold** text, `code` and a [link](https://example.com/{n}).\n\n"
               "> a quote\n> on two lines\n\n- a\n- list\n\n"
               "```python\ndef f{n}():\n    return {n}\n```\n\n")
    fence = "```python\n" + "".join(f"def g{i}():\n\n    return {i}\n\n" for i in range(300)) + "```\n\n"
    text = ("".join(section.format(n=n) for n in range(60)) + "Then:\n" + fence
            + "".join(section.format(n=n) for n in range(60, 120)))
    assert render.CHUNK < len(fence) <= render.HIGHLIGHT_MAX
    sizes = _spy_parse(monkeypatch)
    chunked = str(render.markdown(text))
    assert len(sizes) > 3 and sorted(sizes)[-2] <= render.CHUNK  # only the fence is longer
    monkeypatch.setattr(render, "CHUNK", len(text))
    assert chunked == str(render.markdown(text))
    assert chunked.count("<h2>") == 120 and chunked.count("<pre>") == 121
    assert '<span class="nf">g0</span>' in chunked and '<span class="nf">g299</span>' in chunked


def test_a_table_or_list_longer_than_a_chunk_keeps_its_rows(monkeypatch):
    """A block with no blank line is cut at line ends; a table's pieces repeat its header."""
    table = "| n | name |\n|---|:--|\n" + "".join(f"| {n} | item {n} |\n" for n in range(1000))
    items = "".join(f"{n + 1}. item {n}\n" for n in range(1000))
    sizes = _spy_parse(monkeypatch)
    html = str(render.markdown(table + "\n" + items))
    assert max(sizes) <= render.CHUNK
    assert html.count('<td class="align-left">item') == 1000 and "| item" not in html
    assert html.count("<th>n</th>") == html.count("<table>") > 1
    assert html.count("<li>") == 1000 and '<ol start="' in html


def test_past_the_time_budget_the_rest_is_escaped_text(monkeypatch):
    _counting_clock(monkeypatch, 1.0)  # the first chunk "takes" a second: the budget is spent
    text = ("**first**\n\n" + "filler text\n\n" * 1000
            + "<script>alert(1)</script> **late** [x](javascript:alert(1))\n\n```python\nx = 1\n```")
    html = str(render.markdown(text))
    assert html.startswith("<p><strong>first</strong></p>")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; **late** [x](javascript:alert(1))" in html
    assert "<strong>late</strong>" not in html and "<a" not in html and "<span" not in html
    assert html.count("filler text") == 1000 and "```python\nx = 1\n```" in html


def test_a_long_message_pauses_between_chunks_and_a_short_one_never(monkeypatch):
    slept, me, real = [], threading.get_ident(), time.sleep
    # time.sleep is the time module's: count this thread's calls only (others may sleep meanwhile).
    monkeypatch.setattr(render.time, "sleep",
                        lambda seconds: slept.append(seconds) if threading.get_ident() == me else real(seconds))
    text = "A paragraph of *prose*.\n\n" * 2000
    render.markdown(text)
    assert set(slept) == {render.PAUSE} and len(slept) >= len(text) // render.CHUNK - 1
    slept.clear()
    render.markdown("A short reply.")
    assert slept == []


def test_under_gevent_a_request_waiting_on_its_socket_runs_between_chunks():
    """As under gunicorn's gevent worker (time.sleep monkey-patched): a greenlet whose socket is
    ready runs while a long message renders, between its chunks (after gevent's sleep(0) the
    rendering would go on at once, its loop never polling the socket)."""
    events = under_gevent("""
        import gevent, socket
        from webapp import render
        events, (a, b) = [], socket.socketpair()
        gevent.spawn(lambda: b.recv(1) and events.append("request"))
        gevent.sleep(0.01)  # the request waits on its socket
        a.send(b"x")  # and can run as soon as gevent's loop polls
        real = render._MD.render
        render._MD.render = lambda src, env: events.append("chunk") or real(src, env)
        render.markdown("A paragraph of *prose*.\\n\\n" * 2000)
        print(events)
    """)
    assert events.count("chunk") > 5 and 0 < events.index("request") < len(events) - 1
