"""Assistant markdown to safe HTML: markdown-it-py (CommonMark + tables + strikethrough), Pygments
for code, then nh3 with an allow-list. Model output is untrusted (models repeat what pages and users
feed them): raw HTML in the markdown stays text, and nh3 removes anything that still slipped through.

Its cost is bounded too: one reply or import must not stall a worker that serves everyone else, and
both markdown-it (100,000 `[` take it seconds) and Pygments' lexers (autoit's on a run of spaces,
Python's on lines of one space) can be super-linear. So a long text is parsed in chunks of at most
CHUNK characters, other requests running in between; only common languages are highlighted, up to
HIGHLIGHT_MAX characters and HIGHLIGHT_TIME seconds per chunk; after BUDGET seconds the rest is
shown as escaped text. Whatever is not rendered is shown as text, never dropped.
"""

import re
import time
from functools import lru_cache

import nh3
import pygments
from markdown_it import MarkdownIt
from markdown_it.utils import OptionsDict
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name

from markupsafe import Markup, escape

# Bump when the rendering changes: replies stored with another version are rendered again on view.
VERSION = 2

CHUNK = 8_000  # characters markdown-it parses at once: 8,000 of `*[` take it 0.13 s, prose 0.2 ms
HIGHLIGHT_MAX = 10_000  # characters of code highlighted at most (10,000 of real code: 5-20 ms)
HIGHLIGHT_TIME = 0.1  # seconds of lexing per chunk, at most; past it, code stays plain
BUDGET = 0.5  # seconds of rendering per message; past it, the rest is shown as escaped text
PAUSE = 0.001  # seconds slept between chunks, for other requests to run first
# This thread's CPU time, read around work that never yields: the load of other processes does not
# spend a reply's budget (which would store it less formatted for being rendered on a busy machine).
_clock = time.thread_time

# Highlighted languages: Pygments' name, then the other names models give them. Each lexer was timed
# on 10,000 characters of hostile input (runs of spaces, quotes, backslashes, brackets, punctuation,
# `$(`, `/*`…). Many are super-linear in all (Python, C, JavaScript, HTML: over a second), which the
# deadline cuts short; but none spent more than a few milliseconds on one token, between the
# deadline's checks. Left out: console and ini (a single token took over a second), autoit, yaml,
# make and perl (slowest in all); any other name stays plain, never reaching Pygments' lookup.
LANGUAGES = {alias: name for name, aliases in {
    "python": "py python3 py3", "javascript": "js node", "typescript": "ts", "jsx": "", "tsx": "",
    "json": "", "bash": "sh shell zsh", "c": "h", "cpp": "c++ cc hpp", "csharp": "cs c#",
    "java": "", "kotlin": "kt", "swift": "", "go": "golang", "rust": "rs", "ruby": "rb", "php": "",
    "sql": "", "html": "htm", "xml": "", "css": "", "scss": "", "toml": "", "diff": "patch",
    "dockerfile": "docker", "lua": "", "r": "", "haskell": "hs", "scala": "", "dart": "",
    "elixir": "ex exs", "erlang": "erl", "clojure": "clj", "julia": "jl", "latex": "tex",
    "graphql": "gql", "powershell": "ps1 pwsh", "markdown": "md", "nginx": "", "protobuf": "proto",
    "objective-c": "objc objectivec",
}.items() for alias in [name, *aliases.split()]}

_FORMATTER = HtmlFormatter(nowrap=True)

TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code",
        "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span"}
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "span": {"class"}, "code": {"class"},
              "th": {"class"}, "td": {"class"}, "p": {"class"}}
ALIGNED = {"text-align:left": "align-left", "text-align:center": "align-center",
           "text-align:right": "align-right"}


@lru_cache(maxsize=None)
def _lexer(name):
    return get_lexer_by_name(name)


