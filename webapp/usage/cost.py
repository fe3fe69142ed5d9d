"""What replies cost and how to show it: OpenRouter's `usage.cost` when it gave one, else priced from
the model's per-token prices and marked as an estimate; dollar amounts and token counts formatted for
people, never raising whatever they are given."""

import math
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from functools import lru_cache

from .kept import ByIdentity
from .numbers import count, money, reasoning_tokens, usage_dict, whole

# Enough digits to show any float to the cent (the largest has 309 before the point); a bigger
# int or Decimal cannot be shown and formats as "".
USD_CONTEXT = Context(prec=400, rounding=ROUND_HALF_UP)


def cost_of(usage, prices=None):
    """What a reply cost, as `(usd, estimated)`.

    - `usage["cost"]` when the API returned one: `(cost, False)`;
    - else, with `prices = (prompt_per_token, completion_per_token)` (floats or the decimal strings
      of /models; `catalogue.pricing(model)` fits as is, Nones included) and at least one known
      token count: `(input * prompt + output * completion, True)`;
    - else `(None, False)`. A missing or null `usage` is simply unknown.
    """
    usage = usage_dict(usage)
    cost = money(usage.get("cost"))
    if cost is not None:
        return cost, False
    if not prices or not isinstance(prices, (tuple, list)) or len(prices) != 2:
        return None, False
    prompt, completion = money(prices[0]), money(prices[1])
    tokens_in, tokens_out = count(usage.get("input_tokens")), count(usage.get("output_tokens"))
    if prompt is None or completion is None or (tokens_in is None and tokens_out is None):
        return None, False
    return (tokens_in or 0) * prompt + (tokens_out or 0) * completion, True


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
    n = whole(n)
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
    usage = usage_dict(meta_entry.get("usage") if isinstance(meta_entry, dict) else None)
    tokens_in, tokens_out = count(usage.get("input_tokens")), count(usage.get("output_tokens"))
    reasoning = reasoning_tokens(usage)
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


def _reply_numbers(meta, prices):
    """(input tokens, output tokens, cost, estimated) of one reply's meta entry."""
    usage = usage_dict(meta.get("usage"))
    return (count(usage.get("input_tokens")) or 0, count(usage.get("output_tokens")) or 0,
            *cost_of(usage, prices))


def _meta_chars(meta, numbers):
    """About how many characters a reply's meta entry holds (its rendered HTML, its reasoning)."""
    return 64 + sum(len(text) for text in (meta.get("html"), meta.get("reasoning")) if isinstance(text, str))


# Each reply's numbers, worked out once while its meta entry lives; the entries held alive for it come
# to about 4 million characters at most.
_REPLIES = ByIdentity(keep=4 << 20, weight=_meta_chars)


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
        model = meta.get("model")
        prices = prices_by_model.get(model) if isinstance(model, str) else None
        tokens_in, tokens_out, cost, guess = _REPLIES.value(meta, _reply_numbers, prices)
        total_in += tokens_in
        total_out += tokens_out
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
