"""A conversation as data: the history as Responses API items, plus what the page needs beside them.

Plain functions on a plain dict (JSON-able, so any store can hold it); no Flask, no HTTP here.

    {"items":   [...],   # exactly what goes upstream as `input`, nothing else inside
     "meta":    [...],   # one dict per item: time, model, usage, why a reply was cut short
     "pending": None | {"turn", "text", "started", "beat", "partial", "item_id", "stop", "model"},
     "failed":  None | {"text", "error", "replace", "stopped"}}

`pending` is the turn being answered right now (at most one per conversation, so turns never
interleave); `failed` keeps the user's text of a turn that could not be answered, so it is never lost.
"""

import time
from dataclasses import dataclass, fields

from . import attachments

# Why a reply is marked in the page; `incomplete` replies also keep status "incomplete" upstream.
NOTES = {
    "max_output_tokens": "The answer was cut off: it reached the output token limit.",
    "content_filter": "The answer was cut off by the provider's content filter.",
    "stopped": "Stopped.",
}
STOPPED_EARLY = "Stopped before the model answered."
CONTEXT_FULL = ("This conversation is now longer than the model's context, so the message was not "
                "sent. Drop the oldest turns, start a new chat, or pick a model with a larger context.")


@dataclass(frozen=True)
class Settings:
    """A conversation's settings, each None for the default: its model, system prompt, output limit,
    temperature and reasoning effort. Stored as a plain dict (`conv["settings"]`), which may lack
    any of them; `Settings.of(conv)` reads it whole. One list of them for the form, the plan of a
    turn, the page and export."""

    model: str | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    effort: str | None = None

    @classmethod
    def of(cls, conv):
        found = (conv or {}).get("settings")
        found = found if isinstance(found, dict) else {}
        return cls(**{name: found.get(name) for name in SETTINGS})


SETTINGS = tuple(f.name for f in fields(Settings))


def note_text(note):
    """The sentence shown under a reply for a stored note (a reason code or a sentence)."""
    return NOTES.get(note, note)


def new():
    # `rev` counts changes to the history, so the store writes it only when it changed.
    return {"items": [], "meta": [], "pending": None, "failed": None, "rev": 0}


def user_item(text, files=()):
    """A user message: its text, then its attachments (stored as references: attachments.part)."""
    parts = [attachments.part(ref) for ref in files or ()]
    if text or not parts:  # a message of attachments alone needs no empty text part
        parts.insert(0, {"type": "input_text", "text": text})
    return {"type": "message", "role": "user", "content": parts}


def assistant_item(item_id, status, text, annotations=None):
    """The assistant item as the API wants it back: the id and status it returned, never invented ones,
    and its text's annotations (web search citations) exactly as returned."""
    if not item_id or not status:
        raise ValueError("an assistant item needs the id and status the API returned")
    return {"type": "message", "role": "assistant", "id": item_id, "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": list(annotations or [])}]}


def input_items(conv, text):
    """The `input` to send for a new user turn: the history still sent plus the new message."""
    return [*sent_history(conv), user_item(text)]


def sent_history(conv, replace=False):
    """The stored items that go upstream: all but the oldest `dropped` ones (turns the user chose to
    stop sending when the context filled up), and without the last turn when it is being replaced."""
    items = conv["items"][:-2] if replace else conv["items"]
    return items[min(conv.get("dropped", 0), len(items)):]


def add_turn(conv, text, item_id, status, reply_text, note=None, files=None, annotations=None,
             **reply_meta):
    """Append a finished turn (the user's message, with its attachments, and the reply) and clear
    pending/failed state."""
    now = time.time()
    conv["items"].append(user_item(text, files))
    conv["meta"].append({"at": now})
    conv["items"].append(assistant_item(item_id, status, reply_text, annotations))
    meta = {"at": now, **{k: v for k, v in reply_meta.items() if v is not None}}
    if note:
        meta["note"] = note
    conv["meta"].append(meta)
    conv["pending"] = None
    conv["failed"] = None
    conv["rev"] = conv.get("rev", 0) + 1
    return conv


def fail_turn(conv, text, error, replace=False, stopped=False, context=False, files=None):
    """Record a turn that got no answer: history unchanged, the user's text kept for a retry
    (`replace`: the retry should again take the last turn's place, as a regenerate or edit would;
    `stopped`: the user stopped it, so `error` is a neutral note, not a failure)."""
    conv["pending"] = None
    conv["failed"] = {"text": text, "error": error, "replace": replace, "stopped": stopped}
    if files:  # kept with the text: a retry sends them again
        conv["failed"]["files"] = files
    if context:
        conv["failed"]["context"] = True
    conv["rev"] = conv.get("rev", 0) + 1
    return conv


def sources(item):
    """A reply's web sources, from its url_citation annotations, each URL once, in order: `{"url",
    "title", "link"}`; `link` only for http(s) URLs (any other scheme is shown as text, never a link)."""
    found, seen = [], set()
    for part in item.get("content") or ():
        for annotation in (part.get("annotations") or ()) if isinstance(part, dict) else ():
            if not isinstance(annotation, dict) or annotation.get("type") != "url_citation":
                continue
            url = annotation.get("url")
            if not isinstance(url, str) or not url or url in seen:
                continue
            seen.add(url)
            title = annotation.get("title") if isinstance(annotation.get("title"), str) else ""
            link = url.lower().startswith(("https://", "http://"))
            found.append({"url": url, "title": clean_title(title)[:300] or url, "link": link})
    return found


def item_text(item):
    return "".join(part.get("text", "") for part in item.get("content") or [])


def last_reply_id(conv):
    """The id of the last reply: what an edit or a regenerate names as the turn it replaces."""
    items = conv["items"]
    return items[-1].get("id") if len(items) >= 2 and items[-1]["role"] == "assistant" else None


TITLE_CHARS = 60  # a title made from a message, as the list shows it
# Bidirectional controls (embeddings, overrides, isolates, marks): in a title they make text read
# other than it is ("invoice\u202efdp.exe" shows as "invoiceexe.pdf"), and a title is shown
# outside its own context (the list, the tab), so no title keeps them.
BIDI_CONTROLS = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                                       "\u200e\u200f\u061c"))


def clean_title(text):
    """Any title's text (made from a message, typed in Rename, imported): on one line, whitespace
    runs made one space, bidirectional controls removed."""
    return " ".join((text or "").translate(BIDI_CONTROLS).split())


def title(conv, limit=TITLE_CHARS):
    """The conversation's title: the start of its first message, on one line."""
    if conv["items"]:
        first = conv["items"][0]
        files = attachments.refs(first)
        return short_title(item_text(first) or (files[0]["name"] if files else ""), limit)
    if conv.get("pending"):
        files = conv["pending"].get("files") or ()
        return short_title(conv["pending"]["text"] or (files[0]["name"] if files else ""), limit)
    return ""


def short_title(text, limit=TITLE_CHARS):
    """A title made from a message: its start, on one line."""
    text = clean_title(text)
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "\u2026"


def messages(conv, start=0):
    """What the page shows, in order (from message `start` on): role, text, the note under a reply,
    and who wrote it when."""
    shown = []
    for item, meta in zip(conv["items"][start:], conv["meta"][start:]):
        note = meta.get("note")
        shown.append({"role": item["role"], "text": item_text(item), "id": item.get("id"),
                      "files": attachments.refs(item), "sources": sources(item),
                      "status": item.get("status"), "note": note_text(note),
                      "stopped": note == "stopped", "model": meta.get("model"), "at": meta.get("at")})
    return shown
