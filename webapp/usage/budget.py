"""The context budget: how much of a model's context a request would use, what output it can still
ask for, how many of the oldest turns to stop sending so a message fits, and whether an upstream
error says the request did not fit."""

import math

from .estimate import ITEM_OVERHEAD, estimate_items, estimate_tokens, item_tokens
from .numbers import count
from .cost import format_tokens

# The context budget (see `budget`).
MIN_ANSWER = 256           # room a reply needs at the least...
MIN_ANSWER_FRACTION = 0.10  # ...or 10% of the context for tiny models, whichever is smaller
MARGIN_FRACTION = 0.10     # safety margin: 10% of the estimate (it is rough)...
MARGIN_TOKENS = 64         # ...plus 64 tokens (request framing, instructions wrapper)

def _limit(context_length):
    n = count(context_length)
    return n if n else None


def _margin(used, reserve):
    if reserve is not None:
        return max(0, count(reserve) or 0)
    return math.ceil(used * MARGIN_FRACTION) + MARGIN_TOKENS


def _min_answer(limit, min_answer):
    if min_answer is not None:
        return count(min_answer) or 0
    return min(MIN_ANSWER, max(1, int(limit * MIN_ANSWER_FRACTION)))


def _message_tokens(message):
    return estimate_tokens(message) + ITEM_OVERHEAD if message else 0


def budget(context_length, history_items, instructions, message, max_output_tokens,
           reserve=None, min_answer=None):
    """How much of the model's context a request would use, and what output it can still ask for.

        {"used": int, "limit": int|None, "fraction": float|None, "room": int|None,
         "max_output": int|None, "fits": bool, "text": "About 12,000 of 200,000 tokens (6%)"}

    - `used` = estimate_items(history_items) + estimate_tokens(instructions) + the new message
      (`message`: its text, with the per-item overhead); `fraction` = used / limit clamped to 0..1.
    - `room` = limit - used - margin, never below 0; the margin absorbs the estimate's error:
      `reserve` tokens when given, else 10% of `used` + 64.
    - `max_output` = min(max_output_tokens, room): max_output_tokens is a ceiling, not a
      reservation, and many providers reject input + max output above the context. With no
      max_output_tokens (None) it is `room`, so the caller can always send it.
    - `fits`: room >= the smallest useful answer: `min_answer` when given, else
      min(256, 10% of the context) (a 1K-token model needs only ~100 tokens free).
    - Unknown context (`context_length` None, 0 or not a count): limit/fraction/room None,
      fits True, max_output = max_output_tokens unchanged.
    """
    used = estimate_items(history_items) + estimate_tokens(instructions) + _message_tokens(message)
    ceiling = count(max_output_tokens) or None
    limit = _limit(context_length)
    if limit is None:
        return {"used": used, "limit": None, "fraction": None, "room": None,
                "max_output": ceiling, "fits": True, "text": f"About {format_tokens(used)} tokens"}
    room = max(0, limit - used - _margin(used, reserve))
    fits = room >= max(1, _min_answer(limit, min_answer))
    fraction = min(1.0, max(0.0, used / limit))
    percent = round(fraction * 100)
    shown = "<1" if used and percent == 0 else ">99" if percent == 100 and used < limit else str(percent)
    return {"used": used, "limit": limit, "fraction": fraction, "room": room,
            "max_output": room if ceiling is None else min(ceiling, room), "fits": fits,
            "text": f"About {format_tokens(used)} of {format_tokens(limit)} tokens ({shown}%)"}


def oldest_to_drop(items, dropped, context_length, instructions, message, min_answer=None,
                   reserve=None):
    """The smallest `dropped` count (at least the current one, rounded up to whole turns: a
    multiple of 2) such that items[dropped:] + instructions + message `fits` by `budget`'s rule.

    Returns the current count (rounded up to even) when it already fits or the context is
    unknown, and None when even dropping every item leaves no room (the message and the
    instructions alone are too long).
    """
    items = list(items or ())
    start = max(0, count(dropped) or 0)
    start = min(len(items), start + start % 2)
    limit = _limit(context_length)
    if limit is None:
        return start
    fixed = estimate_tokens(instructions) + _message_tokens(message)
    per_item = [item_tokens(item) for item in items]
    need = max(1, _min_answer(limit, min_answer))
    history = sum(per_item[start:])
    dropping = start
    while True:
        used = fixed + history
        if limit - used - _margin(used, reserve) >= need:
            return dropping
        if dropping >= len(items):
            return None
        step = per_item[dropping:dropping + 2]
        history -= sum(step)
        dropping += len(step)


CONTEXT_ERROR_PHRASES = (
    "maximum context length", "context length", "context_length_exceeded", "context window",
    "too many tokens", "prompt is too long", "reduce the length", "input is too long",
    "exceeds the context", "maximum prompt length", "too many input tokens",
)


def is_context_error(error):
    """Whether an upstream error text says the request did not fit the model's context.

    Takes a string, an exception (its text plus its `detail`, as `openrouter.UpstreamError` keeps
    the upstream's words), or an error dict (`{"message"}` or `{"error": {"message"}}`). Matching
    is case-insensitive on CONTEXT_ERROR_PHRASES."""
    if isinstance(error, dict):
        error = error.get("message") or error.get("error") or ""
        if isinstance(error, dict):
            error = error.get("message") or ""
    if error is None:
        return False
    if isinstance(error, str):
        text = error
    else:  # an exception: its message, and the upstream's own words when it keeps them apart
        try:
            text = f"{error} {getattr(error, 'detail', '') or ''}"
        except Exception:
            return False
    text = " ".join(text.lower().replace("-", " ").split()) + " " + text.lower()
    return any(phrase in text for phrase in CONTEXT_ERROR_PHRASES)
