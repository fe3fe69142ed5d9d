import copy
import json
import random
import re

import pytest

from webapp import conversation, transfer
from webapp.transfer import ImportProblem

NOW = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def sample():
    conv = conversation.new()
    conv["settings"] = {"model": "openai/o4-mini", "instructions": "Answer in *French*.",
                        "max_output_tokens": 2000, "temperature": 0.7, "effort": "low"}
    conv["title"] = "Paris <trip>"
    conv["dropped"] = 0
    conversation.add_turn(conv, "What is the capital of France? <script>alert(1)</script>",
                          "msg_a", "completed", "**Paris**.\n\n```py\nprint('hi')\n```",
                          model="openai/o4-mini",
                          usage={"input_tokens": 15, "output_tokens": 85, "total_tokens": 100,
                                 "output_tokens_details": {"reasoning_tokens": 45}, "cost": 0.00012,
                                 "cost_details": {"upstream": 1}, "is_byok": False})
    conversation.add_turn(conv, "And Spain?", "msg_b", "incomplete", "Mad", note="max_output_tokens",
                          model="openai/o4-mini", usage={"input_tokens": 120, "output_tokens": 5})
    for meta in conv["meta"]:
        meta["at"] = NOW
    conv["meta"][1]["internal"] = "not for export"
    return conv


def exported(**changes):
    data = transfer.to_json(sample(), "Paris <trip>", now=NOW)
    data = json.loads(json.dumps(data))
    data.update(changes)
    return data


# ---------------------------------------------------------------- Markdown

def test_markdown_has_title_messages_meta_and_notes():
    text = transfer.to_markdown(sample(), "Paris <trip>", now=NOW)
    assert text.startswith("# Paris \\<trip\\>\n")
    assert "*Exported 2026-09-21 14:13 UTC \u00b7 model openai/o4-mini \u00b7 135 in \u00b7 90 out" in text
    assert "## Instructions\n\nAnswer in *French*.\n" in text
    assert text.count("## You") == 2 and text.count("## Assistant") == 2
    assert "*openai/o4-mini \u00b7 2026-09-21 14:13 UTC*" in text
    assert "What is the capital of France? <script>alert(1)</script>" in text  # as-is
    assert "**Paris**.\n\n```py\nprint('hi')\n```" in text
    assert "*The answer was cut off: it reached the output token limit.*" in text
    assert "*15 in \u00b7 85 out (45 reasoning) \u00b7 $0.00012*" in text
    assert "*120 in \u00b7 5 out*" in text
    assert "not for export" not in text and "no longer sent" not in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_markdown_includes_dropped_turns_and_marks_where_they_end():
    conv = sample()
    conv["dropped"] = 2
    text = transfer.to_markdown(conv, "t", now=NOW)
    assert "What is the capital of France?" in text
    marker = text.index("no longer sent to the model")
    assert text.index("**Paris**") < marker < text.index("And Spain?")


def test_markdown_title_fallbacks_and_minimal_conversation():
    conv = conversation.new()
    conversation.add_turn(conv, "hello\nthere", "msg_1", "completed", "hi")
    conv["meta"] = [{}, {}]
    text = transfer.to_markdown(conv, None, now=NOW)
    assert text.startswith("# hello there\n")
    assert "## Instructions" not in text
    assert "## You\n\nhello\nthere\n\n## Assistant\n\nhi\n" in text
    assert transfer.to_markdown(conversation.new(), None, now=NOW).startswith("# Conversation\n")


def test_markdown_estimates_with_prices():
    text = transfer.to_markdown(sample(), "t", {"openai/o4-mini": (1e-6, 1e-6)}, now=NOW)
    assert "*120 in \u00b7 5 out \u00b7 \u2248 $0.00013 (estimate)*" in text


# ---------------------------------------------------------------- JSON export

