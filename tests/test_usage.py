import math
from decimal import Decimal

import pytest

from webapp import conversation, usage


def user(text):
    return conversation.user_item(text)


def reply(text, item_id="msg_1"):
    return conversation.assistant_item(item_id, "completed", text)


# ---------------------------------------------------------------- estimates

@pytest.mark.parametrize("text,tokens", [
    ("", 0), (None, 0), (42, 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 4000, 1000),
    ("x" * 4001, 1001),
])
def test_ascii_is_about_four_characters_per_token_rounded_up(text, tokens):
    assert usage.estimate_tokens(text) == tokens


def test_other_scripts_count_more_per_character():
    assert usage.estimate_tokens("\u00e9" * 4) == 2          # accented Latin: 2 characters a token
    assert usage.estimate_tokens("\u043f\u0440\u0438\u0432") == 2  # Cyrillic
    assert usage.estimate_tokens("\u4f60\u597d\u4e16\u754c") == 4  # CJK: a token each
    assert usage.estimate_tokens("\U0001f600") == 1
    assert usage.estimate_tokens("ab\u00e9") == 1            # 2 quarters + 2 quarters


def test_items_add_a_per_message_overhead():
    items = [user("abcd"), reply("abcdefgh")]
    assert usage.estimate_items(items) == (1 + usage.ITEM_OVERHEAD) + (2 + usage.ITEM_OVERHEAD)
    assert usage.estimate_items([]) == 0
    assert usage.estimate_items(None) == 0


def test_items_estimate_survives_odd_shapes():
    odd = [None, "text", {"content": None}, {"content": "abcd"}, {"content": [None, {"text": 5}]}]
    assert usage.estimate_items(odd) == 3 * usage.ITEM_OVERHEAD + 1


# ---------------------------------------------------------------- cost

def test_cost_reported_by_the_api_wins():
    assert usage.cost_of({"cost": 0.0012, "input_tokens": 10}, (1.0, 1.0)) == (0.0012, False)
    assert usage.cost_of({"cost": 0}, None) == (0.0, False)


def test_missing_cost_is_priced_and_marked_as_an_estimate():
    cost, estimated = usage.cost_of({"input_tokens": 1000, "output_tokens": 500, "cost": None},
                                    (0.000001, 0.000004))
    assert estimated is True and cost == pytest.approx(0.003)
    # /models prices are decimal strings
    cost, estimated = usage.cost_of({"input_tokens": 1000}, ("0.000002", "0.00001"))
    assert (cost, estimated) == (pytest.approx(0.002), True)


@pytest.mark.parametrize("found,prices", [
    (None, None), ({}, None), ({"input_tokens": 5}, None), ({}, (1e-6, 1e-6)),
    ("junk", (1e-6, 1e-6)), ({"input_tokens": 5}, ("x", 1e-6)), ({"input_tokens": 5}, (1e-6,)),
    ({"input_tokens": True}, (1e-6, 1e-6)), ({"input_tokens": -3}, (1e-6, 1e-6)),
    ({"cost": "lots"}, None), ({"cost": float("nan")}, None), ({"cost": -1.0}, None),
    ({"input_tokens": 5}, "0.1"), ({"input_tokens": 5}, (None, None)), ({"input_tokens": 5}, (1e-6, None)),
])
def test_unknown_cost_is_none(found, prices):
    assert usage.cost_of(found, prices) == (None, False)


# ---------------------------------------------------------------- formatting

@pytest.mark.parametrize("value,text", [
    (None, ""), ("0.1", ""), (True, ""), (float("nan"), ""), (float("inf"), ""),
    (0, "$0"), (0.0, "$0"),
    (1, "$1.00"), (1.234, "$1.23"), (1.235, "$1.24"), (12.5, "$12.50"), (1234.5, "$1,234.50"),
    (0.999, "$1.00"), (0.995, "$1.00"),
    (0.5, "$0.50"), (0.1, "$0.10"), (0.014, "$0.014"), (0.0149, "$0.015"), (0.01, "$0.01"),
    (0.00042, "$0.00042"), (0.0000012, "$0.0000012"), (0.000004999, "$0.000005"),
    (1e-9, "$0.000000001"), (1.5e-12, "$0.0000000000015"), (-0.5, "-$0.50"),
])
def test_format_usd(value, text):
    assert usage.format_usd(value) == text


