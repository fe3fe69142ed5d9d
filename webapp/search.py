"""Finding a conversation again: which of a browser's conversations hold every word of a query (in
their title or their messages, case-insensitive), newest activity first, each with a snippet where
the words are marked. Plain: no Flask; it reads each conversation's stored history, never the
attachments. Another browser's conversations are never looked at: only the entries given are."""

import re

from markupsafe import Markup, escape

from . import conversation

MAX_WORDS = 10
SNIPPET = 80  # characters of context each side of the first match


def words_of(query):
    """The words searched for: whitespace-separated, lowercased, at most MAX_WORDS, each once."""
    return list(dict.fromkeys(w.casefold() for w in (query or "").split()[:MAX_WORDS] if w))


def find(store, entries, query, limit=100):
    """[{"id", "title", "snippet": Markup, "at"}] for the conversations among `entries` (a browser's
    list, newest first) holding every word of `query`."""
    words = words_of(query)
    if not words:
        return []
    found = []
    for entry in entries:
        history = store.history(entry["id"]) or {}
        texts = [conversation.item_text(item) for item in history.get("items") or ()]
        title = entry.get("title") or conversation.title({"items": history.get("items") or []})
        folded = [text.casefold() for text in texts]
        haystack = "\n".join([title.casefold(), *folded])
        if not all(word in haystack for word in words):
            continue
        found.append({"id": entry["id"], "title": title or "Untitled", "at": entry.get("at"),
                      "snippet": snippet(texts, folded, words, title)})
        if len(found) >= limit:
            break
    return found


def snippet(texts, folded, words, title):
    """The part of the first message holding a word (else the title, else the first message's
    start), escaped, with every word marked."""
    for text, low in zip(texts, folded):
        at = min((low.find(w) for w in words if w in low), default=-1)
        if at >= 0:
            start, end = max(0, at - SNIPPET), min(len(text), at + SNIPPET * 2)
            piece = ("…" if start else "") + " ".join(text[start:end].split()) + ("…" if end < len(text) else "")
            return mark(piece, words)
    return mark(title or " ".join((texts[0] if texts else "").split())[:SNIPPET * 2], words)


def mark(text, words):
    """`text` escaped, each occurrence of a word wrapped in <mark> (case-insensitive)."""
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.IGNORECASE)
    out, last = [], 0
    for match in pattern.finditer(text):
        out.append(escape(text[last:match.start()]))
        out.append(Markup("<mark>") + escape(match.group(0)) + Markup("</mark>"))
        last = match.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)
