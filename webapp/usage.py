"""Usage, cost and the context budget: plain functions, no Flask, no HTTP.

Token counts here are *estimates* (the real tokenizer is the provider's and differs per model);
they are good enough to warn before a request cannot fit, never to bill. Costs come from the
`usage.cost` the API returned; only when that is missing are they priced from the model's
per-token prices, and then they are marked as estimates.

Usage dicts come from upstream untouched (or from an imported file), so every reader here treats
them as untrusted: a missing, null, negative, boolean, NaN, absurdly large or non-numeric field is
"unknown", never an exception. The formatters never raise either, whatever they are given.
"""

import math
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from functools import lru_cache

# The estimate (see `estimate_tokens`).
CHARS_PER_TOKEN = 4       # ASCII text: about 4 characters per token (English prose, code)
OTHER_CHARS_PER_TOKEN = 2  # other scripts below U+2E80 (accented Latin, Greek, Cyrillic, Arabic...)
WIDE_FROM = "\u2e80"      # CJK, kana, hangul, emoji and above: about one token per character
ITEM_OVERHEAD = 4         # per message: role and framing tokens

# The context budget (see `budget`).
MIN_ANSWER = 256           # room a reply needs at the least...
MIN_ANSWER_FRACTION = 0.10  # ...or 10% of the context for tiny models, whichever is smaller
MARGIN_FRACTION = 0.10     # safety margin: 10% of the estimate (it is rough)...
MARGIN_TOKENS = 64         # ...plus 64 tokens (request framing, instructions wrapper)

# Numbers read from a usage dict (or a price) above these are broken or hostile, not real: they
# are "unknown". Far beyond any real reply, yet small enough that sums over a whole conversation
# stay plain numbers to show.
MAX_TOKENS = 10**12  # a trillion tokens in one reply
MAX_USD = 10**9      # a billion dollars for one reply, or per token

# Enough digits to show any float to the cent (the largest has 309 before the point); a bigger
# int or Decimal cannot be shown and formats as "".
USD_CONTEXT = Context(prec=400, rounding=ROUND_HALF_UP)


# ---------------------------------------------------------------- numbers from untrusted dicts

def _whole(value):
    """A non-negative int (or integral float) of any size, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    return None


def _count(value):
    """A token count: a non-negative int (or integral float) up to MAX_TOKENS, else None."""
    n = _whole(value)
    return n if n is not None and n <= MAX_TOKENS else None


def _money(value):
    """A USD amount or per-token price: a non-negative number or decimal string up to MAX_USD,
    else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if len(value) > 40:
            return None
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        try:
            value = float(value)
        except OverflowError:
            return None
        return value if math.isfinite(value) and 0 <= value <= MAX_USD else None
    return None


def _usage_dict(usage):
    return usage if isinstance(usage, dict) else {}


def _reasoning(usage):
    details = usage.get("output_tokens_details")
    return _count(details.get("reasoning_tokens")) if isinstance(details, dict) else None


# ---------------------------------------------------------------- estimates