@pytest.mark.parametrize("value", [1e-9, 4.999e-6, 1.2e-7, 3e-20, 5e-324, 1e20, 123456789.123])
def test_format_usd_never_uses_scientific_notation_and_never_shows_zero(value):
    text = usage.format_usd(value)
    assert "e" not in text.lower() and text.startswith("$")
    assert any(ch in "123456789" for ch in text)


def test_format_usd_keeps_two_significant_digits_below_a_dollar():
    for value in (0.123456, 0.0123456, 0.000123456):
        digits = usage.format_usd(value).lstrip("$0.")
        assert digits == "12"


@pytest.mark.parametrize("n,text", [(0, "0"), (7, "7"), (1234, "1,234"), (1234567, "1,234,567"),
                                    (None, ""), (-1, ""), (True, ""), ("12", ""), (12.0, "12")])
def test_format_tokens(n, text):
    assert usage.format_tokens(n) == text



def test_format_usd_of_huge_amounts_is_plain_digits():
    assert usage.format_usd(1e26) == "$100,000,000,000,000,000,000,000,000.00"
    text = usage.format_usd(float("1e308"))
    assert text.startswith("$100,000,") and text.endswith(".00") and "e" not in text.lower()
    assert usage.format_usd(-1.7976931348623157e308).startswith("-$179,769,")


@pytest.mark.parametrize("value", [
    1e26, float("1e308"), 1.7976931348623157e308, -1e308, 5e-324, pytest.param(10**400, id="10**400"), pytest.param(-(10**5000), id="-10**5000"),
    Decimal("1e999999"), Decimal("-1e-999999"), Decimal("NaN"), Decimal("sNaN"), Decimal("-Infinity"),
    [1], {"cost": 1}, object(), b"1", 1j,
])
def test_format_usd_never_raises(value):
    assert isinstance(usage.format_usd(value), str)


@pytest.mark.parametrize("n", [10**12, 10**13, 10**400, pytest.param(10**5000, id="10**5000"), 1e308, float("inf"), [1], object()])
def test_format_tokens_never_raises(n):
    assert isinstance(usage.format_tokens(n), str)
    assert "e" not in usage.format_tokens(n).lower()


def test_format_tokens_of_big_sums():
    assert usage.format_tokens(2 * 10**15) == "2,000,000,000,000,000"  # a total of many big replies


@pytest.mark.parametrize("found", [
    {"cost": 1e26}, {"cost": 1e9 + 1}, {"cost": float("1e308")}, {"cost": 10**400}, {"cost": "1e26"},
])
def test_absurd_costs_are_unknown(found):
    assert usage.cost_of(found) == (None, False)


def test_absurd_numbers_are_unknown_and_the_bounds_themselves_are_kept():
    assert usage.cost_of({"cost": 1e9}) == (1e9, False)
    assert usage.cost_of({"input_tokens": 10, "output_tokens": 0}, (1e9 + 1, 1e-6)) == (None, False)
    shown = usage.turn_usage({"usage": {"input_tokens": 10**12, "output_tokens": 10**12 + 1,
                                        "output_tokens_details": {"reasoning_tokens": 1e300},
                                        "cost": 1e26}})
    assert (shown["input"], shown["output"], shown["reasoning"], shown["cost"]) == (10**12, None, None, None)
    assert shown["text"] == "1,000,000,000,000 in"
    assert usage.turn_usage({"usage": {"input_tokens": 1e20, "output_tokens": 10**30}})["text"] == ""


def test_totals_of_the_largest_accepted_numbers_stay_formattable():
    biggest = {"input_tokens": 10**12, "output_tokens": 10**12}
    conv = make_conv(*[dict(biggest, cost=1e9)] * 3, *[biggest] * 3)
    found = usage.totals(conv, {"m/a": (1e9, 1e9)})  # priced: 2e21 per reply
    assert found["input"] == 6 * 10**12 and found["estimated"] is True
    assert found["text"].startswith("6,000,000,000,000 in \u00b7 6,000,000,000,000 out \u00b7 \u2248 $6,000,000,")
    assert "e+" not in found["text"]
    conv = make_conv({"input_tokens": 10**30, "output_tokens": 5, "cost": 1e26}, {"cost": 0.5})
    found = usage.totals(conv)
    assert found["text"] == "0 in \u00b7 5 out \u00b7 $0.50 (1 reply without cost)"


# ---------------------------------------------------------------- one reply, all replies

def test_turn_usage_reported():
    shown = usage.turn_usage({"usage": {"input_tokens": 123, "output_tokens": 456, "cost": 0.00042}})
    assert shown == {"input": 123, "output": 456, "reasoning": None, "cost": 0.00042,
                     "estimated": False, "text": "123 in \u00b7 456 out \u00b7 $0.00042"}


