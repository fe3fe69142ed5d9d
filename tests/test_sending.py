"""The send use case without Flask: a form is any mapping; checks, settings and the context plan."""

import pytest
from werkzeug.exceptions import RequestEntityTooLarge

from webapp import conversation, sending
from webapp.catalogue import Catalogue
from webapp.offers import Offers

CONFIG = {"MAX_MESSAGE_CHARS": 50, "OPENROUTER_API_KEY": "sk-or-v1-x", "ALLOWED_MODELS": None,
          "OPENROUTER_MODEL": "a/one", "MAX_OUTPUT_TOKENS": 9000}
MODELS = [{"id": "a/one", "context_length": 1000, "supported_parameters": ["max_tokens"]},
          {"id": "a/two", "context_length": 100000, "supported_parameters": ["max_tokens", "temperature"]}]


def offers(models=MODELS):
    return Offers(Catalogue(lambda: models), CONFIG, lambda groups: "")


def with_a_turn():
    return conversation.add_turn(conversation.new(), "q", "msg_1", "completed", "a")


def test_a_message_is_read_and_checked_from_any_mapping():
    assert sending.read_message({"message": "hi"}, lambda: None, CONFIG) == ("hi", None)
    with pytest.raises(sending.BadInput) as empty:
        sending.read_message({"message": "  "}, lambda: None, CONFIG)
    assert empty.value.status == 400
    with pytest.raises(RequestEntityTooLarge):
        sending.read_message({"message": "x" * 51}, lambda: None, CONFIG)
    with pytest.raises(sending.BadInput) as no_key:
        sending.read_message({"message": "hi"}, lambda: None, {**CONFIG, "OPENROUTER_API_KEY": ""})
    assert no_key.value.status == 503


def test_an_edit_names_the_reply_it_replaces_and_a_stale_one_is_refused():
    conv = with_a_turn()
    assert sending.read_message({"message": "better", "edit": "msg_1"}, lambda: conv, CONFIG) == (
        "better", "msg_1")
    assert sending.read_message({"regenerate": "msg_1"}, lambda: conv, CONFIG) == (None, "msg_1")
    with pytest.raises(sending.BadInput) as stale:
        sending.read_message({"message": "x", "edit": "msg_old"}, lambda: conv, CONFIG)
    assert stale.value.status == 409 and stale.value.message == sending.STALE


def test_settings_keep_what_the_form_sets_and_refuse_a_model_not_offered():
    on_offer = offers()
    form = {"model": "a/two", "temperature": "0.5", "max_output_tokens": "", "effort": ""}
    assert sending.read_settings(form, on_offer, MODELS, CONFIG) == {
        "model": "a/two", "temperature": 0.5, "max_output_tokens": None, "effort": None}
    for bad in ({"model": "evil/model"}, {"temperature": "3"}, {"effort": "extreme"}):
        with pytest.raises(sending.BadInput):
            sending.read_settings(bad, on_offer, MODELS, CONFIG)


def test_the_plan_caps_the_output_to_what_the_context_leaves_and_refuses_what_cannot_fit():
    on_offer = offers()
    plan = sending.planner(on_offer.offer(MODELS), on_offer.model_of, CONFIG["MAX_OUTPUT_TOKENS"])
    item = conversation.user_item
    small = plan(conversation.new(), [], item("a short question"))
    assert small["model"] == "a/one" and small["max_output_tokens"] < 1000
    assert plan(conversation.new(), [], item("word " * 2000)) is None  # 1,000 tokens of context
    # An attachment counts as its estimate (an image: attachments.IMAGE_TOKENS), never its bytes.
    image = {"sha": "0" * 64, "name": "a.png", "mime": "image/png", "kind": "image", "size": 9_000_000,
             "tokens": 1500}
    assert plan(conversation.new(), [], item("hi", [image])) is None
    big = plan({**conversation.new(), "settings": {"model": "a/two", "temperature": 0.2}}, [], item("hi"))
    assert big == {"model": "a/two", "max_output_tokens": 9000, "temperature": 0.2}