def _highlight(code, lang, env):
    """Pygments token spans for code in an allowlisted language, or "" (stays plain) when it is
    longer than HIGHLIGHT_MAX or the chunk's deadline passes while it is lexed."""
    name = LANGUAGES.get(lang.lower())
    if name is None or len(code) > HIGHLIGHT_MAX:
        return ""
    started = _clock()
    lexer = _lexer(name)
    # A lexer's first use in the process compiles its patterns (Julia's take 0.18 s): a one-off that
    # the chunk's deadline and the message's budget leave out.
    compiling = _clock() - started
    env["deadline"] += compiling
    env["compiling"] += compiling
    tokens = []
    for token in lexer.get_tokens(code):
        if len(tokens) % 8 == 0 and _clock() > env["deadline"]:  # a reading costs about a token
            return ""
        tokens.append(token)
    return pygments.format(tokens, _FORMATTER)


def _fence(renderer, tokens, idx, options, env):
    """markdown-it's own fence rule, with a `highlight` option that knows the chunk's deadline."""
    def highlight(code, lang, _attrs):
        return _highlight(code, lang, env)

    return renderer.fence(tokens, idx, OptionsDict({**options, "highlight": highlight}), env)


def _aligned_cells_as_classes(state):
    """Table alignment as a class, not a style attribute: the Content-Security-Policy allows no
    inline style (style-src 'self'), so `style="text-align:…"` would be ignored."""
    for token in state.tokens:
        if token.type in ("th_open", "td_open") and token.attrs.get("style"):
            token.attrs = {"class": ALIGNED.get(token.attrs["style"], "")}


def _parser():
    # html=False: raw HTML in the model's markdown is shown as text, never parsed as tags.
    md = MarkdownIt("commonmark", {"html": False})
    md.enable(["table", "strikethrough"])
    # No remote images by default: an image would load a URL of the model's choosing on view.
    md.disable("image")
    md.core.ruler.push("aligned_cells", _aligned_cells_as_classes)
    md.add_render_rule("fence", _fence)
    return md


_MD = _parser()

# A fence's opening line as markdown-it reads it outside a list or quote: up to 3 spaces, then 3 or
# more backticks (with none in the info string after them) or tildes.
_OPENING = re.compile(r" {0,3}(?:(`{3,})([^`]*)|(~{3,}).*)")


def _closing(line):
    """A pattern for the line that closes the fence `line` opens, or None if it opens none."""
    opening = _OPENING.fullmatch(line)
    if opening is None:
        return None
    marker = opening[1] or opening[3]
    return re.compile(rf" {{0,3}}{marker[0]}{{{len(marker)},}}[ \t]*")


def _blocks(lines):
    """The lines in blocks, which chunks end after: a fenced code block (opening to closing line),
    or lines up to a blank line (where, outside a fence, a paragraph, table or quote ends)."""
    block, lines = [], iter(lines)
    for line in lines:
        closing = _closing(line)
        if closing:
            if block:
                yield block
            block = [line]
            for line in lines:
                block.append(line)
                if closing.fullmatch(line):
                    break
            yield block
            block = []
        else:
            block.append(line)
            if not line.strip(" \t"):
                yield block
                block = []
    if block:
        yield block


def _size(lines):
    return sum(map(len, lines)) + len(lines)


def _pack(units, limit=CHUNK):
    """Consecutive lists of lines joined up to `limit` characters (a longer one alone)."""
    packed, size = [], 0
    for unit in units:
        length = _size(unit)
        if packed and size + length > limit:
            yield packed
            packed, size = [], 0
        packed.extend(unit)
        size += length
    if packed:
        yield packed


def _items(block):
    """Each unindented line with the indented ones after it (which may continue a list item)."""
    item = []
    for line in block:
        if item and not line.startswith((" ", "\t")):
            yield item
            item = []
        item.append(line)
    yield item


def _table_head(block):
    """A table's header and delimiter (as `|---|:--|`) rows, or []."""
    row = block[1].strip(" \t") if len(block) > 1 else ""
    if "|" in row and "-" in row and not set(row) - set("|-: \t") and _size(block[:2]) <= CHUNK // 2:
        return block[:2]
    return []


def _cut(block):
    """A block in pieces of at most CHUNK characters, bar a fence or a single longer line: its
    items packed, an item longer than a chunk line by line; a table's pieces repeat its header."""
    if _size(block) <= CHUNK or _closing(block[0]):
        yield block
        return
    head = _table_head(block)
    items = (part for item in _items(block)
             for part in ([item] if _size(item) <= CHUNK else ([line] for line in item)))
    for i, piece in enumerate(_pack(items, CHUNK - _size(head))):
        yield head + piece if i else piece


