"""Assistant markdown to safe HTML: markdown-it-py (CommonMark + tables + strikethrough), Pygments
for code, then nh3 with an allow-list. Model output is untrusted (models repeat what pages and users
feed them): raw HTML in the markdown stays text, and nh3 removes anything that still slipped through.

Its cost is bounded too: one reply or import must not stall a worker that serves everyone else, and
both markdown-it (100,000 `[` take it seconds) and Pygments' lexers (autoit's on a run of spaces,
Python's on lines of one space) can be super-linear. So a long text is parsed in chunks of at most
CHUNK characters, other requests running in between; only common languages are highlighted, up to
HIGHLIGHT_MAX characters and HIGHLIGHT_TIME seconds per chunk; after BUDGET seconds the rest is
shown as escaped text. Whatever is not rendered is shown as text, never dropped.

Math, in replies and in the person's own messages (which are otherwise plain text), becomes MathML
on the server: `$…$` and `\\(…\\)` inline, `$$…$$` and `\\[…\\]` as display math, parsed by
mdit-py-plugins' dollarmath (Pandoc's rules for prices: `$` opens no formula before a space, nor
closes one before a digit) and a rule of ours for the brackets, converted by latex2mathml. Its
output is rebuilt on an allowlist of MathML elements and attributes (no href, no style, no class,
values plain words and lengths) and goes through nh3 with the rest; a formula it cannot convert, or
one past the chunk's deadline, stays as its escaped source in a <code>. Browsers render MathML Core
natively: no script, stylesheet or font is added. In a person's message nothing else is read but
code spans (`$HOME` stays text), and each formula keeps its exact source in an <annotation>, so the
text they typed can be taken back from the page.
"""

import re
import time
from functools import lru_cache

import nh3
import pygments
from latex2mathml.converter import convert_to_element
from markdown_it import MarkdownIt
from markdown_it.rules_inline import backtick
from markdown_it.utils import OptionsDict
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.dollarmath.index import math_block_dollar, math_inline_dollar
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name

from markupsafe import Markup, escape

# Bump when the rendering changes: replies stored with another version are rendered again on view.
VERSION = 3  # 3: math as MathML

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

MATH_LINES = 50  # lines a `$$` display block may span (a longer one is read as inline `$$…$$`)

# MathML that may be shown: presentation elements, and in a person's message each formula's source
# in an annotation (semantics and annotation are ours, never taken from the converter). Attributes
# are presentation only, no href, style, class or id, and their values plain words and lengths.
_SCRIPTS = "displaystyle scriptlevel"
MATH_ATTRIBUTES = {tag: set(names.split()) for tag, names in {
    "math": "display", "semantics": "", "annotation": "encoding", "mi": "mathvariant",
    "mn": "mathvariant", "mtext": "mathvariant", "ms": "", "mspace": "width height depth",
    "mo": "form fence separator stretchy symmetric largeop movablelimits lspace rspace minsize maxsize "
          "accent",
    "mrow": "", "msup": "", "msub": "", "msubsup": "", "msqrt": "", "mroot": "", "mphantom": "",
    "mfrac": "linethickness", "mover": "accent", "munder": "accentunder",
    "munderover": "accent accentunder", "mstyle": f"{_SCRIPTS} mathvariant",
    "mpadded": "width height depth lspace voffset", "menclose": "notation",
    "mtable": f"{_SCRIPTS} columnalign rowalign columnspacing rowspacing columnlines rowlines",
    "mtr": "columnalign rowalign", "mtd": "columnalign rowalign rowspan columnspan",
}.items()}
MATH_TAGS = set(MATH_ATTRIBUTES)

TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code",
        "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
        *MATH_TAGS}
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "span": {"class"}, "code": {"class"},
              "th": {"class"}, "td": {"class"}, "p": {"class"}, **MATH_ATTRIBUTES}
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


# Math. Token types: dollarmath's, which the bracket rule reuses; the display ones are blocks.
_DISPLAY = {"math_inline": False, "math_inline_double": True, "math_block": True}
_CLOSING = {"$": "$", "$$": "$$", "\\(": "\\)", "\\[": "\\]"}
_VALUE = re.compile(r"[A-Za-z0-9.+\- %]{1,200}")  # an attribute's value: words, numbers, lengths
_REFERENCE = re.compile(r"&#x([0-9A-Fa-f]{1,6});")  # how latex2mathml writes symbols in its text
# Environments latex2mathml reads as a row, showing each `&` and losing each `\\`: as `align*`
# (right and left columns, which it lays out as a table), or a centred column.
_ALIGNED = re.compile(r"\\begin\{(?:alignedat|alignat\*?)\}\{\d+\}"
                      r"|\\(begin|end)\{(?:aligned|alignat\*?|alignedat|flalign\*?|eqnarray\*?)\}")
