"""Export and import of a conversation: Markdown to read, JSON to keep and bring back.

Plain functions on the conversation dict (see conversation.py); no Flask, no HTTP here.

The JSON file keeps the Responses API items exactly as they go upstream, so an imported
conversation continues where it stopped. An imported file is hostile until proven otherwise:
`from_json` checks every field it keeps, rebuilds every object it returns (nothing from the file is
stored by reference, unknown fields are never carried along) and reports the first problem as an
`ImportProblem` (a ValueError) with a sentence a user can act on; it never raises anything else.
"""

import copy
import dataclasses
import datetime
import json
import math
import re
import time

from . import attachments, conversation, usage

FORMAT = "chat-conversation"
VERSION = 1

SETTINGS_KEYS = conversation.SETTINGS  # model, instructions, then the rest (in the export's "settings")
EFFORTS = ("minimal", "low", "medium", "high")
STATUSES = ("completed", "incomplete", "in_progress")
ITEM_KEYS = {"user": {"type", "role", "content"},
             "assistant": {"type", "role", "id", "status", "content"}}
PART_KEYS = {"user": {"type", "text"}, "assistant": {"type", "text", "annotations"}}
PART_TYPES = {"user": "input_text", "assistant": "output_text"}

TITLE_LIMIT = 200
MODEL_LIMIT = 200
ID_LIMIT = 200
NOTE_LIMIT = 500
PARTS_LIMIT = 64           # content parts in one item (the app writes one)
MAX_OUTPUT_LIMIT = 10_000_000
LATEST_TIME = 253402300799  # 9999-12-31T23:59:59Z: later times cannot be shown
MODEL_RE = re.compile(r"[A-Za-z0-9._:/-]+")
ID_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # no line breaks or controls in a title
USAGE_COUNTS = ("input_tokens", "output_tokens", "total_tokens")
USAGE_DETAILS = {"input_tokens_details": "cached_tokens", "output_tokens_details": "reasoning_tokens"}
ROLE_NAMES = {"user": "You", "assistant": "Assistant"}


class ImportProblem(ValueError):
    """The file cannot be imported; str(problem) says why, in words for the user."""


# ---------------------------------------------------------------- shared helpers

def _settings(conv):
    """The conversation's settings with every known key (None when unset)."""
    return dataclasses.asdict(conversation.Settings.of(conv))


def _utc(at, fmt):
    try:
        return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime(fmt)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _time_ok(at):
    return (isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at)
            and 0 <= at <= LATEST_TIME)


def _clean_usage(found):
    """The known usage fields that hold valid numbers (absurdly large ones are not: see
    usage.MAX_TOKENS and usage.MAX_USD); None when nothing is left."""
    if not isinstance(found, dict):
        return None
    clean = {}
    for key in USAGE_COUNTS:
        n = usage.count(found.get(key))
        if n is not None:
            clean[key] = n
    for key, inner in USAGE_DETAILS.items():
        details = found.get(key)
        n = usage.count(details.get(inner)) if isinstance(details, dict) else None
        if n is not None:
            clean[key] = {inner: n}
    if "cost" in found:  # a number (not a string) within usage's bounds, as _count keeps counts
        cost = found["cost"]
        if cost is None or (isinstance(cost, (int, float)) and not isinstance(cost, bool)
                            and usage.money(cost) is not None):
            clean["cost"] = None if cost is None else float(cost)
    return clean or None


def _clean_meta(found):
    """The exportable part of one meta entry: {"at", "model", "usage", "note"}, each None when
    missing or invalid (internal fields never leave)."""
    found = found if isinstance(found, dict) else {}
    at, model, note = found.get("at"), found.get("model"), found.get("note")
    return {"at": at if _time_ok(at) else None,
            "model": model if _model_ok(model) else None,
            "usage": _clean_usage(found.get("usage")),
            "note": note if isinstance(note, str) and 0 < len(note) <= NOTE_LIMIT and _utf8(note)
            else None}


def _model_ok(model):
    return isinstance(model, str) and len(model) <= MODEL_LIMIT and bool(MODEL_RE.fullmatch(model))


