"""Attachments: the files a person adds to a message. Images (PNG, JPEG, GIF, WebP), PDFs and UTF-8
text files are accepted, told apart by their bytes (never their names); anything else is refused.

Each file is kept once per conversation under its SHA-256 (`Store.put_file`), and the stored history
refers to it with a small part, so a page view never loads the bytes:

    {"type": "input_image", "detail": "auto", "attachment": REF}
    {"type": "input_file", "attachment": REF}
    {"type": "input_text", "attachment": REF}          (a text file)
    REF = {"sha", "name", "mime", "kind", "size", "tokens"}

`wire(items, read)` turns those parts into exactly what the Responses API takes (a data URL for an
image or a PDF, the file's text in an `input_text` part), each time a turn is sent: the API is
stateless, so every later turn carries the same bytes again. Plain: no Flask, no HTTP."""

import base64
import hashlib
import html
import re
from dataclasses import dataclass

from .usage import estimate_tokens

IMAGE, PDF, TEXT = "image", "pdf", "text"
# Magic numbers: what a file is, by its first bytes.
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)
# What a name claims: a file named so must hold those bytes (a ".png" that is no PNG is refused).
CLAIMS = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
          "webp": "image/webp", "pdf": "application/pdf"}
TYPE_NAMES = {"image/png": "PNG image", "image/jpeg": "JPEG image", "image/gif": "GIF image",
              "image/webp": "WebP image", "application/pdf": "PDF"}
ACCEPTED = ("images (PNG, JPEG, GIF, WebP), PDFs and UTF-8 text files (.txt, .md, .csv, .json, "
            "source code and the like)")
ACCEPT_ATTRIBUTE = "image/png,image/jpeg,image/gif,image/webp,application/pdf,text/*,.md,.csv,.json," \
                   ".py,.js,.ts,.java,.c,.h,.cpp,.rs,.go,.rb,.php,.sh,.yaml,.yml,.toml,.ini,.sql,.xml,.log"
# Providers count an image as a few hundred to ~1,500 tokens and a PDF by its pages' text: the
# budget estimates so (high), never by the bytes.
IMAGE_TOKENS = 1500
PDF_PAGE_TOKENS = 1000
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_SVG = re.compile(r"<svg[\s>]", re.IGNORECASE)
CHUNK = 64 * 1024
_SHA = re.compile(r"[0-9a-f]{64}")


