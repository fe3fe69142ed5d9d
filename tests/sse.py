"""Reading turns in tests: Server-Sent Events from a live response or a whole body, and waiting."""

import json
import time


def events(response, ids=None):
    """(kind, data) pairs from an SSE response as they arrive; comment lines come as ("comment", text).
    `ids`: a list that gets each event's id (None for an event without one), in step with the events."""
    kind, data, event_id = "message", [], None
    for line in response.iter_lines(chunk_size=1, decode_unicode=True):
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            if ids is not None:
                ids.append(event_id)
            yield kind, json.loads("\n".join(data))
            kind, data, event_id = "message", [], None


def sse_events(body):
    """(kind, data) pairs of a whole SSE body (read through the test client); comments skipped."""
    found = []
    for block in body.split("\n\n"):
        kind, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            found.append((kind, json.loads("\n".join(data))))
    return found


def until(kind, stream):
    """Read events up to and including the first of `kind`; return (that event's data, all seen)."""
    seen = []
    for k, data in stream:
        seen.append((k, data))
        if k == kind:
            return data, seen
    raise AssertionError(f"stream ended without {kind}: {seen}")


def wait_for(predicate, timeout=10.0, every=0.05):
    """True once `predicate()` is, False if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
