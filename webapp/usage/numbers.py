"""Numbers from untrusted dicts: a usage dict comes from upstream untouched (or from an imported file),
so every reader treats it as untrusted: a missing, null, negative, boolean, NaN, absurdly large or
non-numeric field is "unknown" (None), never an exception."""

import math

# Numbers read from a usage dict (or a price) above these are broken or hostile, not real: they
# are "unknown". Far beyond any real reply, yet small enough that sums over a whole conversation
# stay plain numbers to show.
MAX_TOKENS = 10**12  # a trillion tokens in one reply
MAX_USD = 10**9      # a billion dollars for one reply, or per token

def whole(value):
    """A non-negative int (or integral float) of any size, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    return None


def count(value):
    """A token count: a non-negative int (or integral float) up to MAX_TOKENS, else None."""
    n = whole(value)
    return n if n is not None and n <= MAX_TOKENS else None


def money(value):
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


def usage_dict(usage):
    return usage if isinstance(usage, dict) else {}


def reasoning_tokens(usage):
    details = usage.get("output_tokens_details")
    return count(details.get("reasoning_tokens")) if isinstance(details, dict) else None
