"""Math in replies and in the person's own messages becomes MathML on the server: formulas read as
formulas, prices and code stay text, hostile TeX runs nothing, and the cost stays bounded."""

import html as markup
import itertools
import re
import threading
import time
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt
from markupsafe import escape

from webapp import render


class Page(HTMLParser):
    """Tags with their attributes, those inside <math>, and the text a reader sees (annotations
    are not shown)."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.tags, self.in_math, self.shown, self.stack = [], [], [], []
        self.feed(str(html))

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if "math" in self.stack:
            self.in_math.append((tag, dict(attrs)))
        if tag != "mspace":  # its end tag is written out; HTMLParser sees no void element here
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if "math" in self.stack:
            self.in_math.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack.pop() != tag:
                pass

    def handle_data(self, data):
        if "annotation" not in self.stack:
            self.shown.append(data)

    @property
    def text(self):
        return "".join(self.shown)


def maths(html):
    return [attrs for tag, attrs in Page(html).tags if tag == "math"]


def shown_outside_code(html):
    """The text shown outside <code> and <pre>."""
    return re.sub(r"<(code|pre)\b.*?</\1>", "", str(html), flags=re.S)


# --- inline and display --------------------------------------------------------------------------

@pytest.mark.parametrize("text, display", [
    (r"The area is $\int_0^1 x^2\,dx = \frac{1}{3}$ exactly.", False),
    (r"The area is \(\int_0^1 x^2\,dx = \frac{1}{3}\) exactly.", False),
    ("The area is\n\n$$\n\\int_0^1 x^2\\,dx = \\frac{1}{3}\n$$\n\nexactly.", True),
    ("The area is\n$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$\nexactly.", True),
    ("The area is\n\n\\[\n\\int_0^1 x^2\\,dx = \\frac{1}{3}\n\\]\n\nexactly.", True),
    (r"The area is \[\int_0^1 x^2\,dx = \frac{1}{3}\] exactly.", True),
])
@pytest.mark.parametrize("renderer", [render.markdown, render.plain])
def test_inline_and_display_formulas_become_mathml(text, display, renderer):
    html = str(renderer(text))
    assert maths(html) == [{"display": "block"} if display else {}]
    page = Page(html)
    assert {"msubsup", "mfrac", "msup", "mspace"} <= {tag for tag, _ in page.in_math}
    assert "∫" in page.text and "The area is" in page.text and "exactly." in page.text
    assert "\\" not in page.text and "$" not in page.text  # no command, no delimiter left


# What models write. Each renders with no TeX left in what is shown.
FORMULAS = [
    r"\sum_{n=1}^{\infty} \frac{1}{n^2} = \frac{\pi^2}{6}",
    r"e^{i\pi} + 1 = 0",
    r"\lim_{x \to 0} \frac{\sin x}{x} = 1",
    r"\sqrt{a^2 + b^2} \le |a| + |b|",
    r"\binom{n}{k} = \frac{n!}{k!(n-k)!}",
    r"\nabla \cdot \vec{E} = \frac{\rho}{\varepsilon_0}",
    r"\mathbb{E}[X] = \int_{-\infty}^{\infty} x f(x)\,dx",
    r"f(x) = \begin{cases} x^2 & x \ge 0 \\ -x & x < 0 \end{cases}",
    r"A = \begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
    r"\begin{aligned} (a+b)^2 &= a^2 + 2ab + b^2 \\ &\ne a^2 + b^2 \end{aligned}",
    r"\begin{align} x &= 1 \label{eq:x} \\ y &= 2 \nonumber \end{align}",
    r"\begin{gather} x = 1 \\ y = 2 \end{gather}",
    r"\hat{\theta} = \arg\max_\theta \; \mathcal{L}(\theta) \approx \overline{x}",
    r"\left( \frac{a}{b} \right)^{n} \times 10^{-3} \pm \text{ if } x \in \mathbb{R}",
    r"\forall \epsilon > 0 \; \exists \delta > 0 : |x - a| < \delta \implies |f(x) - f(a)| < \epsilon",
]


@pytest.mark.parametrize("tex", FORMULAS)
def test_what_models_write_renders_with_no_tex_left_visible(tex):
    html = str(render.markdown(f"So\n\n$$\n{tex}\n$$\n\nand ${tex}$ inline."))
    assert len(maths(html)) == 2
    shown = Page(html).text
    assert "\\" not in shown and "$" not in shown and "&" not in shown.replace("&amp;", "")


def test_aligned_lines_are_rows_of_a_table():
    html = str(render.markdown("$$\\begin{aligned} a &= b \\\\ c &= d \\end{aligned}$$"))
    page = Page(html)
    assert [tag for tag, _ in page.in_math].count("mtr") == 2
    assert ("mtd", {"columnalign": "right"}) in page.in_math and ("mtd", {"columnalign": "left"}) in page.in_math


def test_math_reads_in_lists_quotes_tables_and_headings():
    html = str(render.markdown("# Area $\\pi r^2$\n\n- item $x_1$\n\n> quote $$y^2$$\n\n"
                               "| a | b |\n|---|---|\n| $\\alpha$ | 2 |\n"))
    assert "<h1>Area <math>" in html and "<li>item <math>" in html
    assert '<blockquote>\n<p>quote <math display="block">' in html and "<td><math>" in html


def test_escaped_dollars_stay_dollars():
    html = str(render.markdown(r"It costs \$5, or \$x\$ in TeX."))
    assert not maths(html) and "It costs $5, or $x$ in TeX." in html


# --- prices and code -----------------------------------------------------------------------------

PRICES = [
    "It costs $5 and $10 today",
    "From $5 to $10.",
    "Prices: $5, $10, and $20.",
    "$5-$10 per month",
    "Between $1,000 and $2,000 a year, or $3.50/day",
    "I paid $5 for it; you paid $ 10.",
    "USD $100 vs $200 (that's $100 more)",
]


@pytest.mark.parametrize("text", PRICES)
@pytest.mark.parametrize("renderer", [render.markdown, render.plain])
def test_prices_are_not_math(text, renderer):
    html = str(renderer(text))
    assert "<math" not in html
    assert Page(html).text.strip() == text


@pytest.mark.parametrize("renderer", [render.markdown, render.plain])
def test_a_price_next_to_a_formula(renderer):
    html = str(renderer("It costs $5. Then $x^2$ grows."))
    assert len(maths(html)) == 1 and "It costs $5. Then " in html and "</math> grows." in html


def test_dollars_in_code_stay_code():
    html = str(render.markdown("Run `echo $HOME` or `$x$`, and:\n\n```sh\necho \"$HOME\" $PATH $x$\n```\n\n"
                               "```\n$$\n\\int\n$$\n```\n\n    indented $y$\n"))
    assert "<math" not in html
    assert "<code>echo $HOME</code>" in html and "<code>$x$</code>" in html
    assert '<span class="nv">$HOME</span>' in html and "$$\n\\int\n$$\n</code></pre>" in html
    assert "<pre><code>indented $y$\n</code></pre>" in html


def test_dollars_between_backticks_stay_text_in_a_persons_message():
    text = "Run `echo $HOME` and `$PATH`, then:\n```\nx=$y; echo $x\n```\nfor $z$."
    html = str(render.plain(text))
    assert len(maths(html)) == 1  # only $z$
    assert html.startswith("Run `echo $HOME` and `$PATH`, then:\n```\nx=$y; echo $x\n```\nfor <math>")


# --- what cannot be converted ------------------------------------------------------------------

@pytest.mark.parametrize("tex", [
    r"\frac{1}{", r"x_1_2", r"\left( x", "{" * 3000 + "x" + "}" * 3000, r"\def\a{\a\a}\a",
    r"\begin{matrix} a", r"\label{x}",
])
@pytest.mark.parametrize("renderer", [render.markdown, render.plain])
def test_a_formula_that_cannot_be_converted_stays_as_escaped_text(tex, renderer):
    html = str(renderer(f"Before ${tex}$ after <b>"))
    assert "<math" not in html
    assert f"<code>${escape(tex)}$</code>" in html and "after &lt;b&gt;" in html


def test_character_references_the_converter_does_not_write_stay_text():
    html = str(render.markdown(r"$\text{&#xD800; &#x110000; &#x3C;b&#x3E;}$"))
    assert "<mtext>&amp;#xD800;&nbsp;&amp;#x110000;&nbsp;&lt;b&gt;</mtext>" in html


def test_an_unconvertible_display_formula_stays_as_a_code_block_of_its_source():
    html = str(render.markdown("$$\n\\frac{1}{\n$$\n"))
    assert html == "<p><code>$$\n\\frac{1}{\n$$</code></p>\n"


# --- the sanitiser -------------------------------------------------------------------------------

HOSTILE = [
    r"$\href{javascript:alert(1)}{click}$",
    r"\(\href{javascript:alert(1)}{click}\)",
    "$$\n\\href{javascript:alert(1)}{\\text{click}}\n$$",
    r"$\style{background:url(javascript:alert(1))}{x}$",
    r"$\class{x}{y} \cssId{z}{w}$",
    r"$\hspace{javascript:alert(1)} x \mspace{url(javascript:alert(1))}$",
    r"$\color{javascript:alert(1)}{x} \textcolor{red}{y}$",
    r"$\text{<script>alert(1)</script><a href=\"javascript:alert(1)\">x</a>}$",
    r"$\mathrm{<img src=x onerror=alert(1)>}$",
    r"$\url{javascript:alert(1)} \unicode{x}$",
    r"$\rule{1em}{javascript:x}$",
    r"$\text{&lt;a href=&quot;javascript:alert(1)&quot;&gt;}$",
    '<math><a href="javascript:alert(1)">x</a></math>',
    '<math href="javascript:alert(1)"><mi>x</mi></math>',
    '<math><mtext><a href="javascript:alert(1)">x</a></mtext><annotation-xml encoding="text/html">'
    '<a href="javascript:alert(1)">y</a></annotation-xml></math>',
    '<math><mi style="background:url(javascript:alert(1))" onclick="alert(1)">x</mi></math>',
    '$x$<math><maction actiontype="statusline" xlink:href="javascript:alert(1)">x</maction></math>',
]


def assert_harmless(html):
    for tag, attrs in Page(html).tags:
        assert tag in render.TAGS and tag not in ("script", "img", "style")
        assert set(attrs) <= render.ATTRIBUTES.get(tag, set()) | ({"rel"} if tag == "a" else set())
        assert not any(name.startswith("on") or name in ("style", "xlink:href") for name in attrs)
        for value in attrs.values():
            assert "javascript:" not in re.sub(r"\s", "", value or "").lower()
    for tag, attrs in Page(html).in_math:
        assert tag in render.MATH_TAGS and "href" not in attrs and "class" not in attrs


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("renderer", [render.markdown, render.plain])
def test_hostile_math_never_yields_a_link_a_style_or_a_script(text, renderer):
    html = str(renderer(text))
    assert_harmless(html)
    assert not re.search(r"<a[\s>]", html) and "<mtext><" not in html


def test_hostile_tex_still_shows_its_content_as_math():
    html = str(render.markdown(HOSTILE[0] + " " + HOSTILE[3]))
    assert len(maths(html)) == 2 and "click" in Page(html).text and "href" not in html


def test_raw_mathml_is_shown_as_text():
    for renderer in (render.markdown, render.plain):
        html = str(renderer('<math><mi href="https://example.com">x</mi></math>'))
        assert "<math" not in html and "&lt;math&gt;" in html


@pytest.mark.parametrize("html", [
    '<math><a href="javascript:alert(1)">x</a><mi href="javascript:alert(1)" style="color:red" '
    'onclick="alert(1)" class="k" xlink:href="javascript:alert(1)">y</mi></math>',
    '<math href="javascript:alert(1)" style="x"><mrow><mtext><a href="javascript:alert(1)">z</a></mtext></mrow></math>',
    '<math><annotation-xml encoding="text/html"><a href="javascript:alert(1)">x</a></annotation-xml></math>',
    '<math><maction actiontype="toggle"><mi>x</mi></maction><mglyph src="javascript:alert(1)"/></math>',
])
def test_the_sanitiser_alone_keeps_mathml_on_its_allowlist(html):
    """Should MathML ever reach nh3 other than through the converter, the allowlist still holds:
    no javascript: link, style, event handler or class; a MathML <a> goes. (An HTML <a> inside
    <mtext> would stay, with an http(s) link only: no such thing reaches nh3, as markdown-it shows
    raw HTML as text and the converter's output is rebuilt element by element, its text escaped.)"""
    cleaned = render._clean(html)
    assert "javascript" not in cleaned and "style" not in cleaned and "onclick" not in cleaned
    assert 'class="k"' not in cleaned and "maction" not in cleaned and "mglyph" not in cleaned
    assert all(tag in render.TAGS for tag, _ in Page(cleaned).tags)
    assert all(tag in render.MATH_TAGS or tag == "a" and set(attrs) <= {"rel"}
               for tag, attrs in Page(cleaned).in_math)


def test_only_plain_attribute_values_pass():
    element = render.convert_to_element(r"\hspace{3em} x \hspace{url(a)} y")
    html = render._element(element)
    assert '<mspace width="3em">' in html and "url(" not in html


# --- the person's own messages -------------------------------------------------------------------

def source_of(html):
    """The message's text as a script could take it back from the page: each formula replaced by
    its annotation, then the text content."""
    html = re.sub(r"<math\b.*?<annotation[^>]*>(.*?)</annotation>.*?</math>", r"\1", str(html), flags=re.S)
    return markup.unescape(re.sub(r"<[^>]+>", "", html))


@pytest.mark.parametrize("text", [
    "What is $x^2$ when <b>x</b> is **2**?",
    "Two lines\n$$\\int_0^1 f$$\nthen \\(a\\) and \\[b\\] and $5, `$HOME`.",
    "Display:\r\n$$\r\n\\sum_k k\r\n$$\r\n\r\ndone \\$x\\$ ",
    "   indented $y$\n\n\n    # not a heading * not a list\n> not a quote $z$ \\\\(w\\)",
])
def test_a_persons_message_stays_plain_text_with_its_formulas_as_mathml(text):
    html = str(render.plain(text))
    assert maths(html)
    assert "<b>" not in html and "<strong>" not in html and "<h1>" not in html and "<blockquote>" not in html
    # Their text is all there, exactly (line breaks as \n): a script can take it back for Edit.
    assert source_of(html) == text.replace("\r\n", "\n")


def test_a_persons_message_with_no_formula_is_escaped_text_as_before():
    assert str(render.plain("<b>hi</b>\nthere $5")) == "&lt;b&gt;hi&lt;/b&gt;\nthere $5"
    assert str(render.plain("a\r\nb")) == "a\r\nb"


def test_a_display_formula_in_a_message_takes_its_line_break_with_it():
    html = str(render.plain("And\n$$x$$\nthanks"))
    assert html.startswith('And\n<math display="block">') and html.endswith("</math>thanks")


def test_formulas_in_replies_carry_no_annotation():
    """Replies are never edited: their formulas are MathML alone, the page stays light."""
    html = str(render.markdown("$x^2$"))
    assert html == "<p><math><msup><mi>x</mi><mn>2</mn></msup></math></p>\n"


# --- streaming -----------------------------------------------------------------------------------

@pytest.mark.parametrize("parts, partial", [
    (["Integral:\n\n$$\\int", "_0^1 x\\,dx", " = \\frac12$", "$\n\nDone."], "$$\\int"),
    (["Inline $\\frac{1}", "{2}", "$ and more"], "$\\frac{1}"),
    (["Display $$\\sum_k", " k$", "$ end"], "$$\\sum_k"),
    (["Brackets \\[\\sum_k", " k\\", "] end"], "[\\sum_k"),
])
def test_a_formula_being_streamed_stays_text_until_it_closes(monkeypatch, parts, partial):
    from webapp.views import streaming

    monkeypatch.setattr(streaming._Snapshots, "last_cost", 0.0)
    snapshots = streaming._Snapshots(live=lambda: 1, at_once=True)
    later = itertools.count(1000, 1000)
    for i, part in enumerate(parts):
        snapshots.add(part)
        html = snapshots.due(time.monotonic() + next(later))
        if i < len(parts) - 1:
            assert "<math" not in html and "<code>" not in html, html
            assert partial in html
    assert len(maths(html)) == 1 and "\\" not in Page(html).text


def test_an_unfinished_display_formula_is_text():
    assert str(render.markdown("$$\\int")) == "<p>$$\\int</p>\n"
    assert str(render.markdown("$$\n\\int_0^1\n")) == "<p>$$\n\\int_0^1</p>\n"
    assert str(render.plain("$$\\int")) == "$$\\int"


# --- versions --------------------------------------------------------------------------------------

def test_replies_stored_by_the_renderer_before_math_are_rendered_again():
    meta = {"rv": render.VERSION - 1, "html": "<p>$x^2$</p>\n"}
    assert "<math>" in str(render.stored(meta, "$x^2$"))
    meta = {"rv": render.VERSION, "html": "<p>kept</p>"}
    assert str(render.stored(meta, "$x^2$")) == "<p>kept</p>"


# --- cost ---------------------------------------------------------------------------------------

def _costly_conversions(monkeypatch, cost):
    """Each conversion "takes" `cost` seconds of render's clock, which nothing else moves."""
    now, converted, real = [0.0], [], render.convert_to_element

    def convert(tex, **kwargs):
        converted.append(tex)
        now[0] += cost
        return real(tex, **kwargs)

    monkeypatch.setattr(render, "convert_to_element", convert)
    monkeypatch.setattr(render, "_clock", lambda: now[0])
    return converted


@pytest.mark.parametrize("renderer", [render.markdown, render.plain])
def test_thousands_of_formulas_are_converted_within_the_budget_and_the_rest_is_text(monkeypatch, renderer):
    """Past a chunk's deadline its formulas stay as their source, past the message's budget the
    rest is escaped text; every formula is still there."""
    converted = _costly_conversions(monkeypatch, 0.01)
    paragraph = "".join(f"$x_{{{n}}}^2$ and " for n in range(50)) + "so.\n\n"
    text = paragraph * 100  # 5,000 formulas, in 48 chunks
    html = str(renderer(text))
    assert html.count("<math") == len(converted)
    # A chunk's deadline is 0.1 s: 10 (or 11) conversions; the budget, 0.5 s, is spent in 5 chunks.
    assert 50 <= len(converted) <= 55
    shown = Page(html).text
    assert len(converted) + shown.count("$x_{") == 5000
    assert html.count("<code>$x_{") > 1000  # those of the chunks rendered, past their deadline
    assert html.endswith("$x_{49}^2$ and so.\n\n</p>\n" if renderer is render.markdown else "$x_{49}^2$ and so.\n\n")


def test_conversions_stop_at_the_chunks_deadline_and_the_messages_budget(monkeypatch):
    monkeypatch.setattr(render, "HIGHLIGHT_TIME", 60.0)
    monkeypatch.setattr(render, "BUDGET", 60.0)
    text = ("$y^2$ " * 10 + "\n\n") * 2000
    converted = _costly_conversions(monkeypatch, 0.0)
    html = str(render.markdown(text))
    assert len(converted) == html.count("<math>") == 20_000  # time limits lifted: all of them
    monkeypatch.setattr(render, "BUDGET", 0.5)
    monkeypatch.setattr(render, "HIGHLIGHT_TIME", 0.1)
    converted = _costly_conversions(monkeypatch, 0.001)
    html = str(render.markdown(text))
    assert 500 <= len(converted) <= 505  # 0.1 s per chunk, 0.5 s in all
    assert html.count("<math>") == len(converted)
    assert html.count("$y^2$") == 20_000 - len(converted)


def test_a_long_persons_message_pauses_between_pieces(monkeypatch):
    slept, me, real = [], threading.get_ident(), time.sleep
    monkeypatch.setattr(render.time, "sleep",
                        lambda seconds: slept.append(seconds) if threading.get_ident() == me else real(seconds))
    text = "A formula $x$ here.\n\n" * 2000
    html = str(render.plain(text))
    assert set(slept) == {render.PAUSE} and len(slept) >= len(text) // render.CHUNK - 1
    assert source_of(html) == text


def test_a_long_reply_with_math_renders_in_chunks_as_it_would_whole(monkeypatch):
    monkeypatch.setattr(render, "HIGHLIGHT_TIME", 60.0)
    monkeypatch.setattr(render, "BUDGET", 60.0)
    section = ("## Step {n}\n\nWith $a_{n} = {n}^2$ and \\(b\\), costing $5 and $10:\n\n"
               "$$\n\\sum_{{k=1}}^{{{n}}} k = \\frac{{{n}({n}+1)}}{{2}}\n$$\n\n- $x$\n- \\[y\\]\n\n")
    text = "".join(section.format(n=n) for n in range(150))
    chunked = str(render.markdown(text))
    monkeypatch.setattr(render, "CHUNK", len(text))
    assert chunked == str(render.markdown(text))
    assert chunked.count("<math") == 150 * 5 and chunked.count("$5 and $10") == 150


def test_a_display_block_looks_for_its_closing_line_a_bounded_way_on():
    """Each `$$` line that opens no block would read every line to the end (quadratic), and across
    list items: it reads up to MATH_LINES lines, a blank line or the end of its list item."""
    spans = []
    md = MarkdownIt("commonmark")
    md.block.ruler.before("fence", "spy", render._bounded(
        lambda state, start, end, silent: spans.append(end - start) or False))
    md.render("# heading\n$$ x\n" * 500)
    assert len(spans) == 500 and max(spans) == render.MATH_LINES
    spans.clear()
    md.render("- $$ a\n- b $$\n" * 100)
    assert spans and max(spans) == 1
    html = str(render.markdown("- $$ a\n- b $$\n"))
    assert html.count("<li>") == 2


def test_many_unclosed_brackets_and_dollars_stay_text():
    for text in ("\\(" * 4000, "\\[" * 4000, "$$a " + "$b " * 2600, "$" + "\\$" * 4000):
        html = str(render.markdown(text))
        assert "<math" not in html
        assert "<math" not in str(render.plain(text))


def test_the_message_of_a_reply_being_written_shows_its_formulas_too(client, fake):
    import threading

    from tests.fake_openrouter import reply as upstream_reply

    gate = threading.Event()
    fake.queue(upstream_reply("slow", gate=gate, chunks=["sl", "ow"]))
    # A streamed send whose reply is held: the page meanwhile shows the message as pending.
    response = client.post("/c/new/turns", data={"message": "what is $x^2$?"},
                           headers={"Accept": "text/event-stream"}, buffered=False)
    try:
        html = client.get("/").get_data(as_text=True)
        pending_message = html.split("data-pending-turn")[0].split('aria-label="You"')[-1]
        assert "<math" in pending_message and "$x^2$" not in pending_message.split("<annotation")[0]
    finally:
        gate.set()
        response.close()