def test_json_export_shape():
    conv = sample()
    data = transfer.to_json(conv, "Paris <trip>", now=NOW)
    assert data["format"] == "chat-conversation" and data["version"] == 1
    assert data["title"] == "Paris <trip>"
    assert data["model"] == "openai/o4-mini" and data["instructions"] == "Answer in *French*."
    assert data["settings"] == {"max_output_tokens": 2000, "temperature": 0.7, "effort": "low"}
    assert data["exported_at"] == "2026-09-21T14:13:20Z"
    assert data["items"] == conv["items"] and data["items"] is not conv["items"]
    assert len(data["meta"]) == len(conv["items"])
    assert all(set(meta) == {"at", "model", "usage", "note"} for meta in data["meta"])
    assert data["meta"][1]["usage"] == {"input_tokens": 15, "output_tokens": 85, "total_tokens": 100,
                                        "output_tokens_details": {"reasoning_tokens": 45},
                                        "cost": 0.00012}
    assert data["meta"][3]["note"] == "max_output_tokens"
    assert data["meta"][0] == {"at": NOW, "model": None, "usage": None, "note": None}
    assert data["usage"]["input"] == 135 and data["usage"]["unpriced"] == 1
    assert "not for export" not in json.dumps(data)


def test_json_export_of_a_conversation_without_settings():
    conv = conversation.new()
    conversation.add_turn(conv, "q", "msg_1", "completed", "a")
    data = transfer.to_json(conv, None)
    assert data["title"] is None and data["model"] is None
    assert data["settings"] == {"max_output_tokens": None, "temperature": None, "effort": None}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["exported_at"])


# ---------------------------------------------------------------- round trip

def test_round_trip_gives_back_items_settings_and_title():
    conv = sample()
    back = transfer.from_json(json.loads(json.dumps(transfer.to_json(conv, "Paris <trip>"))))
    assert back["items"] == conv["items"]
    assert back["settings"] == conv["settings"]
    assert back["title"] == "Paris <trip>"
    assert (back["pending"], back["failed"], back["rev"], back["dropped"]) == (None, None, 0, 0)
    assert back["meta"][1] == {"at": NOW, "model": "openai/o4-mini",
                               "usage": {"input_tokens": 15, "output_tokens": 85, "total_tokens": 100,
                                         "output_tokens_details": {"reasoning_tokens": 45},
                                         "cost": 0.00012}}
    assert back["meta"][0] == {"at": NOW}
    assert back["meta"][3]["note"] == "max_output_tokens"
    assert conversation.messages(back)[3]["note"].startswith("The answer was cut off")


def test_round_trip_through_bytes_and_the_conversation_continues():
    raw = json.dumps(transfer.to_json(sample(), "t")).encode()
    back = transfer.from_bytes(raw, max_bytes=len(raw))
    assert conversation.last_reply_id(back) == "msg_b"
    items = conversation.input_items(back, "And Italy?")
    assert [i["role"] for i in items] == ["user", "assistant"] * 2 + ["user"]
    conversation.add_turn(back, "And Italy?", "msg_c", "completed", "Rome")
    assert len(back["items"]) == len(back["meta"]) == 6


def test_import_shares_nothing_with_the_file():
    data = exported()
    back = transfer.from_json(data)
    data["items"][0]["content"][0]["text"] = "changed"
    data["meta"][1]["usage"]["input_tokens"] = 999
    assert back["items"][0]["content"][0]["text"].startswith("What is")
    assert back["meta"][1]["usage"]["input_tokens"] == 15


def test_html_and_script_are_just_text():
    back = transfer.from_json(exported())
    assert "<script>alert(1)</script>" in back["items"][0]["content"][0]["text"]


def test_minimal_hand_written_file():
    back = transfer.from_json({"items": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "message", "role": "assistant", "id": "x", "status": "completed",
         "content": [{"type": "output_text", "text": "", "annotations": []}]}]})
    assert back["title"] is None and back["meta"] == [{}, {}]
    assert back["settings"] == dict.fromkeys(transfer.SETTINGS_KEYS)


def test_top_level_model_and_instructions_win_over_settings():
    back = transfer.from_json(exported(model="a/b", instructions="top",
                                       settings={"model": "c/d", "instructions": "inner",
                                                 "effort": "high"}))
    assert back["settings"]["model"] == "a/b" and back["settings"]["instructions"] == "top"
    assert back["settings"]["effort"] == "high"
    back = transfer.from_json(exported(model=None, instructions=None, settings={"model": "c/d"}))
    assert back["settings"]["model"] == "c/d" and back["settings"]["instructions"] is None


