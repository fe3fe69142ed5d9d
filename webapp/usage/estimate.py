"""Token estimates: cheap and rough (the real tokenizer is the provider's and differs per model), good
enough to warn before a request cannot fit, never to bill; they err on the high side."""

from .kept import ByIdentity
from .numbers import count

# The estimate (see `estimate_tokens`).
CHARS_PER_TOKEN = 4       # ASCII text: about 4 characters per token (English prose, code)
OTHER_CHARS_PER_TOKEN = 2  # other scripts below U+2E80 (accented Latin, Greek, Cyrillic, Arabic...)
WIDE_FROM = "\u2e80"      # CJK, kana, hangul, emoji and above: about one token per character
ITEM_OVERHEAD = 4         # per message: role and framing tokens

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


def item_tokens(item):
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
                # An attachment counts as providers count it, estimated when it was attached.
                total += count((part.get("attachment") or {}).get("tokens")) or 0
    return total


# Each history item's estimate, worked out once while it lives; the items held alive for it come to
# about 4 million characters at most (an item's are about CHARS_PER_TOKEN per estimated token).
_ITEMS = ByIdentity(keep=4 << 20, weight=lambda item, tokens: 64 + CHARS_PER_TOKEN * tokens)


def estimate_items(items):
    """Estimated tokens of a list of Responses API items: each item's texts plus ITEM_OVERHEAD."""
    value = _ITEMS.value
    return sum(value(item, item_tokens) for item in items or ())


def estimate_turn(history, message, instructions, reply_text):
    """A usage dict for a reply cut short before the API reported its usage (stopped, failed or
    interrupted mid-stream): OpenRouter still charges for the input and the tokens generated, so
    they are estimated, marked `estimated` (shown with "≈" and priced as an estimate)."""
    sent = estimate_items(history) + ITEM_OVERHEAD + estimate_tokens(message) + estimate_tokens(instructions)
    return {"input_tokens": sent, "output_tokens": estimate_tokens(reply_text), "estimated": True}