def _utf8(text):
    """Whether the string can be stored and sent (JSON allows lone surrogates; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- export

def _md_escape(text):
    """Plain text for a one-line Markdown span (metadata lines and the title)."""
    text = " ".join(str(text).split())
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)


def to_markdown(conv, title, prices_by_model=None, now=None):
    """The conversation as a Markdown document to read:

        # {title}
        *Exported … UTC · model · usage totals*
        ## Instructions          (when there are any)
        ## You / ## Assistant    (each message: an italic line with the model and the UTC time when
                                 known, the text as-is, the note (cut off / stopped) in italics,
                                 then the reply's usage in italics)

    Dropped turns (no longer sent upstream) are included, followed by a line saying so.
    """
    settings = _settings(conv)
    items, metas = conv.get("items") or [], conv.get("meta") or []
    dropped = conv.get("dropped") if isinstance(conv.get("dropped"), int) else 0
    title = title or conv.get("title") or conversation.title(conv) or "Conversation"
    head = [f"Exported {_utc(now if now is not None else time.time(), '%Y-%m-%d %H:%M UTC')}"]
    if settings["model"]:
        head.append(f"model {settings['model']}")
    head.append(usage.totals(conv, prices_by_model)["text"])
    out = [f"# {_md_escape(title)}", "", f"*{_md_escape(' · '.join(head))}*", ""]
    if settings["instructions"]:
        out += ["## Instructions", "", settings["instructions"], ""]
    for index, item in enumerate(items):
        meta = metas[index] if index < len(metas) and isinstance(metas[index], dict) else {}
        role = item.get("role")
        out += [f"## {ROLE_NAMES.get(role, _md_escape(role))}", ""]
        when = _utc(meta.get("at"), "%Y-%m-%d %H:%M UTC") if _time_ok(meta.get("at")) else None
        byline = [part for part in (meta.get("model") if role == "assistant" else None, when) if part]
        if byline:
            out += [f"*{_md_escape(' · '.join(map(str, byline)))}*", ""]
        out += [conversation.item_text(item), ""]
        files = attachments.refs(item)
        if files:
            out += ["*Attached: " + ", ".join(_md_escape(ref["name"]) for ref in files) + "*", ""]
        if meta.get("note"):
            out += [f"*{_md_escape(conversation.note_text(meta['note']))}*", ""]
        if role == "assistant":
            model = meta.get("model")
            prices = prices_by_model.get(model) if isinstance(prices_by_model, dict) and isinstance(
                model, str) else None
            spent = usage.turn_usage(meta, prices)["text"]
            if spent:
                out += [f"*{_md_escape(spent)}*", ""]
        if dropped and index + 1 == dropped and index + 1 < len(items):
            out += ["---", "", "*The messages above are no longer sent to the model.*", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def to_json(conv, title, prices_by_model=None, now=None, read=None):
    """The conversation as a JSON-able dict to keep and import again:

        {"format": "chat-conversation", "version": 1, "title", "model", "instructions",
         "settings": {"max_output_tokens", "temperature", "effort"}, "exported_at": ISO 8601 UTC,
         "items": the items exactly as they go upstream (attachments as data URLs: `read(sha)`
         gives their bytes), "meta": [{"at", "model", "usage", "note"} per item],
         "files": [{"sha256", "name"}] (the names of attachments: an image's is not in its part),
         "usage": usage.totals(conv)}

    `title` None falls back to conv["title"] (which may be None too)."""
    settings = _settings(conv)
    stamp = now if now is not None else time.time()
    metas = conv.get("meta") or []
    items = conv.get("items") or []
    files = [{"sha256": ref["sha"], "name": ref["name"]} for item in items for ref in attachments.refs(item)]
    if read is not None:
        items = attachments.wire(items, read)
    return {
        "format": FORMAT, "version": VERSION,
        "title": title if title is not None else conv.get("title"),
        "model": settings["model"], "instructions": settings["instructions"],
        "settings": {key: settings[key] for key in SETTINGS_KEYS[2:]},
        "exported_at": _utc(stamp, "%Y-%m-%dT%H:%M:%SZ"),
        "items": copy.deepcopy(items),
        "meta": [_clean_meta(metas[i] if i < len(metas) else None) for i in range(len(items))],
        "files": files,
        "usage": usage.totals(conv, prices_by_model),
    }


# ---------------------------------------------------------------- import

def _text(value, what, limit, blank_ok=True, one_line=False):
    if not isinstance(value, str):
        raise ImportProblem(f"{what} must be text.")
    if len(value) > limit:
        raise ImportProblem(f"{what} is too long ({len(value):,} characters; the limit is {limit:,}).")
    if not _utf8(value):
        raise ImportProblem(f"{what} contains characters that are not valid Unicode.")
    if not blank_ok and not value.strip():
        raise ImportProblem(f"{what} is empty.")
    if one_line and CONTROL_RE.search(value):
        raise ImportProblem(f"{what} must be one line of printable text.")
    return value


def _keys(obj, allowed, what):
    extra = sorted(str(key)[:40] for key in obj if key not in allowed)
    if extra:
        raise ImportProblem(f"{what} has a field this app does not know: {extra[0]!r}.")
    missing = sorted(key for key in allowed if key not in obj)
    if missing:
        raise ImportProblem(f"{what} lacks the field {missing[0]!r}.")


def _attachment(part, where, files, names):
    """An imported user part that is an attachment, as its stored part (its Upload kept in `files`
    for the caller to store), or None for a plain text part."""
    try:
        upload = attachments.from_wire_part(part, files.max_bytes)
    except attachments.Bad as bad:
        raise ImportProblem(f"{where} is an attachment that cannot be imported: {bad}.") from None
    if upload is None:
        return None
    if isinstance(names.get(upload.sha), str) and upload.kind == attachments.IMAGE:
        upload.name = attachments.clean_name(names[upload.sha])
    files.append(upload)
    return attachments.part(upload.ref())


class _Files(list):
    def __init__(self, max_bytes):
        super().__init__()
        self.max_bytes = max_bytes


ATTACHMENT_KEYS = {"input_image": ({"type", "image_url"}, {"detail"}),
                   "input_file": ({"type", "filename", "file_data"}, set())}


def _item(found, index, max_chars, files=None, names=None):
    what = f"Message {index + 1}"
    if not isinstance(found, dict):
        raise ImportProblem(f"{what} must be an object.")
    role = found.get("role")
    if not isinstance(role, str) or role not in ITEM_KEYS:
        shown = f"the role {role[:40]!r}" if isinstance(role, str) else "no valid role"
        raise ImportProblem(f"{what} has {shown}; only \"user\" and \"assistant\" messages can be "
                            "imported.")
    expected = "user" if index % 2 == 0 else "assistant"
    if role != expected:
        raise ImportProblem(f"{what} should be from the {expected}: messages must alternate, "
                            "starting with the user.")
    _keys(found, ITEM_KEYS[role], what)
    if found["type"] != "message":
        raise ImportProblem(f"{what} must have the type \"message\".")
    item = {"type": "message", "role": role}
    if role == "assistant":
        item_id, status = found["id"], found["status"]
        if not isinstance(item_id, str) or not item_id or len(item_id) > ID_LIMIT \
                or not ID_RE.fullmatch(item_id):
            raise ImportProblem(f"{what} needs an id: up to {ID_LIMIT} printable characters, "
                                "no spaces.")
        if status not in STATUSES:
            raise ImportProblem(f"{what} has an unknown status; it must be one of "
                                f"{', '.join(STATUSES)}.")
        item.update(id=item_id, status=status)
    content = found["content"]
    if not isinstance(content, list) or not content:
        raise ImportProblem(f"{what} must have its content as a non-empty list of text parts.")
    if len(content) > PARTS_LIMIT:
        raise ImportProblem(f"{what} has too many content parts (the limit is {PARTS_LIMIT}).")
    parts = []
    for number, part in enumerate(content, 1):
        where = f"{what}, part {number}"
        if not isinstance(part, dict):
            raise ImportProblem(f"{where} must be an object.")
        kind = part.get("type") if isinstance(part.get("type"), str) else None
        if role == "user" and files is not None and kind in ATTACHMENT_KEYS:
            needed, optional = ATTACHMENT_KEYS[part["type"]]
            _keys({k: v for k, v in part.items() if k not in optional}, needed, where)
            parts.append(_attachment(part, where, files, names or {}))
            continue
        if role == "user" and files is not None and kind == "input_text" and isinstance(part.get("text"), str):
            stored = _attachment({"type": "input_text", "text": part.get("text")}, where, files, names or {})
            if stored is not None:
                parts.append(stored)
                continue
        _keys(part, PART_KEYS[role], where)
        if part["type"] != PART_TYPES[role]:
            raise ImportProblem(f"{where} must have the type \"{PART_TYPES[role]}\".")
        text = _text(part["text"], where, max_chars)
        clean = {"type": PART_TYPES[role], "text": text}
        if role == "assistant":
            clean["annotations"] = _annotations(part["annotations"], where)
        parts.append(clean)
    joined = "".join(p.get("text", "") for p in parts)
    if len(joined) > max_chars:
        raise ImportProblem(f"{what} is too long ({len(joined):,} characters; the limit is "
                            f"{max_chars:,}).")
    if role == "user" and not joined.strip() and not attachments.refs({"content": parts}):
        raise ImportProblem(f"{what} is empty.")
    item["content"] = parts
    return item


ANNOTATION_KEYS = {"type", "url", "title", "start_index", "end_index"}
ANNOTATIONS_LIMIT = 200


def _annotations(found, where):
    """A reply's annotations: web search citations (url_citation), rebuilt field by field."""
    if not isinstance(found, list) or len(found) > ANNOTATIONS_LIMIT:
        raise ImportProblem(f"{where} must have its annotations as a list of at most {ANNOTATIONS_LIMIT}.")
    clean = []
    for annotation in found:
        if not isinstance(annotation, dict) or annotation.get("type") != "url_citation":
            raise ImportProblem(f"{where} has an annotation that is not a url_citation.")
        _keys(annotation, ANNOTATION_KEYS, f"{where}, an annotation")
        url, title = annotation["url"], annotation["title"]
        start, end = annotation["start_index"], annotation["end_index"]
        if not isinstance(url, str) or len(url) > 2000 or not isinstance(title, str) or len(title) > 1000 \
                or type(start) is not int or type(end) is not int or not 0 <= start <= end:
            raise ImportProblem(f"{where} has a citation whose url, title or indices are not valid.")
        clean.append({"type": "url_citation", "url": url, "title": title, "start_index": start,
                      "end_index": end})
    return clean


def _setting(key, value, max_chars):
    """One validated setting (None means the default)."""
    if value is None:
        return None
    if key == "model":
        if not _model_ok(value):
            raise ImportProblem(f"The model must be a model id such as \"openai/o4-mini\" "
                                f"(letters, digits and . _ : / -, at most {MODEL_LIMIT}).")
        return value
    if key == "instructions":
        return _text(value, "The instructions", max_chars)
    if key == "max_output_tokens":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_LIMIT:
            raise ImportProblem("The output token limit (max_output_tokens) must be a whole "
                                f"number from 1 to {MAX_OUTPUT_LIMIT:,}.")
        return value
    if key == "temperature":
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not 0 <= value <= 2:
            raise ImportProblem("The temperature must be a number from 0 to 2.")
        return value
    if value not in EFFORTS:  # effort
        raise ImportProblem(f"The reasoning effort must be one of {', '.join(EFFORTS)}.")
    return value


def from_json(data, max_items=2000, max_chars=100_000, max_total_chars=5_000_000,
              max_file_bytes=10 * 1024 * 1024):
    """A new conversation from an exported JSON document (already parsed), or ImportProblem.

    Returns {"items", "meta", "pending": None, "failed": None, "rev": 0, "dropped": 0,
    "settings": {model, instructions, max_output_tokens, temperature, effort} (None = default),
    "title": str|None}. Items are rebuilt field by field, equal to the file's; meta is taken from
    the file's where valid (at, model, usage's known numbers, note), else left out, never an error.
    Top-level `model`/`instructions` win over the same keys inside `settings`. Unknown top-level
    fields are ignored; unknown fields anywhere inside items or settings are an error.
    Attachments (an image or PDF data URL, a text file's part) are checked as uploads are and
    returned as `Upload`s under "uploads", for the caller to store; the items refer to them.
    """
    if not isinstance(data, dict):
        raise ImportProblem("This is not an exported conversation: expected a JSON object.")
    if "format" in data and data["format"] != FORMAT:
        raise ImportProblem("This file is not an exported conversation of this app.")
    if "version" in data and (type(data["version"]) is not int or data["version"] != VERSION):
        raise ImportProblem("This file was exported by a newer version of the app, or is damaged.")
    found = data.get("items")
    if not isinstance(found, list):
        raise ImportProblem("The file has no list of messages (\"items\").")
    if not found:
        raise ImportProblem("The file has no messages: nothing to import.")
    if len(found) > max_items:
        raise ImportProblem(f"The file has too many messages ({len(found):,}; the limit is "
                            f"{max_items:,}).")
    items, total = [], 0
    files = _Files(max_file_bytes)
    names = {f.get("sha256"): f.get("name") for f in data.get("files") or () if isinstance(f, dict)} \
        if isinstance(data.get("files"), list) else {}
    for index, item in enumerate(found):
        item = _item(item, index, max_chars, files, names)
        total += sum(len(part.get("text", "")) for part in item["content"])
        if total > max_total_chars:
            raise ImportProblem(f"The conversation is too long (more than {max_total_chars:,} "
                                "characters).")
        items.append(item)
    if items[-1]["role"] != "assistant":
        raise ImportProblem("The last message must be a reply from the assistant.")

    settings = {key: None for key in SETTINGS_KEYS}
    found_settings = data.get("settings")
    if found_settings is not None:
        if not isinstance(found_settings, dict):
            raise ImportProblem("The settings must be an object.")
        extra = [str(key)[:40] for key in found_settings if key not in SETTINGS_KEYS]
        if extra:
            raise ImportProblem(f"The settings have a field this app does not know: {extra[0]!r}.")
        for key, value in found_settings.items():
            settings[key] = _setting(key, value, max_chars)
    for key in ("model", "instructions"):
        if data.get(key) is not None:
            settings[key] = _setting(key, data[key], max_chars)

    title = data.get("title")
    if title is not None:
        title = conversation.clean_title(_text(title, "The title", TITLE_LIMIT, one_line=True)) or None

    metas = data.get("meta") if isinstance(data.get("meta"), list) else []
    meta = []
    for index in range(len(items)):
        clean = _clean_meta(metas[index] if index < len(metas) else None)
        if items[index]["role"] == "user":
            clean = {"at": clean["at"]}
        meta.append({key: value for key, value in clean.items() if value is not None})

    return {"items": items, "meta": meta, "pending": None, "failed": None, "rev": 0,
            "dropped": 0, "settings": settings, "title": title, "uploads": list(files)}


def _no_constant(name):
    raise ImportProblem(f"The file contains {name}, which is not valid JSON.")


def parse_bytes(raw, max_bytes):
    """Parse an uploaded file as JSON (UTF-8, an optional BOM), or ImportProblem: too large,
    not UTF-8, not JSON, NaN/Infinity, nested too deeply, numbers too long."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ImportProblem("The upload is not a file.")
    if len(raw) > max_bytes:
        raise ImportProblem(f"The file is too large (the limit is {max_bytes:,} bytes).")
    if not len(raw):
        raise ImportProblem("The file is empty.")
    try:
        text = bytes(raw).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportProblem("The file is not UTF-8 text.") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ImportProblem:
        raise
    except RecursionError:
        raise ImportProblem("The file is nested too deeply to be an exported conversation.") from None
    except ValueError as error:  # JSONDecodeError, and ints over Python's digit limit
        where = f" (line {error.lineno}, column {error.colno})" if hasattr(error, "lineno") else ""
        raise ImportProblem(f"The file is not valid JSON{where}.") from None


def from_bytes(raw, max_bytes, **limits):
    """`from_json(parse_bytes(raw, max_bytes), **limits)`: a new conversation from an uploaded file."""
    return from_json(parse_bytes(raw, max_bytes), **limits)