def test_turn_usage_estimated_and_reasoning():
    shown = usage.turn_usage({"usage": {"input_tokens": 1000, "output_tokens": 2000,
                                        "output_tokens_details": {"reasoning_tokens": 1500}}},
                             prices=(1e-7, 1e-7))
    assert shown["estimated"] is True and shown["cost"] == pytest.approx(0.0003)
    assert shown["reasoning"] == 1500
    assert shown["text"] == "1,000 in \u00b7 2,000 out (1,500 reasoning) \u00b7 \u2248 $0.0003 (estimate)"


@pytest.mark.parametrize("entry", [{}, {"at": 1}, {"usage": None}, {"usage": "x"}, None, "junk",
                                   {"usage": {"output_tokens_details": "x"}}])
def test_turn_usage_without_usage_is_empty(entry):
    shown = usage.turn_usage(entry)
    assert shown["text"] == "" and shown["input"] is None and shown["cost"] is None


def test_turn_usage_partial():
    assert usage.turn_usage({"usage": {"output_tokens": 9}})["text"] == "9 out"
    assert usage.turn_usage({"usage": {"cost": 0.02}})["text"] == "$0.02"


def make_conv(*usages, model="m/a"):
    conv = conversation.new()
    for n, found in enumerate(usages):
        conversation.add_turn(conv, f"q{n}", f"msg_{n}", "completed", f"a{n}", model=model, usage=found)
    return conv


def test_totals_sum_every_reply():
    conv = make_conv({"input_tokens": 10, "output_tokens": 20, "cost": 0.001},
                     {"input_tokens": 30, "output_tokens": 40, "cost": 0.002})
    found = usage.totals(conv)
    assert (found["input"], found["output"], found["estimated"]) == (40, 60, False)
    assert found["cost"] == pytest.approx(0.003)
    assert found["text"] == "40 in \u00b7 60 out \u00b7 $0.003"
    assert (found["replies"], found["unpriced"]) == (2, 0)


def test_totals_price_missing_costs_per_model():
    conv = make_conv({"input_tokens": 1000, "output_tokens": 1000, "cost": 0.001},
                     {"input_tokens": 1000, "output_tokens": 1000})
    found = usage.totals(conv, {"m/a": (1e-6, 1e-6)})
    assert found["estimated"] is True and found["cost"] == pytest.approx(0.003)
    assert found["text"].endswith("\u2248 $0.003 (estimate)")


def test_totals_say_when_costs_are_unknown():
    conv = make_conv({"input_tokens": 1, "output_tokens": 2, "cost": 0.5}, {"input_tokens": 3})
    found = usage.totals(conv)
    assert found["unpriced"] == 1 and found["cost"] == 0.5
    assert found["text"] == "4 in \u00b7 2 out \u00b7 $0.50 (1 reply without cost)"
    assert usage.totals(make_conv(None, None))["text"] == "0 in \u00b7 0 out \u00b7 cost unknown"


def test_totals_of_an_empty_or_broken_conversation():
    assert usage.totals(conversation.new())["text"] == "0 in \u00b7 0 out \u00b7 $0"
    assert usage.totals({"items": "x", "meta": [None, 5, {"usage": "x"}]})["input"] == 0
    assert usage.totals(None)["cost"] == 0.0


def test_totals_include_dropped_turns():
    conv = make_conv({"input_tokens": 10, "cost": 0.001}, {"input_tokens": 10, "cost": 0.001})
    conv["dropped"] = 2
    assert usage.totals(conv)["input"] == 20


# ---------------------------------------------------------------- the context budget

def history(turns, chars=4000):
    items = []
    for n in range(turns):
        items += [user("u" * chars), reply("a" * chars, f"msg_{n}")]
    return items


def test_budget_on_a_large_model():
    found = usage.budget(200_000, history(6, chars=4000), "Be brief.", "hello", 4096)
    per_turn = 2 * (1000 + usage.ITEM_OVERHEAD)
    assert found["used"] == 6 * per_turn + 3 + 2 + usage.ITEM_OVERHEAD
    assert found["limit"] == 200_000 and found["fits"] is True
    assert found["max_output"] == 4096
    assert 0 < found["fraction"] < 0.1
    assert found["text"] == f"About {found['used']:,} of 200,000 tokens (6%)"