_GATHERED = re.compile(r"\\(begin|end)\{(?:gathered|gather\*?|multline\*?)\}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_UNSHOWN = re.compile(r"\\label\{[^{}]*\}|\\no(?:number|tag)(?![A-Za-z])")  # shown as commands


def _character(reference):
    point = int(reference[1], 16)
    return chr(point) if 0 < point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF else reference[0]


def _text(text):
    return escape(_REFERENCE.sub(_character, text)) if text else ""


def _unwrapped(element, alone=False):
    """An mrow holding nothing but one identifier, number, text or mrow, as that one (latex2mathml
    wraps each argument so; operators stay wrapped, as their spacing depends on their row, unless
    the row is `alone`, the formula's whole)."""
    while (element.tag == "mrow" and not element.attrib and len(element) == 1
           and not (element.text or "").strip() and not (element[0].tail or "").strip()
           and (alone or element[0].tag in ("mi", "mn", "mtext", "mrow"))):
        element = element[0]
    return element


def _element(element, alone=False):
    """latex2mathml's element as MathML on the allowlist: an element it does not know as an mrow,
    only allowlisted attributes with plain values, its text escaped."""
    element = _unwrapped(element, alone)
    tag = element.tag if element.tag in MATH_TAGS - {"math", "semantics", "annotation"} else "mrow"
    text = element.text
    if tag in ("mi", "mo") and text and _COMMAND.fullmatch(text):
        tag, text = "mi", text[1:]  # a command it does not know (`\arg`): its name, as `\operatorname`
    attributes = "".join(f' {name}="{escape(value)}"' for name, value in element.attrib.items()
                         if name in MATH_ATTRIBUTES[tag] and _VALUE.fullmatch(value))
    inner = "".join(_element(child) + _text(child.tail) for child in element)
    return f"<{tag}{attributes}>{_text(text)}{inner}</{tag}>"


def _mathml(tex, display, source=None):
    """The formula as a <math> element (holding its `source` in an annotation, when given), or None
    when latex2mathml cannot convert it."""
    tex = _GATHERED.sub(lambda m: r"\begin{array}{c}" if m[1] == "begin" else r"\end{array}",
                        _ALIGNED.sub(lambda m: f"\\{m[1] or 'begin'}{{align*}}", _UNSHOWN.sub("", tex)))
    if not tex.strip():
        return None
    try:
        root = convert_to_element(tex, display="block" if display else "inline")
        body = (_element(root[0], alone=True) if len(root) == 1
                else f'<mrow>{"".join(map(_element, root))}</mrow>')
    except Exception:  # latex2mathml's errors for what it cannot read, RecursionError for depth
        return None
    if source is not None:
        body = (f'<semantics>{body}<annotation encoding="application/x-tex">{escape(source)}'
                "</annotation></semantics>")
    return f'<math display="block">{body}</math>' if display else f"<math>{body}</math>"


def _formula(token, env, annotated=False):
    """A math token's HTML: MathML (`annotated` with its source), or its source as escaped text in a
    <code> when it cannot be converted or the chunk's deadline has passed."""
    source = token.meta.get("source") or token.markup + token.content + _CLOSING[token.markup]
    html = None
    if _clock() <= env.get("deadline", float("inf")):
        html = _mathml(token.content, _DISPLAY[token.type], source if annotated else None)
    if token.type == "math_block":
        return (html or f"<p><code>{escape(source)}</code></p>") + "\n"
    return html or f"<code>{escape(source)}</code>"


def _render_formula(renderer, tokens, idx, options, env):
    return _formula(tokens[idx], env)


def _escaped(state, pos):
    """Whether the character at `pos` follows an odd number of backslashes."""
    start = pos
    while pos and state.src[pos - 1] == "\\":
        pos -= 1
    return (start - pos) % 2 == 1


def _dollars(rule):
    """dollarmath's inline rule, noting each formula's source; a `$` right after another (the
    second of an unclosed `$$`) opens none, so a display formula still being written stays text."""
    def dollars(state, silent):
        start = state.pos
        if start and state.src[start - 1] == "$" or not rule(state, silent):
            return False
        if not silent:
            state.tokens[-1].meta["source"] = state.src[start:state.pos]
        return True

    return dollars


def _brackets(state, silent):
    """`\\(…\\)` inline and `\\[…\\]` display math, inside a paragraph (or a person's message): up to
    the first closing bracket, which must come (an unclosed one stays text)."""
    src, pos = state.src, state.pos
    kind = src[pos:pos + 2]
    if kind not in ("\\(", "\\[") or _escaped(state, pos):
        return False
    end = src.find(_CLOSING[kind], pos + 2, state.posMax)
    if end == -1 or not src[pos + 2:end].strip():
        return False
    if not silent:
        token = state.push("math_inline" if kind == "\\(" else "math_inline_double", "math", 0)
        token.content, token.markup = src[pos + 2:end], kind
        token.meta["source"] = src[pos:end + 2]
    state.pos = end + 2
    return True


def _bounded(rule):
    """dollarmath's `$$` block rule, reading no further for the closing `$$` than MATH_LINES lines,
    a blank line, or a line outdented out of the list item the `$$` is in. (Unbounded, each `$$`
    line opening no block reads every line to the end, quadratic; and it reads past list items.)"""
    def math_block(state, startLine, endLine, silent):
        if not state.src.startswith("$$", state.bMarks[startLine] + state.tShift[startLine]):
            return False
        last, limit = startLine + 1, min(endLine, startLine + MATH_LINES)
        while last < limit and not state.isEmpty(last) and state.sCount[last] >= state.blkIndent:
            last += 1
        return rule(state, startLine, last, silent)

    return math_block


def _literal(rule):
    """markdown-it's code span rule, keeping the span as the text it was: in a person's message,
    `$HOME` between backticks is no formula, and the backticks stay."""
    def literal(state, silent):
        start = state.pos
        if not rule(state, silent):
            return False
        if not silent and state.tokens and state.tokens[-1].type == "code_inline":
            token = state.tokens[-1]
            token.type, token.tag, token.markup = "text", "", ""
            token.content = state.src[start:state.pos]
        return True

    return literal


_DOLLARS = _dollars(math_inline_dollar(allow_space=False, allow_digits=False, allow_double=True))


def _parser():
    # html=False: raw HTML in the model's markdown is shown as text, never parsed as tags.
    md = MarkdownIt("commonmark", {"html": False})
    md.enable(["table", "strikethrough"])
    # No remote images by default: an image would load a URL of the model's choosing on view.
    md.disable("image")
    md.core.ruler.push("aligned_cells", _aligned_cells_as_classes)
    md.add_render_rule("fence", _fence)
    # `$$` display blocks on their own lines; the inline rules are replaced by ours.
    dollarmath_plugin(md, allow_labels=False, allow_space=False, allow_digits=False,
                      allow_blank_lines=False, double_inline=True)
    md.block.ruler.at("math_block", _bounded(math_block_dollar(allow_labels=False,
                                                                allow_blank_lines=False)))
    md.inline.ruler.at("math_inline", _DOLLARS)
    md.inline.ruler.before("escape", "math_brackets", _brackets)  # before `\(` is read as `(`
    for kind in _DISPLAY:
        md.add_render_rule(kind, _render_formula)
    return md


def _plain_parser():
    """For a person's message: its text stays text, bar its formulas (and code spans, kept whole)."""
    md = MarkdownIt("zero")
    md.inline.ruler.before("escape", "math_inline", _DOLLARS)
    md.inline.ruler.before("escape", "math_brackets", _brackets)
    md.inline.ruler.at("backticks", _literal(backtick))
    md.inline.ruler.enable("backticks")
    return md


_MD = _parser()
_PLAIN = _plain_parser()

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


def _rendered(pieces, render, as_text, env=None):
    """Each (piece, parse) rendered while the budget lasts, else as escaped text. `env`: markdown-it's
    (one for all the pieces: a link reference defined in one serves the pieces after it)."""
    spent, env = 0.0, {} if env is None else env
    for i, (piece, parse) in enumerate(pieces):
        if i:
            # Other users' requests and streams run between chunks: under gunicorn's gevent worker
            # time.sleep is gevent's (monkey-patched), and a sleep of more than 0 runs its event
            # loop, which polls sockets and fires timers (sleep(0) may switch straight back; a
            # shorter sleep may expire first and be resumed before the sockets that are ready).
            time.sleep(PAUSE)
        if parse and spent < BUDGET:
            started = _clock()
            env.update(deadline=started + min(HIGHLIGHT_TIME, BUDGET - spent), compiling=0.0)
            yield render(piece, env)
            spent += _clock() - started - env["compiling"]
        else:
            yield as_text(piece)


def _html(text, env=None):
    """The message's sanitised HTML, chunk by chunk: parsed while the budget lasts, else as escaped
    text."""
    # A text of one chunk at most (most replies, every early snapshot of a streaming one) is not split.
    return _rendered([(text, True)] if len(text) <= CHUNK else _chunks(text),
                     lambda chunk, env: _clean(_MD.render(chunk, env)),
                     lambda chunk: _clean(f'<p class="plain">{escape(chunk)}</p>\n'), env)


# Built once: nh3.clean() would build the same sanitiser (its allowlists) on every call, half its cost.
_CLEANER = nh3.Cleaner(
    tags=TAGS, attributes=ATTRIBUTES, url_schemes={"http", "https", "mailto"},
    link_rel="noopener noreferrer nofollow", clean_content_tags={"script", "style"})


def _clean(html):
    return _CLEANER.clean(html)


def markdown(text):
    """Sanitised HTML for an assistant message (each chunk's HTML is sanitised on its own)."""
    return Markup("".join(_html(text)))


# Where a text that keeps growing can be cut for good: a blank line (outside a fence), then a whole
# line that starts a block of its own whatever follows it: not indented (a list item's or a code
# block's continuation), not a list item (a list with blank lines between its items is one list).
_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)")
_CONTINUES = re.compile(r"[ \t]|[-*+](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$)")


