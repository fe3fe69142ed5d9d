"""Reading OpenRouter's answers: a response object into a `Reply`, Server-Sent Events into their data
(keep-alive comments included), and a reasoning summary as it streams. No HTTP here."""

from dataclasses import dataclass, field

from .errors import UpstreamError, error_detail

@dataclass
class Reply:
    """The assistant's answer: the message item's own id and status, its text, and usage beside it."""

    item_id: str
    status: str
    text: str
    usage: dict | None = None
    model: str | None = None
    incomplete_reason: str | None = None
    # The reasoning summary (its parts joined with blank lines), when the model sent one. Never part of
    # `text`, and never sent back upstream.
    reasoning: str | None = None
    # The text's annotations (url_citation: url, title, start_index, end_index), exactly as returned:
    # stored with the item and sent back with it. Untrusted: the page shows only http(s) links.
    annotations: list = field(default_factory=list)


IDLE = "idle"  # what `sse_data` yields when the stream stayed quiet as long as its caller asked
CAUGHT_UP = "caught_up"  # what it yields when all that had arrived is read, before a read that waits


def body_pieces(raw):
    """A streamed urllib3 response's body as it arrives: a chunked body (OpenRouter's) chunk by chunk
    through urllib3's own reader, which takes each chunk's size line and closing line break with it
    (nothing of a read chunk is left buffered, so "has more arrived?" is one look, and the
    connection goes back to the pool when the last chunk is read); any other body, whatever bytes
    have arrived at each read. Neither waits for a buffer to fill (requests' `iter_lines` reads
    512-byte blocks and holds small events back when the body is not chunked)."""
    if raw.chunked and raw.supports_chunked_reads():
        return raw.read_chunked()
    return iter(lambda: raw.read1(65536), b"")


def sse_data(pieces, waiting=None):
    """Yield each SSE event's `data` (a str) from a body's `pieces` (`body_pieces`), or None for a
    comment line. `waiting`, when given, is asked before each read: `ready()` (something has
    arrived: read it at once); if not, CAUGHT_UP is yielded (whoever streams the events writes out
    what it holds, so events read together go out together and none waits), then `wait()`: True
    when nothing arrived for as long as the caller wanted to wait, which yields IDLE, and the
    reading goes on after it."""
    buf, data = b"", []
    while True:
        if waiting is not None and not waiting.ready():
            yield CAUGHT_UP
            if waiting.wait():
                yield IDLE
                continue
        chunk = next(pieces, b"")
        if not chunk:
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith(b":"):
                yield None  # keep-alive comment (": OPENROUTER PROCESSING"): alive, not JSON
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8"))
            # `event:`, `id:` and `retry:` lines carry nothing this client needs.


def _summary_texts(item):
    """The summary texts of a `reasoning` output item: `{"type": "summary_text", "text"}` entries per
    the spec, plain strings per one docs page."""
    summary = item.get("summary") if isinstance(item, dict) else None
    if not isinstance(summary, list):
        return []
    texts = []
    for entry in summary:
        if isinstance(entry, str):
            texts.append(entry)
        elif isinstance(entry, dict) and entry.get("type", "summary_text") == "summary_text" \
                and isinstance(entry.get("text"), str):
            texts.append(entry["text"])
    return texts


def _join_summary(texts):
    return "\n\n".join(text for text in texts if text) or None


def reasoning_from_output(output):
    """The reasoning summary of a response's `output` list (blank lines between parts), or None."""
    if not isinstance(output, list):
        return None
    return _join_summary([text for item in output
                          if isinstance(item, dict) and item.get("type") == "reasoning"
                          for text in _summary_texts(item)])


def reply_from_response(body):
    """Read a non-streamed response object: join the assistant message item(s); the reasoning
    summary goes to `Reply.reasoning`, never into the text."""
    if isinstance(body, dict) and (body.get("status") == "failed" or (
            not isinstance(body.get("output"), list) and isinstance(body.get("error"), dict))):
        raise UpstreamError("failed", detail=error_detail(body))  # an error where a reply belongs
    if not isinstance(body, dict) or not isinstance(body.get("output"), list):
        raise UpstreamError("bad_response")
    messages = [
        item for item in body["output"]
        if isinstance(item, dict) and item.get("type") == "message"
        and item.get("role", "assistant") == "assistant" and item.get("id")
    ]
    if not messages:
        raise UpstreamError("no_message")
    parts = [part for item in messages for part in item.get("content") or []
             if isinstance(part, dict) and part.get("type") == "output_text"]
    text, annotations = "", []
    for part in parts:
        found = part.get("annotations")
        for annotation in found if isinstance(found, list) else ():
            if isinstance(annotation, dict):
                if text and isinstance(annotation.get("start_index"), int) \
                        and isinstance(annotation.get("end_index"), int):
                    # The parts are joined into one: an index into a later part moves with it.
                    annotation = {**annotation, "start_index": annotation["start_index"] + len(text),
                                  "end_index": annotation["end_index"] + len(text)}
                annotations.append(annotation)
        text += part.get("text", "") if isinstance(part.get("text"), str) else ""
    # With several message items the history keeps one item; the last one's id and status stand for it.
    last = messages[-1]
    status = last.get("status") or body.get("status") or "completed"
    if body.get("status") == "incomplete":
        status = "incomplete"
    reason = (body.get("incomplete_details") or {}).get("reason") if status == "incomplete" else None
    return Reply(last["id"], status, text, body.get("usage"), body.get("model"), reason,
                 reasoning_from_output(body["output"]), annotations)


class _Summary:
    """A streamed reasoning summary: its parts in order, keyed by (item id, summary index), and how
    much of it was yielded, so the yielded pieces always add up to a prefix of `text()`."""

    def __init__(self):
        self.parts = {}
        self.shown = []  # the pieces yielded so far
        self.shown_len = 0
        self.total = 0  # len(self.text())

    def text(self):
        return _join_summary(list(self.parts.values()))

    def delta(self, key, delta):
        """Append a `reasoning_summary_text.delta`; return the piece to yield ("" for none)."""
        last = next(reversed(self.parts)) if self.parts else None
        if key == last and self.parts[key] and self.shown_len == self.total:
            # The common case, kept O(len(delta)): more words for the part being shown.
            self.parts[key] += delta
            self.total += len(delta)
            return self._show(delta)
        self.parts[key] = self.parts.get(key, "") + delta
        return self._catch_up()

    def replace(self, key, text):
        """The whole text of one part (`reasoning_summary_text.done`)."""
        self.parts[key] = text
        return self._catch_up()

    def replace_item(self, item_id, texts):
        """The whole summary of one reasoning item (`output_item.done`)."""
        for index, text in enumerate(texts):
            self.parts[(item_id, index)] = text
        return self._catch_up()

    def _show(self, piece):
        self.shown.append(piece)
        self.shown_len += len(piece)
        return piece

    def _catch_up(self):
        full = self.text() or ""
        self.total = len(full)
        shown = "".join(self.shown)
        self.shown = [shown] if shown else []
        if len(full) > len(shown) and full.startswith(shown):
            return self._show(full[len(shown):])
        return ""  # a correction of words already shown: the final reply carries the truth