def test_invalid_meta_falls_back_to_defaults():
    for meta in ("junk", None, [1, "x", None], [{"at": "yesterday", "model": "bad model!",
                                                "usage": {"input_tokens": -1, "cost": "free"},
                                                "note": 5}] * 4,
                 [{"at": 1e300, "usage": {"output_tokens_details": {"reasoning_tokens": True}}}] * 4):
        back = transfer.from_json(exported(meta=meta))
        assert back["meta"] == [{}, {}, {}, {}]
    back = transfer.from_json(exported(meta=[{}]))  # shorter than the items
    assert len(back["meta"]) == 4


def test_title_is_trimmed_and_blank_is_none():
    assert transfer.from_json(exported(title="  Trip  "))["title"] == "Trip"
    assert transfer.from_json(exported(title="   "))["title"] is None
    assert transfer.from_json(exported(title="\U0001f468\u200d\U0001f469 family"))["title"]



BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_bidi_controls_are_stripped_from_an_imported_title():
    assert transfer.from_json(exported(title="\u202eabc.exe\u202c \u2066txt\u2069"))["title"] == "abc.exe txt"
    assert transfer.from_json(exported(title=f"a{BIDI}b"))["title"] == "ab"
    assert transfer.from_json(exported(title=BIDI))["title"] is None
    assert transfer.from_json(exported(title=f" {BIDI} "))["title"] is None


def test_absurd_usage_numbers_in_an_import_are_left_out():
    meta = [{}, {"usage": {"input_tokens": 10**20, "output_tokens": 7, "total_tokens": 1e300,
                           "output_tokens_details": {"reasoning_tokens": 10**13}, "cost": 1e26}},
            {}, {"usage": {"input_tokens": 10**12, "cost": 1e9}}]
    back = transfer.from_json(json.loads(json.dumps(exported(meta=meta))))
    assert back["meta"][1]["usage"] == {"output_tokens": 7}
    assert back["meta"][3]["usage"] == {"input_tokens": 10**12, "cost": 1e9}  # the bounds are kept
    back = transfer.from_json(exported(meta=[{}, {"usage": {"cost": 10**400}}]))
    assert "usage" not in back["meta"][1]


def test_export_of_absurd_stored_usage_never_raises():
    conv = sample()
    conv["meta"][1]["usage"] = {"input_tokens": 10**400, "output_tokens": 1e308, "cost": 1e26}
    conv["meta"][3]["usage"] = {"cost": float("1e308")}
    text = transfer.to_markdown(conv, "t", {"openai/o4-mini": (1e300, 1e300)}, now=NOW)
    assert "cost unknown" in text and "e+" not in text
    data = transfer.to_json(conv, "t", now=NOW)
    assert data["meta"][1]["usage"] is None and data["usage"]["text"] == "0 in \u00b7 0 out \u00b7 cost unknown"


# ---------------------------------------------------------------- validation, rule by rule

def item(data, n):
    return data["items"][n]


def edit(fn):
    data = exported()
    fn(data)
    return data


