"""gunicorn's access log, safe to read and to keep: one request is one line, and no turn id is written.

gunicorn.conf.py selects it with `logger_class = "webapp.accesslog.AccessLogger"`.

gunicorn's `%(U)s` is the *decoded* path, so a request for `/foo%0aINJECTED 200` would write a second,
forged line into the log, and `/turns/<id>` (following a reply after a reload) would keep turn ids in
it. Every text atom (path, query, request line, headers, environ) is escaped the way nginx escapes its
access log: control characters, DEL, `"`, `\\` and every byte above 0x7f become `\\xNN`, so a line is
pure ASCII and a quoted field cannot be closed early. The ids after `/c/` and `/turns/` become `…`.
"""

import re

from gunicorn.glogging import Logger
from gunicorn.util import unquote_to_wsgi_str

# Ids in paths: the segment after `/c/` (a conversation) and everything after `/turns/` (a turn):
# `/c/<id>/turns/<turn>` is logged `/c/…/turns/…`.
MASK = "…"
_IDS = re.compile(r"(?<=/c/)[^/?]+|(?<=/turns/).+")

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def _hex(match):
    char = match.group()
    code = ord(char)
    # WSGI strings are bytes decoded as latin-1 (PEP 3333), so a character is one byte; anything
    # wider (not from gunicorn) is escaped as its UTF-8 bytes.
    data = bytes([code]) if code <= 0xFF else char.encode("utf-8", "surrogatepass")
    return "".join(f"\\x{b:02x}" for b in data)


def escape(text):
    """`text` with control characters, DEL, `"`, `\\` and non-ASCII bytes written as `\\xNN`."""
    return _UNSAFE.sub(_hex, text)


def mask(path):
    """`/turns/abc123` -> `/turns/…`, `/c/abc/export.md` -> `/c/…/export.md`; others as they are."""
    return _IDS.sub(lambda m: MASK if m.group().strip("/") else m.group(), path)


def safe_path(path):
    """A path as the access log writes it: escaped, then masked (the mask itself is not escaped)."""
    return mask(escape(path or ""))


class AccessLogger(Logger):
    """gunicorn's Logger with every client-supplied atom escaped and ids in paths masked."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if isinstance(value, str) and _UNSAFE.search(value):
                atoms[key] = escape(value)
        path = environ.get("PATH_INFO")
        if path is None:  # a request gunicorn itself failed (its environ has only RAW_URI)
            path = unquote_to_wsgi_str((environ.get("RAW_URI") or "-").partition("?")[0])
        path = safe_path(path)
        query = atoms.get("q") or ""
        atoms["U"] = path
        # The raw request line would repeat the id (and may spell it %-encoded): rebuild it from the
        # masked path instead.
        atoms["r"] = "%s %s%s %s" % (atoms.get("m") or "-", path, f"?{query}" if query else "",
                                     atoms.get("H") or "-")
        for key in ("{path_info}e", "{raw_uri}e", "{request_uri}e"):
            if key in atoms:
                atoms[key] = path
        return atoms