def test_budget_caps_max_output_to_what_the_context_leaves():
    found = usage.budget(4096, history(1, chars=4000), "", "hi", 4096)
    assert found["used"] == 2 * (1000 + 4) + 1 + 4
    margin = math.ceil(found["used"] * 0.1) + 64
    assert found["room"] == 4096 - found["used"] - margin
    assert found["max_output"] == found["room"] < 4096
    assert found["fits"] is True
    # a ceiling, never raised: a small max_output_tokens stays
    assert usage.budget(4096, history(1, chars=4000), "", "hi", 100)["max_output"] == 100
    # no ceiling given: the room
    assert usage.budget(4096, [], "", "hi", None)["max_output"] == usage.budget(4096, [], "", "hi", None)["room"]


def test_a_4k_model_runs_out_where_a_200k_model_does_not():
    items = history(2, chars=3500)  # ~3,500 tokens
    small = usage.budget(4096, items, "", "and now?", 1000)
    large = usage.budget(200_000, items, "", "and now?", 1000)
    assert small["fits"] is False and small["room"] < 256
    assert large["fits"] is True and large["max_output"] == 1000
    assert small["fraction"] > 0.8


def test_budget_min_answer_rule():
    # min(256, 10% of the context): a 1,000-token model needs 100 free
    found = usage.budget(1000, [], "x" * 3000, "", None)  # 750 used, margin 139: room 111
    assert found["room"] == 111 and found["fits"] is True
    found = usage.budget(1000, [], "x" * 3100, "", None)
    assert found["room"] < 100 and found["fits"] is False
    # explicit min_answer and reserve
    assert usage.budget(10_000, [], "", "", 500, reserve=0, min_answer=10_001)["fits"] is False
    assert usage.budget(10_000, [], "", "", 500, reserve=0)["room"] == 10_000


def test_budget_overflow_is_clamped():
    found = usage.budget(1000, history(2), "", "hi", 500)
    assert found["fraction"] == 1.0 and found["room"] == 0 and found["max_output"] == 0
    assert found["fits"] is False and found["text"].endswith("(100%)")


@pytest.mark.parametrize("context", [None, 0, -5, "128000", True, 1.5])
def test_budget_with_an_unknown_context(context):
    found = usage.budget(context, history(1), "", "hi", 777)
    assert found["fits"] is True and found["max_output"] == 777
    assert found["fraction"] is None and found["limit"] is None
    assert found["text"] == f"About {found['used']:,} tokens"


def test_budget_percent_text():
    assert usage.budget(1_000_000, [], "", "hi", None)["text"].endswith("(<1%)")
    assert usage.budget(100, [], "", "", None)["text"] == "About 0 of 100 tokens (0%)"


def test_oldest_to_drop_drops_whole_turns_only_as_needed():
    items = history(4, chars=4000)  # 4 turns of ~2,008 tokens
    assert usage.oldest_to_drop(items, 0, 200_000, "", "hi") == 0
    count = usage.oldest_to_drop(items, 0, 6000, "", "hi")
    assert count % 2 == 0 and 0 < count < len(items)
    assert usage.budget(6000, items[count:], "", "hi", None)["fits"] is True
    assert usage.budget(6000, items[count - 2:], "", "hi", None)["fits"] is False


def test_oldest_to_drop_keeps_what_is_already_dropped():
    items = history(4, chars=400)
    assert usage.oldest_to_drop(items, 4, 200_000, "", "hi") == 4
    assert usage.oldest_to_drop(items, 3, 200_000, "", "hi") == 4  # whole turns
    assert usage.oldest_to_drop(items, 99, 200_000, "", "hi") == len(items)


def test_oldest_to_drop_everything_or_nothing_possible():
    items = history(2, chars=8000)
    assert usage.oldest_to_drop(items, 0, 3000, "", "short") == len(items)
    assert usage.oldest_to_drop(items, 0, 3000, "", "x" * 12_000) is None
    assert usage.oldest_to_drop(items, 0, 3000, "i" * 12_000, "short") is None
    assert usage.oldest_to_drop([], 0, 3000, "", "x" * 12_000) is None
    assert usage.oldest_to_drop([], 0, 3000, "", "short") == 0


def test_oldest_to_drop_with_unknown_context():
    assert usage.oldest_to_drop(history(2), 0, None, "", "x" * 10**6) == 0


def test_oldest_to_drop_respects_min_answer():
    items = history(3, chars=400)
    loose = usage.oldest_to_drop(items, 0, 1000, "", "hi", min_answer=1)
    strict = usage.oldest_to_drop(items, 0, 1000, "", "hi", min_answer=400)
    assert loose < strict


# ---------------------------------------------------------------- context errors

