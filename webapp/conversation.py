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
    stop sending when the context filled up), and only those before the message being replaced when
    a turn takes another's place (`replace`: see `replaced_at`)."""
    at = replaced_at(conv, replace)
    items = conv["items"][:at] if at is not None else conv["items"]
    return items[min(conv.get("dropped", 0), len(items)):]


def reply_index(conv, reply_id):
    """Where reply `reply_id` is in the branch on screen (after the user message it answers), or None."""
    items = conv["items"]
    for index in range(len(items) - 1, 0, -1):
        if items[index].get("id") == reply_id and items[index]["role"] == "assistant" \
                and items[index - 1]["role"] == "user":
            return index
    return None


def replaced_at(conv, replace):
    """The index of the user message a turn takes the place of (an edit or a regenerate), or None.
    `replace` names the reply after that message (its id); True, as stored before branches, means
    the last turn."""
    if replace is True:
        return len(conv["items"]) - 2 if len(conv["items"]) >= 2 else None
    if isinstance(replace, str) and replace:
        index = reply_index(conv, replace)
        return None if index is None else index - 1
    return None


# --- branches -----------------------------------------------------------------------------------------
# The branch on screen is `items` (what goes upstream, exactly). The others are kept beside it, in
# `forks`: {"<index>": {"versions": [...], "current": k}} for each user message that was edited (or
# whose reply was regenerated): every version of the conversation from that message on, each
# {"items", "meta", "forks"} (the forks further down that version), the one on screen as None (its
# content is `items[index:]`). Switching swaps a version's tail in; nothing is ever lost.

def _tail(conv, at):
    forks = conv.get("forks") or {}
    return {"items": conv["items"][at:], "meta": conv["meta"][at:],
            "forks": {k: v for k, v in forks.items() if int(k) > at}}


def _cut(conv, at):
    conv["forks"] = {k: v for k, v in (conv.get("forks") or {}).items() if int(k) <= at}
    del conv["items"][at:], conv["meta"][at:]
    conv["dropped"] = min(conv.get("dropped", 0), at)


def _own_fork(conv, at):
    """`conv`'s forks, and its fork at message `at` (or None), as copies this history may change:
    the store shares a loaded history's forks with the copy it keeps (store._copy), so only the
    dict of forks and the one fork changed are copied, not every version (a deep copy grew with
    each regenerate)."""
    forks = dict(conv.get("forks") or {})
    found = forks.get(str(at))
    if found is not None:
        found = forks[str(at)] = {**found, "versions": list(found["versions"])}
    return forks, found


def fork(conv, at):
    """Keep the branch from message `at` on as a version of its own, and cut it from the one on
    screen (a new version of that message follows)."""
    forks, found = _own_fork(conv, at)
    conv["forks"] = forks
    tail = _tail(conv, at)
    if found is None:
        found = forks[str(at)] = {"versions": [tail], "current": 0}
    else:
        found["versions"][found["current"]] = tail
    found["versions"].append(None)
    found["current"] = len(found["versions"]) - 1
    _cut(conv, at)


def switch(conv, at, to, load=lambda ref: None):
    """Show version `to` of the branch from message `at` on. False when there is no such version.
    A version stowed elsewhere (`{"ref"}`: see Store) is read with `load(ref)`."""
    forks, found = _own_fork(conv, at)
    if found is None or not isinstance(to, int) or not 0 <= to < len(found["versions"]):
        return False
    if to == found["current"]:
        return True
    chosen = found["versions"][to]
    if isinstance(chosen, dict) and "ref" in chosen:
        chosen = load(chosen["ref"])
        if not isinstance(chosen, dict):
            return False  # its stowed copy is gone
    conv["forks"] = forks
    found["versions"][found["current"]] = _tail(conv, at)
    found["versions"][to] = None
    found["current"] = to
    _cut(conv, at)
    conv["items"].extend(chosen["items"])
    conv["meta"].extend(chosen["meta"])
    conv["forks"].update(chosen["forks"])
    conv["rev"] = conv.get("rev", 0) + 1
    return True


def versions(conv, at):
    """(the version on screen, how many) of the branch from message `at` on, or None."""
    found = (conv.get("forks") or {}).get(str(at))
    return (found["current"], len(found["versions"])) if found else None


def all_items(conv):
    """Every item of every branch held here (for what they refer to: attachments; versions stowed
    elsewhere, `{"ref"}`, are the store's to walk)."""
    found = list(conv.get("items") or ())
    pending = [fork for fork in (conv.get("forks") or {}).values()]
    while pending:
        for version in pending.pop()["versions"]:
            if version and "items" in version:
                found += version["items"]
                pending += list(version["forks"].values())
    return found


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
    items = conv["items"]
    for index, (item, meta) in enumerate(zip(items[start:], conv["meta"][start:]), start):
        note = meta.get("note")
        shown.append({"role": item["role"], "text": item_text(item), "id": item.get("id"),
                      "files": attachments.refs(item), "sources": sources(item),
                      "status": item.get("status"), "note": note_text(note),
                      "stopped": note == "stopped", "model": meta.get("model"), "at": meta.get("at"),
                      # The reply an Edit of this message (or a Regenerate of this reply) replaces.
                      "reply": item.get("id") if item["role"] == "assistant" else
                      (items[index + 1].get("id") if index + 1 < len(items) else None),
                      "index": index, "versions": versions(conv, index) if item["role"] == "user" else None})
    return shown