def _chunks(text):
    """(chunk, parse) pairs covering the text in order: whole blocks packed up to CHUNK characters.
    A longer fence is a chunk to parse, alone: markdown-it reads a fence's body in linear time, and
    one that opens a chunk (so outside any list or quote) ends where `_blocks` ends it. A longer
    line is a chunk not to parse."""
    lines = re.split(r"\r\n?|\n", text)
    for chunk in _pack(piece for block in _blocks(lines) for piece in _cut(block)):
        yield "\n".join(chunk), _size(chunk) <= CHUNK or _closing(chunk[0]) is not None


def _html(text):
    """The message's sanitised HTML, chunk by chunk: parsed while the budget lasts, else as escaped
    text."""
    spent, env = 0.0, {}  # one env: a link reference defined in a chunk serves the chunks after it
    # A text of one chunk at most (most replies, every early snapshot of a streaming one) is not split.
    for i, (chunk, parse) in enumerate([(text, True)] if len(text) <= CHUNK else _chunks(text)):
        if i:
            # Other users' requests and streams run between chunks: under gunicorn's gevent worker
            # time.sleep is gevent's (monkey-patched), and a sleep of more than 0 runs its event
            # loop, which polls sockets and fires timers (sleep(0) may switch straight back; a
            # shorter sleep may expire first and be resumed before the sockets that are ready).
            time.sleep(PAUSE)
        if parse and spent < BUDGET:
            started = _clock()
            env.update(deadline=started + min(HIGHLIGHT_TIME, BUDGET - spent), compiling=0.0)
            yield _clean(_MD.render(chunk, env))
            spent += _clock() - started - env["compiling"]
        else:
            yield _clean(f'<p class="plain">{escape(chunk)}</p>\n')


def _clean(html):
    return nh3.clean(
        html, tags=TAGS, attributes=ATTRIBUTES, url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow", clean_content_tags={"script", "style"})


def markdown(text):
    """Sanitised HTML for an assistant message (each chunk's HTML is sanitised on its own)."""
    return Markup("".join(_html(text)))


def stored(meta, text):
    """A settled reply's HTML: the fragment rendered when it settled, when it came from this
    renderer version; else rendered now."""
    if meta.get("rv") == VERSION and "html" in meta:
        return Markup(meta["html"])
    return markdown(text)


def plain(text):
    """A user's message: escaped text; the stylesheet keeps its line breaks (white-space: pre-wrap)."""
    return escape(text)


def _token_rules(style):
    """{declarations: [token classes]} for a Pygments style, plus its background: classes that look
    the same share one rule (a third of the size of Pygments' own one rule per class)."""
    formatter = HtmlFormatter(style=style)
    rules = {}
    for line in formatter.get_token_style_defs(".x"):
        match = re.match(r"\.x \.([\w-]+) \{ (.*?) \}", line)
        if match:
            rules.setdefault(match.group(2), []).append(match.group(1))
    block = next(line for line in formatter.get_background_style_defs(".x") if line.startswith(".x {"))
    return rules, block[len(".x {"):].strip(" };")


def _rules_css(root, style):
    rules, block = _token_rules(style)
    lines = [f"{root}.md pre {{ {block} }}"]
    for declarations, classes in rules.items():
        names = ",".join("." + name for name in classes)
        lines.append(f"{root}.md pre :is({names}) {{ {declarations} }}" if len(classes) > 1
                     else f"{root}.md pre {names} {{ {declarations} }}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def code_css():
    """The stylesheet for code blocks: Pygments' light default style, and its github-dark style for
    the dark theme, chosen by the system (unless the page's theme toggle says light) or by the
    toggle."""
    light = ".md pre { line-height: 125% }\n" + _rules_css("", "default")
    chosen = _rules_css(':root[data-theme="dark"] ', "github-dark")
    system = _rules_css(':root:not([data-theme="light"]) ', "github-dark")
    return (f"/* Generated by webapp.render.code_css(); do not edit. */\n{light}\n{chosen}\n"
            f"@media (prefers-color-scheme: dark) {{\n{system}\n}}\n")