@pytest.mark.parametrize("text", [
    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
    "Error: context_length_exceeded",
    "prompt is too long: 210000 tokens > 200000 maximum",
    "Too many tokens in request",
    "Please reduce the length of the messages or completion.",
    "Input exceeds the context window of this model",
    "The input is too long for the Context-Length",
    "Bad request (400): This endpoint's maximum context length is 4096 tokens",
    {"message": "context length exceeded"},
    {"error": {"code": 400, "message": "maximum context length is 4096"}},
])
def test_context_errors_are_recognised(text):
    assert usage.is_context_error(text) is True


@pytest.mark.parametrize("text", [
    "", None, "Rate limit exceeded", "Insufficient credits", "The model took too long to answer.",
    "Invalid API key", {"message": None}, {"error": "boom"}, 42,
])
def test_other_errors_are_not_context_errors(text):
    assert usage.is_context_error(text) is False


def test_context_error_from_an_exception_and_its_detail():
    class Upstream(Exception):
        detail = "This model's maximum context length is 4096 tokens"

    assert usage.is_context_error(Upstream("The request was refused.")) is True
    assert usage.is_context_error(ValueError("boom")) is False


def test_values_kept_by_identity_are_worked_out_once_per_object_and_per_dependency():
    from webapp.usage.kept import ByIdentity

    worked = []

    def compute(obj, *also):
        worked.append(obj)
        return (len(obj), also)

    kept = ByIdentity(keep=1000, weight=lambda obj, value: 300)
    a, twin = {"x": 1}, {"x": 1}
    assert kept.value(a, compute) == (1, ()) and kept.value(a, compute) == (1, ())
    assert len(worked) == 1
    assert kept.value(twin, compute) == (1, ()) and len(worked) == 2  # equal, but another object
    assert kept.value(a, compute, (0.1, 0.2)) == (1, ((0.1, 0.2),)) and len(worked) == 3  # new prices
    # Past 1,000 (characters) held, all are let go, then worked out again as they come: what it keeps
    # alive is bounded by size.
    kept.value({}, compute)
    assert kept.value(a, compute, (0.1, 0.2)) == (1, ((0.1, 0.2),)) and len(worked) == 5
    assert kept.value(a, compute, (0.1, 0.2)) and len(worked) == 5


def test_a_long_conversations_estimate_and_total_come_from_its_items_once(monkeypatch):
    """The context budget and the total of a long conversation are worked out from each item once
    while it lives (every page view and turn asked for all of them again). A new item, or a copy
    decoded from the store (new objects), is worked out afresh, and the results stay exact."""
    from webapp.usage import cost, estimate
    from webapp.usage.kept import ByIdentity

    # Memos of their own: what earlier tests left in the module's could fill them mid-test.
    monkeypatch.setattr(estimate, "_ITEMS", ByIdentity(keep=1 << 20, weight=estimate._ITEMS.weight))
    monkeypatch.setattr(cost, "_REPLIES", ByIdentity(keep=1 << 20, weight=cost._meta_chars))
    conv = conversation.new()
    for i in range(50):
        conversation.add_turn(conv, f"message {i}", f"msg_{i}", "completed", "A reply. " * (i + 1),
                              usage={"input_tokens": 10 + i, "output_tokens": 5}, model="m")
    expected_tokens = sum(estimate.item_tokens(item) for item in conv["items"])
    calls = []
    real = estimate.item_tokens
    monkeypatch.setattr(estimate, "item_tokens", lambda item: calls.append(item) or real(item))
    assert usage.estimate_items(conv["items"]) == expected_tokens
    assert len(calls) == 100
    assert usage.estimate_items(conv["items"]) == expected_tokens and len(calls) == 100
    longer = [*conv["items"], conversation.user_item("one more", None)]
    assert usage.estimate_items(longer) == expected_tokens + real(longer[-1]) and len(calls) == 101
    copied = [dict(item) for item in conv["items"]]
    assert usage.estimate_items(copied) == expected_tokens and len(calls) == 201

    before = usage.totals(conv, {})
    assert before["input"] == sum(10 + i for i in range(50)) and before["output"] == 250
    numbers = []
    monkeypatch.setattr(cost, "_reply_numbers",
                        lambda meta, prices: numbers.append(meta) or (1, 1, None, False))
    assert usage.totals(conv, {}) == before and numbers == []  # every reply's numbers were kept
    priced = usage.totals(conv, {"m": (0.5, 0.5)})  # another price: worked out again
    assert len(numbers) == 50 and priced["input"] == 50