def _last_cut(text, start):
    """The offset of the last place after `start` (itself such a place, or 0) where `text` can be
    cut without changing how the part before it renders, however the text goes on; `start` if none."""
    cut, blank, closing = start, False, None
    for line in _LINE.finditer(text, start):
        body = line.group().rstrip("\r\n")
        if closing is not None:  # inside a fence: up to its closing line
            if closing.fullmatch(body):
                closing = None
            continue
        if not body.strip(" \t"):
            blank = True
            continue
        if blank and not _CONTINUES.match(body):
            cut = line.start()
        blank = False
        closing = _closing(body)
    return cut


class Growing:
    """The HTML of a text that only grows (a reply while it streams), rendered again and again as it
    grows: the part before its last cut (`_last_cut`) is rendered once and kept, and each rendering
    parses only what follows it. Re-rendering the whole reply every few hundred milliseconds costs
    more with every paragraph; this costs about the same for the last paragraph of a long reply as
    for the first. The kept part is what `markdown` gives for it, bar two things the whole reply's
    rendering (when it is stored) gets right: a link whose reference is defined only further on, and
    the part's own budget (each part has one)."""

    def __init__(self):
        self._text, self._html, self._env = "", "", {}

    def html(self, text):
        if not text.startswith(self._text):  # not the same text grown: start again
            self._text, self._html, self._env = "", "", {}
        cut = _last_cut(text, len(self._text))
        if cut > len(self._text):
            self._html += "".join(_html(text[len(self._text):cut], self._env))
            self._text = text[:cut]
        # The rest with a copy of the references so far: what it defines is defined again next time.
        env = {**self._env, "references": dict(self._env.get("references", {}))}
        return Markup(self._html + "".join(_html(text[len(self._text):], env)))


