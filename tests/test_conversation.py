import pytest

from webapp import conversation


def test_user_and_assistant_items_have_the_wire_shape():
    assert conversation.user_item("hi") == {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    assert conversation.assistant_item("msg_1", "completed", "yo") == {
        "type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
        "content": [{"type": "output_text", "text": "yo", "annotations": []}]}


@pytest.mark.parametrize("item_id,status", [(None, "completed"), ("msg_1", None), ("", "completed")])
def test_an_assistant_item_is_never_built_without_id_and_status(item_id, status):
    with pytest.raises(ValueError):
        conversation.assistant_item(item_id, status, "text")


def test_input_is_the_full_history_then_the_new_message():
    conv = conversation.new()
    conversation.add_turn(conv, "one", "msg_a", "completed", "first")
    items = conversation.input_items(conv, "two")
    assert [i["role"] for i in items] == ["user", "assistant", "user"]
    assert items[-1]["content"][0]["text"] == "two"
    assert conv["items"] == items[:2]  # building the input does not store the new message


def test_metadata_stays_beside_the_items_not_inside():
    conv = conversation.new()
    conversation.add_turn(conv, "q", "msg_a", "completed", "a", model="m", usage={"total_tokens": 3})
    assert set(conv["items"][1]) == {"type", "role", "id", "status", "content"}
    assert conv["meta"][1]["model"] == "m" and conv["meta"][1]["usage"] == {"total_tokens": 3}


def test_a_failed_turn_keeps_the_text_and_leaves_history_alone():
    conv = conversation.new()
    conversation.add_turn(conv, "q", "msg_a", "completed", "a")
    before = list(conv["items"])
    conversation.fail_turn(conv, "lost?", "boom")
    assert conv["items"] == before
    assert conv["failed"] == {"text": "lost?", "error": "boom", "replace": False, "stopped": False}
    conversation.add_turn(conv, "lost?", "msg_b", "completed", "b")
    assert conv["failed"] is None


def test_messages_show_role_text_and_why_a_reply_was_cut():
    conv = conversation.new()
    conversation.add_turn(conv, "q", "msg_a", "incomplete", "half", note="max_output_tokens")
    shown = conversation.messages(conv)
    assert [(m["role"], m["text"]) for m in shown] == [("user", "q"), ("assistant", "half")]
    assert "token limit" in shown[1]["note"]


BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_titles_drop_bidirectional_controls():
    assert conversation.short_title("invoice\u202eexe.pdf") == "invoiceexe.pdf"
    assert conversation.short_title(f"a{BIDI}b") == "ab"
    assert conversation.short_title(f"a {BIDI} b") == "a b"
    assert conversation.short_title(BIDI) == ""
    assert conversation.short_title("\u202e" * 100 + "x" * 59) == "x" * 59  # the limit counts what is left
    conv = conversation.new()
    conversation.add_turn(conv, "\u2067hello\u2069 world\u200f", "msg_a", "completed", "hi")
    assert conversation.title(conv) == "hello world"
    assert conversation.clean_title(f" one\u202e \n two{BIDI} ") == "one two"
    assert conversation.clean_title(None) == ""


def test_titles_keep_other_unicode():
    assert conversation.short_title("\U0001f468\u200d\U0001f469 \u05e9\u05dc\u05d5\u05dd caf\u00e9") == \
        "\U0001f468\u200d\U0001f469 \u05e9\u05dc\u05d5\u05dd caf\u00e9"  # ZWJ, Hebrew, accents stay