def estimate_tokens(text):
    """A cheap estimate of the tokens in `text` (rounded up; 0 for None, "" or a non-string).

    ASCII characters count 1/4 token each (the usual "about 4 characters per token"); other
    characters below U+2E80 (accented Latin, Greek, Cyrillic, Arabic, Hebrew, ...) 1/2 token;
    CJK, kana, hangul, emoji and everything above count a whole token each, since tokenizers
    spend about one token (or more) on each of those. Plain English or code gives exactly
    ceil(len / 4). It overestimates rather than under: the budget errs on the safe side.
    """
    if not isinstance(text, str) or not text:
        return 0
    if text.isascii():
        return -(-len(text) // CHARS_PER_TOKEN)
    ascii_chars = other = wide = 0
    for ch in text:
        if ch < "\x80":
            ascii_chars += 1
        elif ch < WIDE_FROM:
            other += 1
        else:
            wide += 1
    # In quarter tokens, to round up once, exactly.
    quarters = ascii_chars + other * (4 // OTHER_CHARS_PER_TOKEN) + wide * 4
    return -(-quarters // 4)


def _item_tokens(item):
    if not isinstance(item, dict):
        return 0
    total = ITEM_OVERHEAD
    content = item.get("content")
    if isinstance(content, str):
        return total + estimate_tokens(content)
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                total += estimate_tokens(part.get("text"))
    return total


def estimate_items(items):
    """Estimated tokens of a list of Responses API items: each item's texts plus ITEM_OVERHEAD."""
    return sum(_item_tokens(item) for item in items or ())


def estimate_turn(history, message, instructions, reply_text):
    """A usage dict for a reply cut short before the API reported its usage (stopped, failed or
    interrupted mid-stream): OpenRouter still charges for the input and the tokens generated, so
    they are estimated, marked `estimated` (shown with "≈" and priced as an estimate)."""
    sent = estimate_items(history) + ITEM_OVERHEAD + estimate_tokens(message) + estimate_tokens(instructions)
    return {"input_tokens": sent, "output_tokens": estimate_tokens(reply_text), "estimated": True}


# ---------------------------------------------------------------- cost

def cost_of(usage, prices=None):
    """What a reply cost, as `(usd, estimated)`.

    - `usage["cost"]` when the API returned one: `(cost, False)`;
    - else, with `prices = (prompt_per_token, completion_per_token)` (floats or the decimal strings
      of /models; `catalogue.pricing(model)` fits as is, Nones included) and at least one known
      token count: `(input * prompt + output * completion, True)`;
    - else `(None, False)`. A missing or null `usage` is simply unknown.
    """
    usage = _usage_dict(usage)
    cost = _money(usage.get("cost"))
    if cost is not None:
        return cost, False
    if not prices or not isinstance(prices, (tuple, list)) or len(prices) != 2:
        return None, False
    prompt, completion = _money(prices[0]), _money(prices[1])
    tokens_in, tokens_out = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if prompt is None or completion is None or (tokens_in is None and tokens_out is None):
        return None, False
    return (tokens_in or 0) * prompt + (tokens_out or 0) * completion, True


# ---------------------------------------------------------------- formatting

def format_usd(value):
    """A dollar amount that is never shown as zero when it is not: "$0.00042", not "$0.00".

    None (or not a finite number) → ""; 0 → "$0"; from $1: two decimals with thousands separators
    ("$1.23", "$1,234.50"); below $1: two significant digits, at least two decimals, trailing
    zeros beyond the cents dropped ("$0.10", "$0.014", "$0.00042", "$0.0000012", "$0.000000001").
    Never scientific notation. Negative amounts get a leading "-". Never raises: an amount too
    large to write out (beyond any float) is "".
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return ""
    # Checked before the cache: a signalling NaN cannot even be hashed.
    if isinstance(value, float) and not math.isfinite(value) or (
            isinstance(value, Decimal) and not value.is_finite()):
        return ""
    return _format_usd(value)


@lru_cache(maxsize=8192)  # every page shows each reply's cost again: the same few thousand values
def _format_usd(value):
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        with localcontext(USD_CONTEXT):  # the default 28 digits cannot quantize $1e26 to the cent
            return _usd_text(d)
    except (ArithmeticError, ValueError):
        return ""


def _usd_text(d):
    if d == 0:
        return "$0"
    sign, d = ("-" if d < 0 else ""), abs(d)
    if d < 1:
        d = d.quantize(Decimal(1).scaleb(d.adjusted() - 1), rounding=ROUND_HALF_UP)
    if d >= 1:
        return f"{sign}${d.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,.2f}"
    text = format(d, "f")
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{sign}${whole}.{frac}"


def format_tokens(n):
    """A token count with thousands separators: 1234 → "1,234"; None (or not a count) → "".

    Any size (a total adds up many replies' counts); never raises."""
    n = _whole(n)
    if n is None:
        return ""
    try:
        return f"{n:,}"
    except ValueError:  # more digits than Python converts to text
        return ""


def _cost_text(cost, estimated):
    if cost is None:
        return ""
    return f"\u2248 {format_usd(cost)} (estimate)" if estimated else format_usd(cost)


def turn_usage(meta_entry, prices=None):
    """What one reply used, for display:

        {"input": int|None, "output": int|None, "reasoning": int|None,
         "cost": float|None, "estimated": bool, "text": "123 in · 456 out · $0.00042"}

    `prices` (see `cost_of`) prices a reply whose usage has no cost; the text then reads
    "≈ $0.00042 (estimate)". Reasoning tokens (part of the output) are shown when there are any:
    "456 out (300 reasoning)". Unknown parts are left out; no usage at all gives text "".
    """
    usage = _usage_dict(meta_entry.get("usage") if isinstance(meta_entry, dict) else None)
    tokens_in, tokens_out = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    reasoning = _reasoning(usage)
    cost, estimated = cost_of(usage, prices)
    about = "\u2248 " if usage.get("estimated") is True else ""  # counts we estimated (estimate_turn)
    parts = []
    if tokens_in is not None:
        parts.append(f"{about}{format_tokens(tokens_in)} in")
    if tokens_out is not None:
        out = f"{about}{format_tokens(tokens_out)} out"
        if reasoning:
            out += f" ({format_tokens(reasoning)} reasoning)"
        parts.append(out)
    if cost is not None:
        parts.append(_cost_text(cost, estimated))
    return {"input": tokens_in, "output": tokens_out, "reasoning": reasoning, "cost": cost,
            "estimated": estimated, "text": " \u00b7 ".join(parts)}


def totals(conv, prices_by_model=None):
    """The whole conversation's usage, summed over every reply (dropped turns included: they were
    paid for):

        {"input": int, "output": int, "cost": float, "estimated": bool,
         "replies": int, "unpriced": int, "text": "1,234 in · 5,678 out · $0.012"}

    A reply without `usage.cost` is priced from `prices_by_model[meta["model"]]` (a
    `(prompt, completion)` pair) and makes the total an estimate ("≈ $0.012 (estimate)").
    `unpriced` counts replies whose cost could not be known at all; the text says so
    ("$0.012 (2 replies without cost)", or "cost unknown" when none had a cost).
    """
    prices_by_model = prices_by_model if isinstance(prices_by_model, dict) else {}
    total_in = total_out = replies = unpriced = 0
    cost_sum, estimated, priced = 0.0, False, 0
    conv = conv if isinstance(conv, dict) else {}
    items = conv.get("items") if isinstance(conv.get("items"), list) else []
    metas = conv.get("meta") if isinstance(conv.get("meta"), list) else []
    for index, meta in enumerate(metas):
        if not isinstance(meta, dict):
            continue
        item = items[index] if index < len(items) else None
        is_reply = isinstance(item, dict) and item.get("role") == "assistant"
        if not is_reply and not isinstance(meta.get("usage"), dict):
            continue
        replies += 1
        usage = _usage_dict(meta.get("usage"))
        total_in += _count(usage.get("input_tokens")) or 0
        total_out += _count(usage.get("output_tokens")) or 0
        model = meta.get("model")
        prices = prices_by_model.get(model) if isinstance(model, str) else None
        cost, guess = cost_of(usage, prices)
        if cost is None:
            unpriced += 1
            continue
        priced += 1
        cost_sum += cost
        estimated = estimated or guess
    parts = [f"{format_tokens(total_in)} in", f"{format_tokens(total_out)} out"]
    if replies and not priced:
        parts.append("cost unknown")
    else:
        text = _cost_text(cost_sum, estimated)
        if unpriced:
            text += f" ({unpriced} {'reply' if unpriced == 1 else 'replies'} without cost)"
        parts.append(text)
    return {"input": total_in, "output": total_out, "cost": cost_sum, "estimated": estimated,
            "replies": replies, "unpriced": unpriced, "text": " \u00b7 ".join(parts)}


# ---------------------------------------------------------------- the context budget

def _limit(context_length):
    n = _count(context_length)
    return n if n else None


def _margin(used, reserve):
    if reserve is not None:
        return max(0, _count(reserve) or 0)
    return math.ceil(used * MARGIN_FRACTION) + MARGIN_TOKENS


def _min_answer(limit, min_answer):
    if min_answer is not None:
        return _count(min_answer) or 0
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
    ceiling = _count(max_output_tokens) or None
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
    start = max(0, _count(dropped) or 0)
    start = min(len(items), start + start % 2)
    limit = _limit(context_length)
    if limit is None:
        return start
    fixed = estimate_tokens(instructions) + _message_tokens(message)
    per_item = [_item_tokens(item) for item in items]
    need = max(1, _min_answer(limit, min_answer))
    history = sum(per_item[start:])
    count = start
    while True:
        used = fixed + history
        if limit - used - _margin(used, reserve) >= need:
            return count
        if count >= len(items):
            return None
        step = per_item[count:count + 2]
        history -= sum(step)
        count += len(step)


# ---------------------------------------------------------------- context errors

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