class Refused(Exception):
    """A file that cannot be attached; `message` says which and why."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    name: str
    data: bytes
    mime: str
    kind: str

    @property
    def sha(self):
        return hashlib.sha256(self.data).hexdigest()

    def ref(self):
        return {"sha": self.sha, "name": self.name, "mime": self.mime, "kind": self.kind,
                "size": len(self.data), "tokens": tokens(self.kind, self.data, self.name)}


def size_text(n):
    """Bytes as people read them: 512 bytes, 3.4 KB, 10 MB."""
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB".replace(".0 ", " ")
    return f"{n / (1024 * 1024):.1f} MB".replace(".0 ", " ")


def clean_name(name):
    """A file's name as kept and shown: its last path segment, on one line, at most 200 characters."""
    name = re.split(r"[\\/]", name or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return (name or "file")[:200]


def read_uploads(files, max_bytes, max_count):
    """The uploaded files (werkzeug FileStorage-like: `.filename`, `.stream`), read and checked:
    empty parts (a form sent with no file chosen) are skipped; too many files, one too large, or one
    of a type not accepted raise Refused. Each is read in chunks, and no further than the limit."""
    chosen = [f for f in files if f is not None and (f.filename or "").strip()]
    if len(chosen) > max_count:
        raise Refused(413, f"You attached {len(chosen)} files; at most {max_count} can go with one "
                           "message. Nothing was sent.")
    uploads = []
    for storage in chosen:
        name = clean_name(storage.filename)
        data = _read(storage.stream, name, max_bytes)
        if not data:
            raise Refused(400, f"“{name}” is empty. Nothing was sent.")
        mime, kind = identify(name, data)
        uploads.append(Upload(name, data, mime, kind))
    return uploads


def _read(stream, name, max_bytes):
    chunks, size = [], 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise Refused(413, f"“{name}” is too large: the limit is {size_text(max_bytes)} per file. "
                               "Nothing was sent.")
        chunks.append(chunk)


def identify(name, data):
    """(mime type, kind) of a file from its bytes, or Refused naming the file and what is accepted."""
    found = next((mime for magic, mime in SIGNATURES if data.startswith(magic)), None)
    if found is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        found = "image/webp"
    claimed = CLAIMS.get(name.rsplit(".", 1)[-1].lower()) if "." in name else None
    if name.lower().endswith(".svg"):
        raise Refused(415, f"“{name}” is an SVG image, which is not accepted (it can carry script). "
                           f"Accepted: {ACCEPTED}.")
    # A photo saved under another image type's name is still an image; a ".png" that is no
    # image at all (or a ".pdf" that is no PDF) is refused.
    if claimed and not (found == claimed or (found or "").startswith("image/") and claimed.startswith("image/")):
        raise Refused(415, f"“{name}” is named as a {TYPE_NAMES[claimed]} but is not one. "
                           f"Accepted: {ACCEPTED}.")
    if found:
        return found, PDF if found == "application/pdf" else IMAGE
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise Refused(415, f"“{name}” is not a type that can be attached. Accepted: {ACCEPTED}.")
    if _SVG.search(text[:4096]):
        raise Refused(415, f"“{name}” is an SVG image, which is not accepted (it can carry script). "
                           f"Accepted: {ACCEPTED}.")
    return "text/plain; charset=utf-8", TEXT


def tokens(kind, data, name=""):
    """An estimate of the tokens a provider counts for the file (high rather than low)."""
    if kind == IMAGE:
        return IMAGE_TOKENS
    if kind == PDF:
        return PDF_PAGE_TOKENS * max(1, len(_PAGE.findall(data)))
    return estimate_tokens(data.decode("utf-8", "replace")) + estimate_tokens(name) + 8


def part(ref):
    """The stored content part for an attachment (bytes elsewhere, named by `ref`)."""
    if ref["kind"] == IMAGE:
        return {"type": "input_image", "detail": "auto", "attachment": ref}
    if ref["kind"] == PDF:
        return {"type": "input_file", "attachment": ref}
    return {"type": "input_text", "attachment": ref}


def refs(item):
    """The attachments of a stored message item, in order."""
    return [p["attachment"] for p in item.get("content") or ()
            if isinstance(p, dict) and isinstance(p.get("attachment"), dict)]


def all_refs(conv):
    """Every attachment a conversation refers to: its items (in every branch), its failed turn and
    the turn under way."""
    from .conversation import all_items  # (conversation imports this module)

    found = [ref for item in all_items(conv) for ref in refs(item)]
    for record in (conv.get("failed"), conv.get("pending")):
        found += (record or {}).get("files") or []
    return found


def find(conv, sha):
    """The attachment `sha` of this conversation, or None (also for a malformed sha)."""
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        return None
    return next((ref for ref in all_refs(conv) if ref["sha"] == sha), None)


def stored(store, cid, sha):
    """(reference, bytes) of attachment `sha` of conversation `cid`, or None: it must be one the
    conversation refers to (so a file is reachable only through a conversation that holds it)."""
    ref = find(store.load(cid), sha)
    data = store.get_file(cid, sha) if ref else None
    return None if data is None else (ref, data)


def has_images(items):
    return any(ref["kind"] == IMAGE for item in items for ref in refs(item))


class Missing(Exception):
    """An attachment's bytes are no longer stored."""


def text_part(name, text):
    return f'<file name="{html.escape(name)}">\n{text}\n</file>'


_TEXT_FILE = re.compile(r'<file name="([^"\n]*)">\n(.*)\n</file>', re.DOTALL)


def wire_part(p, read):
    """One stored part as the API takes it (`read(sha)` gives the bytes, or None)."""
    ref = p.get("attachment") if isinstance(p, dict) else None
    if not ref:
        return p
    data = read(ref["sha"])
    if data is None:
        raise Missing(ref["name"])
    if ref["kind"] == TEXT:
        return {"type": "input_text", "text": text_part(ref["name"], data.decode("utf-8"))}
    url = f"data:{ref['mime']};base64,{base64.b64encode(data).decode('ascii')}"
    if ref["kind"] == IMAGE:
        return {"type": "input_image", "image_url": url, "detail": p.get("detail", "auto")}
    return {"type": "input_file", "filename": ref["name"], "file_data": url}


def wire(items, read):
    """The items as the Responses API takes them: attachment parts made whole; others unchanged
    (the same objects: only items with attachments are copied)."""
    out = []
    for item in items:
        if any(isinstance(p, dict) and "attachment" in p for p in item.get("content") or ()):
            item = {**item, "content": [wire_part(p, read) for p in item["content"]]}
        out.append(item)
    return out


class Bad(Exception):
    """A part of an imported item that cannot be taken as an attachment."""


def from_wire_part(p, max_bytes):
    """An imported part, back as an Upload when it is an attachment (an image or PDF data URL, or a
    text file's `<file name=…>` part), else None. Checked as uploads are."""
    kind = p.get("type")
    if kind == "input_text":
        found = _TEXT_FILE.fullmatch(p.get("text") or "")
        if not found:
            return None
        data = found.group(2).encode("utf-8")
        name = clean_name(html.unescape(found.group(1)))
    elif kind in ("input_image", "input_file"):
        url = p.get("image_url") if kind == "input_image" else p.get("file_data")
        head, sep, payload = (url if isinstance(url, str) else "").partition(",")
        if not sep or not head.startswith("data:") or not head.endswith(";base64"):
            raise Bad("it must hold its bytes as a base64 data URL")
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:
            raise Bad("its data URL is not valid base64") from None
        name = p.get("filename") if isinstance(p.get("filename"), str) else ""
        name = clean_name(name or ("image" if kind == "input_image" else "file.pdf"))
    else:
        return None
    if len(data) > max_bytes:
        raise Bad(f"the file is larger than the limit of {size_text(max_bytes)}")
    try:
        mime, found_kind = identify(name, data)
    except Refused as refused:
        raise Bad(refused.message) from None
    wanted = {"input_image": IMAGE, "input_file": PDF, "input_text": TEXT}[kind]
    if found_kind != wanted:
        raise Bad(f"its bytes are not a{'n image' if wanted == IMAGE else ' PDF'}")
    return Upload(name, data, mime, found_kind)