def stored(meta, text):
    """A settled reply's HTML: the fragment rendered when it settled, when it came from this
    renderer version; else rendered now."""
    if meta.get("rv") == VERSION and "html" in meta:
        return Markup(meta["html"])
    return markdown(text)


_MATH_MARK = re.compile(r"\$|\\[(\[]")  # what any formula holds


def _pieces(text):
    """(piece, parse) pairs that, joined by line breaks, are the text (its line breaks made one
    kind): its lines packed up to CHUNK characters, cut after a blank line or a fenced block where
    they can be; a longer line is a piece not to parse."""
    blocks = _blocks(re.split(r"\r\n?|\n", text))
    for piece in _pack(part for block in blocks
                       for part in ([block] if _size(block) <= CHUNK else ([line] for line in block))):
        yield "\n".join(piece), _size(piece) <= CHUNK


def _plain_math(piece, env):
    tokens = []
    _PLAIN.inline.parse(piece, _PLAIN, env, tokens)
    for token, after in zip(tokens, tokens[1:]):
        # A display formula is a line of its own: the line break after it would show as a blank
        # line (white-space: pre-wrap). It goes, into the formula's source, which stays exact.
        if token.type == "math_inline_double" and after.type == "text" and after.content[:1] == "\n":
            token.meta["source"] += "\n"
            after.content = after.content[1:]
    return _clean("".join(_formula(token, env, annotated=True) if token.type in _DISPLAY
                          else escape(token.content) for token in tokens))


def plain(text):
    """A person's message: escaped text (the stylesheet keeps its line breaks, white-space: pre-wrap)
    but for its formulas, as MathML. Not markdown: what they typed is what they see."""
    if not _MATH_MARK.search(text):
        return escape(text)
    return Markup("\n".join(_rendered(_pieces(text), _plain_math, escape)))


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