HOSTILE = [
    # the top level
    ("not an object", lambda d: None, [1, 2]),
    ("string", None, "items"),
    ("no items", None, {"title": "x"}),
    ("items not a list", None, {"items": {"0": {}}}),
    ("empty items", None, {"items": []}),
    ("other format", lambda d: d.update(format="something-else"), None),
    ("newer version", lambda d: d.update(version=2), None),
    ("version as text", lambda d: d.update(version="1"), None),
    ("version as bool", lambda d: d.update(version=True), None),
    # items
    ("item not an object", lambda d: d["items"].__setitem__(0, "hi"), None),
    ("item a list", lambda d: d["items"].__setitem__(0, [1]), None),
    ("system role", lambda d: item(d, 0).update(role="system"), None),
    ("developer role", lambda d: item(d, 0).update(role="developer"), None),
    ("role unhashable", lambda d: item(d, 0).update(role=["user"]), None),
    ("role missing", lambda d: item(d, 0).pop("role"), None),
    ("starts with assistant", lambda d: d["items"].reverse(), None),
    ("two users", lambda d: d["items"].__setitem__(1, copy.deepcopy(item(d, 0))), None),
    ("ends with user", lambda d: d["items"].pop(), None),
    ("only a user", lambda d: d.update(items=d["items"][:1]), None),
    ("type missing", lambda d: item(d, 0).pop("type"), None),
    ("type wrong", lambda d: item(d, 0).update(type="function_call"), None),
    ("extra metadata", lambda d: item(d, 1).update(metadata={"x": 1}), None),
    ("user with id", lambda d: item(d, 0).update(id="msg_x"), None),
    ("user with status", lambda d: item(d, 0).update(status="completed"), None),
    ("assistant without id", lambda d: item(d, 1).pop("id"), None),
    ("assistant without status", lambda d: item(d, 1).pop("status"), None),
    ("empty id", lambda d: item(d, 1).update(id=""), None),
    ("id not text", lambda d: item(d, 1).update(id=123), None),
    ("id too long", lambda d: item(d, 1).update(id="m" * 201), None),
    ("id with spaces", lambda d: item(d, 1).update(id="msg a"), None),
    ("id with newline", lambda d: item(d, 1).update(id="msg\n"), None),
    ("id with control", lambda d: item(d, 1).update(id="msg\x00"), None),
    ("id non-ascii", lambda d: item(d, 1).update(id="msg_\u00e9"), None),
    ("status failed", lambda d: item(d, 1).update(status="failed"), None),
    ("status null", lambda d: item(d, 1).update(status=None), None),
    ("status list", lambda d: item(d, 1).update(status=["completed"]), None),
    # content
    ("content text", lambda d: item(d, 0).update(content="hi"), None),
    ("content empty", lambda d: item(d, 0).update(content=[]), None),
    ("content null", lambda d: item(d, 1).update(content=None), None),
    ("too many parts", lambda d: item(d, 0).update(
        content=[{"type": "input_text", "text": "x"}] * 65), None),
    ("part not object", lambda d: item(d, 0).update(content=["hi"]), None),
    ("user output_text", lambda d: item(d, 0).update(
        content=[{"type": "output_text", "text": "x"}]), None),
    ("assistant input_text", lambda d: item(d, 1)["content"][0].update(type="input_text"), None),
    ("image part", lambda d: item(d, 0).update(
        content=[{"type": "input_image", "image_url": "http://x"}]), None),
    ("part extra key", lambda d: item(d, 0)["content"][0].update(cache_control={"type": "x"}), None),
    ("user part annotations", lambda d: item(d, 0)["content"][0].update(annotations=[]), None),
    ("no annotations", lambda d: item(d, 1)["content"][0].pop("annotations"), None),
    ("annotations not list", lambda d: item(d, 1)["content"][0].update(annotations={}), None),
    ("annotations filled", lambda d: item(d, 1)["content"][0].update(
        annotations=[{"type": "url_citation", "url": "javascript:alert(1)"}]), None),
    ("text missing", lambda d: item(d, 0)["content"][0].pop("text"), None),
    ("text number", lambda d: item(d, 0)["content"][0].update(text=5), None),
    ("text null", lambda d: item(d, 1)["content"][0].update(text=None), None),
    ("text object", lambda d: item(d, 1)["content"][0].update(text={"a": [1]}), None),
    ("text too long", lambda d: item(d, 0)["content"][0].update(text="x" * 100_001), None),
    ("message too long", lambda d: item(d, 0).update(
        content=[{"type": "input_text", "text": "x" * 60_000}] * 2), None),
    ("blank user", lambda d: item(d, 0)["content"][0].update(text="  \n "), None),
    ("lone surrogate", lambda d: item(d, 0)["content"][0].update(text="a\ud800b"), None),
    # settings and the rest
    ("settings list", lambda d: d.update(settings=["x"]), None),
    ("settings unknown key", lambda d: d.update(settings={"top_p": 1}), None),
    ("settings tools", lambda d: d.update(settings={"tools": [{"type": "web_search"}]}), None),
    ("temperature high", lambda d: d["settings"].update(temperature=2.5), None),
    ("temperature negative", lambda d: d["settings"].update(temperature=-0.1), None),
    ("temperature text", lambda d: d["settings"].update(temperature="1"), None),
    ("temperature bool", lambda d: d["settings"].update(temperature=True), None),
    ("temperature nan", lambda d: d["settings"].update(temperature=float("nan")), None),
    ("max_output zero", lambda d: d["settings"].update(max_output_tokens=0), None),
    ("max_output float", lambda d: d["settings"].update(max_output_tokens=100.0), None),
    ("max_output huge", lambda d: d["settings"].update(max_output_tokens=10**30), None),
    ("max_output bool", lambda d: d["settings"].update(max_output_tokens=True), None),
    ("effort max", lambda d: d["settings"].update(effort="max"), None),
    ("effort list", lambda d: d["settings"].update(effort=["low"]), None),
    ("model spaces", lambda d: d.update(model="openai/o4 mini"), None),
    ("model html", lambda d: d.update(model="<img src=x onerror=alert(1)>"), None),
    ("model too long", lambda d: d.update(model="a" * 201), None),
    ("model newline", lambda d: d.update(model="a/b\n"), None),
    ("model number", lambda d: d.update(model=5), None),
    ("model empty", lambda d: d.update(model=""), None),
    ("inner model bad", lambda d: d.update(model=None, settings={"model": "bad model"}), None),
    ("instructions number", lambda d: d.update(instructions=1), None),
    ("instructions too long", lambda d: d.update(instructions="x" * 100_001), None),
    ("title too long", lambda d: d.update(title="t" * 201), None),
    ("title newline", lambda d: d.update(title="a\nb"), None),
    ("title control", lambda d: d.update(title="a\x1bb"), None),
    ("title line separator", lambda d: d.update(title="a\u2028b"), None),
    ("title object", lambda d: d.update(title={"t": 1}), None),
    ("title surrogate", lambda d: d.update(title="\udfff"), None),
]


