"""Usage, cost and the context budget: plain functions, no Flask, no HTTP.

    numbers.py   numbers read from untrusted usage dicts (imports, upstream): bounded, never raising
    estimate.py  token estimates (rough, on the high side: to warn, never to bill)
    cost.py      what a reply and a conversation cost, and formatting money and counts for people
    budget.py    how much of a model's context a request uses, what output it may ask for, how many
                 of the oldest turns to stop sending, and whether an error says it did not fit
"""

from .budget import (CONTEXT_ERROR_PHRASES, MARGIN_FRACTION, MARGIN_TOKENS, MIN_ANSWER, MIN_ANSWER_FRACTION,
                     budget, is_context_error, oldest_to_drop)
from .cost import cost_of, format_tokens, format_usd, totals, turn_usage
from .estimate import (CHARS_PER_TOKEN, ITEM_OVERHEAD, OTHER_CHARS_PER_TOKEN, WIDE_FROM, estimate_items,
                       estimate_tokens, estimate_turn)
from .numbers import MAX_TOKENS, MAX_USD, count, money

__all__ = ["CONTEXT_ERROR_PHRASES", "MARGIN_FRACTION", "MARGIN_TOKENS", "MIN_ANSWER", "MIN_ANSWER_FRACTION",
           "budget", "is_context_error", "oldest_to_drop", "cost_of", "format_tokens", "format_usd",
           "totals", "turn_usage", "CHARS_PER_TOKEN", "ITEM_OVERHEAD", "OTHER_CHARS_PER_TOKEN", "WIDE_FROM",
           "estimate_items", "estimate_tokens", "estimate_turn", "MAX_TOKENS", "MAX_USD", "count", "money"]