@pytest.mark.parametrize("name,change,data", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_refused_with_a_reason(name, change, data):
    if data is None:
        data = edit(change)
    with pytest.raises(ImportProblem) as problem:
        transfer.from_json(data)
    message = str(problem.value)
    assert message and message[0].isupper() and message.endswith(".")
    assert len(message) < 300


def test_problem_names_the_message():
    with pytest.raises(ImportProblem, match="Message 2 .*field.*'metadata'"):
        transfer.from_json(edit(lambda d: item(d, 1).update(metadata={})))
    with pytest.raises(ImportProblem, match="Message 1, part 1 is too long"):
        transfer.from_json(edit(lambda d: item(d, 0)["content"][0].update(text="x" * 200_000)))


def test_limits_are_parameters():
    data = exported()
    with pytest.raises(ImportProblem, match="too many messages"):
        transfer.from_json(data, max_items=2)
    with pytest.raises(ImportProblem, match="too long"):
        transfer.from_json(data, max_chars=10)
    with pytest.raises(ImportProblem, match="conversation is too long"):
        transfer.from_json(data, max_total_chars=60)
    assert transfer.from_json(data, max_items=4)["items"] == data["items"]


def test_total_size_limit():
    data = edit(lambda d: d.update(items=d["items"] * 30))
    assert len(transfer.from_json(data)["items"]) == 120
    with pytest.raises(ImportProblem, match="conversation is too long"):
        transfer.from_json(data, max_total_chars=1000)


def test_unknown_top_level_fields_are_ignored_and_nulls_are_defaults():
    back = transfer.from_json(exported(extra={"deep": [[[]]]}, settings=None, title=None,
                                       exported_at=5, usage="junk"))
    assert back["settings"]["model"] == "openai/o4-mini"
    assert back["settings"]["effort"] is None and back["title"] is None


def test_settings_accept_nulls_and_boundaries():
    back = transfer.from_json(exported(settings={"temperature": 0, "max_output_tokens": 1,
                                                 "effort": None}))
    assert back["settings"]["temperature"] == 0 and back["settings"]["max_output_tokens"] == 1
    back = transfer.from_json(exported(settings={"temperature": 2}))
    assert back["settings"]["temperature"] == 2
    for effort in transfer.EFFORTS:
        assert transfer.from_json(exported(settings={"effort": effort}))["settings"]["effort"] == effort


# ---------------------------------------------------------------- bytes

@pytest.mark.parametrize("raw,reason", [
    (b"", "empty"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{\"items\": [", "not valid JSON"),
    (b"<html></html>", "not valid JSON"),
    (b"{\"items\": NaN}", "NaN"),
    (b"{\"items\": [Infinity]}", "Infinity"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"{\"items\": [" + b"9" * 5000 + b"]}", "not valid JSON"),
    (b"null", "expected a JSON object"),
    (b"\"text\"", "expected a JSON object"),
])
def test_bad_bytes_are_refused(raw, reason):
    with pytest.raises(ImportProblem, match=reason):
        transfer.from_bytes(raw, max_bytes=10**6)


def test_too_large_is_refused_before_parsing():
    with pytest.raises(ImportProblem, match="too large"):
        transfer.from_bytes(b"{" * 2000, max_bytes=1000)


def test_not_bytes_is_refused():
    with pytest.raises(ImportProblem):
        transfer.parse_bytes("{}", 100)


def test_bom_and_bytearray_are_fine():
    raw = json.dumps(exported()).encode()
    assert transfer.from_bytes(b"\xef\xbb\xbf" + raw, 10**6)["title"] == "Paris <trip>"
    assert transfer.from_bytes(bytearray(raw), 10**6)["items"] == exported()["items"]


def test_from_bytes_passes_limits():
    raw = json.dumps(exported()).encode()
    with pytest.raises(ImportProblem, match="too many messages"):
        transfer.from_bytes(raw, 10**6, max_items=2)


# ---------------------------------------------------------------- fuzzing (seeded, no extra dependency)

def random_json(rng, depth=0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 2, 3, 10**20, 0.5, -2.5, 1e308, 2.0000001])
    if kind in (3, 4, 5):
        return rng.choice(["", "user", "assistant", "message", "input_text", "output_text",
                           "completed", "msg_1", "a\ud800", "\x00", "x" * rng.randrange(300),
                           "<script>", "low", "openai/o4-mini", "\u202e", "\U0001f600"])
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["type", "role", "content", "id", "status", "text", "annotations", "items", "meta",
            "settings", "title", "model", "instructions", "temperature", "effort",
            "max_output_tokens", "version", "format", "metadata", "usage", "at", "note"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def mutate(rng, node, depth=0):
    """Change one random spot of a valid export: replace, delete or add something."""
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        roll = rng.random()
        if roll < 0.25:
            del node[key]
        elif roll < 0.5:
            node[key] = random_json(rng)
        elif roll < 0.6:
            node[rng.choice(["metadata", "extra", key + "_"])] = random_json(rng)
        else:
            node[key] = mutate(rng, node[key], depth + 1)
        return node
    if isinstance(node, list) and node:
        index = rng.randrange(len(node))
        roll = rng.random()
        if roll < 0.2:
            del node[index]
        elif roll < 0.35:
            node.insert(index, random_json(rng))
        elif roll < 0.45:
            node[index], node[-1] = node[-1], node[index]
        else:
            node[index] = mutate(rng, node[index], depth + 1)
        return node
    return random_json(rng)


def check_imported(conv):
    """What every accepted import must be: wire-shaped, alternating, storable."""
    json.dumps(conv, ensure_ascii=False, allow_nan=False).encode("utf-8")
    items = conv["items"]
    assert items and len(items) == len(conv["meta"]) and len(items) % 2 == 0
    for n, found in enumerate(items):
        role = "user" if n % 2 == 0 else "assistant"
        assert found["role"] == role and found["type"] == "message"
        assert set(found) == transfer.ITEM_KEYS[role]
    assert set(conv["settings"]) == set(transfer.SETTINGS_KEYS)


def test_fuzz_random_json_never_raises_anything_but_import_problem():
    rng = random.Random(20261102)
    for _ in range(3000):
        data = random_json(rng)
        if rng.random() < 0.5:
            data = {"items": data} if rng.random() < 0.5 else {"items": [data, data]}
        try:
            check_imported(transfer.from_json(data))
        except ImportProblem:
            pass


def test_fuzz_mutated_exports_never_raise_anything_but_import_problem():
    rng = random.Random(7)
    base = exported()
    accepted = 0
    for _ in range(3000):
        data = copy.deepcopy(base)
        for _ in range(rng.randrange(1, 4)):
            data = mutate(rng, data)
        try:
            check_imported(transfer.from_json(data))
            accepted += 1
        except ImportProblem:
            pass
    assert accepted  # some mutations (of meta, usage, unknown fields) are harmless


def test_fuzz_random_bytes_never_raise_anything_but_import_problem():
    rng = random.Random(3)
    base = json.dumps(exported()).encode()
    for _ in range(1000):
        raw = bytearray(base)
        for _ in range(rng.randrange(1, 6)):
            spot = rng.randrange(len(raw))
            raw[spot] = rng.randrange(256)
        try:
            check_imported(transfer.from_bytes(bytes(raw), 10**6))
        except ImportProblem:
            pass
