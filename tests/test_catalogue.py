"""The model catalogue: the cache in front of GET /models, and the pure functions over model dicts."""

import threading
import time

import pytest

from tests.fake_openrouter import MODELS, TINY_MODEL
from webapp import catalogue
from webapp.catalogue import (Catalogue, context_length, find, label, options, pricing, supported_options,
                              supports)
from webapp.openrouter import UpstreamError

O4, GPT = MODELS["data"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Fetch:
    """A fetch that returns the next result (an exception is raised), counting calls."""

    def __init__(self, *results):
        self.results, self.calls = list(results), 0

    def __call__(self):
        self.calls += 1
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, BaseException):
            raise result
        return result


# --- the cache -------------------------------------------------------------------------------------

def test_the_list_is_fetched_once_per_ttl():
    clock, fetch = Clock(), Fetch([O4], [O4, GPT])
    cat = Catalogue(fetch, ttl=300, clock=clock)
    assert cat.get() == [O4] and cat.get() == [O4] and fetch.calls == 1
    clock.now += 299
    assert cat.get() == [O4] and fetch.calls == 1
    clock.now += 1
    assert cat.get() == [O4, GPT] and fetch.calls == 2


def test_a_failure_keeps_the_last_good_list_and_is_not_retried_at_once():
    clock = Clock()
    fetch = Fetch([O4], UpstreamError("unavailable", 503), UpstreamError("connection"), [GPT])
    cat = Catalogue(fetch, ttl=300, clock=clock, retry_after=30)
    assert cat.get() == [O4]
    clock.now += 300
    assert cat.get() == [O4] and fetch.calls == 2 and cat.last_error.kind == "unavailable"
    clock.now += 29
    assert cat.get() == [O4] and fetch.calls == 2  # the failure is remembered
    clock.now += 1
    assert cat.get() == [O4] and fetch.calls == 3  # asked again, failed again
    clock.now += 30
    assert cat.get() == [GPT] and fetch.calls == 4 and cat.last_error is None
    clock.now += 299
    assert cat.get() == [GPT] and fetch.calls == 4  # a good list lasts the whole ttl again


def test_with_no_list_ever_a_failure_gives_none_and_is_remembered():
    clock, fetch = Clock(), Fetch(UpstreamError("timeout"), [O4])
    cat = Catalogue(fetch, clock=clock, retry_after=30)
    assert cat.get() is None and cat.get() is None and fetch.calls == 1
    clock.now += 30
    assert cat.get() == [O4] and fetch.calls == 2


@pytest.mark.parametrize("bad", [None, {"data": []}, "models", ValueError("boom")])
def test_anything_but_a_list_is_a_failure(bad):
    cat = Catalogue(Fetch(bad), clock=Clock())
    assert cat.get() is None and cat.last_error is not None


def test_threads_asking_together_cause_one_fetch():
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow_fetch():
        calls.append(1)
        started.set()
        release.wait(5)
        return [O4]

    cat = Catalogue(slow_fetch)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cat.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert started.wait(5)
    time.sleep(0.05)
    release.set()
    for thread in threads:
        thread.join(5)
    assert calls == [1] and results == [[O4]] * 8


def test_a_stale_list_is_served_while_another_thread_refreshes_it():
    clock, release, calls = Clock(), threading.Event(), []

    def fetch():
        calls.append(1)
        if len(calls) > 1:
            release.wait(5)
            return [GPT]
        return [O4]

    cat = Catalogue(fetch, ttl=10, clock=clock)
    assert cat.get() == [O4]
    clock.now += 10
    refresher = threading.Thread(target=cat.get)
    refresher.start()
    while len(calls) < 2:
        time.sleep(0.01)
    assert cat.get() == [O4]  # does not wait for the refresh
    release.set()
    refresher.join(5)
    assert cat.get() == [GPT] and len(calls) == 2


def test_the_app_client_is_a_fetch(fake):
    from webapp.openrouter import Client

    cat = Catalogue(Client(fake.api_key, fake.base_url, "openai/o4-mini", 100).models)
    assert [m["id"] for m in cat.get()] == ["openai/o4-mini", "openai/gpt-4o-mini"]
    cat.get()
    assert fake.model_fetches == 1


# --- one model ----------------------------------------------------------------------------------------

def test_find():
    assert find(MODELS["data"], "openai/gpt-4o-mini") is GPT
    assert find(MODELS["data"], "nope/nope") is None and find(None, "openai/o4-mini") is None


@pytest.mark.parametrize("param,expected", [
    ("max_tokens", True), ("max_output_tokens", True), ("reasoning", True), ("reasoning_effort", True),
    ("temperature", False), ("top_p", False), ("instructions", True), ("model", True)])
def test_supports(param, expected):
    assert supports(O4, param) is expected


def test_a_model_without_a_parameter_list_supports_nothing_optional():
    bare = {"id": "x/y"}
    assert not supports(bare, "temperature") and not supports(bare, "max_output_tokens")
    assert not supports(None, "reasoning") and not supports({"supported_parameters": "temperature"}, "temperature")
    assert supports(bare, "instructions")


def test_supported_options_drop_what_the_model_does_not_take():
    chosen = {"model": "openai/o4-mini", "instructions": "be brief", "max_output_tokens": 500,
              "temperature": 0.5, "reasoning_effort": "low"}
    assert supported_options(O4, chosen) == {"model": "openai/o4-mini", "instructions": "be brief",
                                             "max_output_tokens": 500, "reasoning_effort": "low"}
    assert supported_options(GPT, chosen) == {"model": "openai/o4-mini", "instructions": "be brief",
                                              "max_output_tokens": 500, "temperature": 0.5}
    assert supported_options(None, dict(chosen, instructions=None)) == {
        "model": "openai/o4-mini", "max_output_tokens": 500}


@pytest.mark.parametrize("prices,expected", [
    ({"prompt": "0.0000011", "completion": "0.0000044"}, (1.1e-6, 4.4e-6)),
    ({"prompt": "0", "completion": "0"}, (0.0, 0.0)),
    ({"prompt": "abc", "completion": ""}, (None, None)),
    ({"prompt": "-1", "completion": "nan"}, (None, None)),
    ({"prompt": "inf", "completion": None}, (None, None)),
    ({"prompt": 0.000002, "completion": True}, (2e-6, None)),
    ({"completion": " 0.00001 "}, (None, 1e-5)),
    ({}, (None, None)), ("0.1", (None, None)), (None, (None, None)),
])
def test_pricing(prices, expected):
    assert pricing({"id": "x/y", "pricing": prices}) == expected


def test_pricing_of_no_model():
    assert pricing(None) == (None, None) and pricing({"id": "x"}) == (None, None)


@pytest.mark.parametrize("model,expected", [
    ({"context_length": 8192}, 8192),
    ({"context_length": None, "top_provider": {"context_length": 4096}}, 4096),
    ({"top_provider": {"context_length": 32768.0}}, 32768),
    ({"context_length": "8192"}, None), ({"context_length": 0}, None), ({"context_length": True}, None),
    ({"top_provider": None}, None), ({}, None), (None, None),
])
def test_context_length(model, expected):
    assert context_length(model) == expected


# --- the picker -----------------------------------------------------------------------------------------

def many():
    return [O4, GPT, TINY_MODEL,
            {"id": "anthropic/claude-x", "name": "Anthropic: Claude X", "context_length": 1_048_576,
             "pricing": {"prompt": "0.000003", "completion": "0.000015"},
             "supported_parameters": ["max_tokens", "temperature", "reasoning"]},
            {"id": "openai/a-model", "name": "OpenAI: a-model", "context_length": None,
             "pricing": {"prompt": "oops"}},
            {"id": "mistral/cheap", "name": "Mistral: Cheap", "context_length": 32000,
             "pricing": {"prompt": "0.00000000125", "completion": "0"}},
            {"name": "no id"}, "not a model"]


def test_options_group_by_provider_and_sort_by_name():
    groups = options(many())
    assert [g["label"] for g in groups] == ["anthropic", "mistral", "openai", "tiny"]
    assert [m["id"] for m in groups[2]["models"]] == ["openai/a-model", "openai/gpt-4o-mini", "openai/o4-mini"]
    o4 = groups[2]["models"][2]
    assert o4 == {"id": "openai/o4-mini", "name": "OpenAI: o4-mini", "context_length": 200000,
                  "prompt_price": 1.1e-6, "completion_price": 4.4e-6,
                  "label": "o4-mini \u00b7 200K context \u00b7 $1.10/$4.40 per M",
                  "params": ["max_tokens", "reasoning", "tools"], "page_params": "max_tokens reasoning tools",
                  "images": True}  # its architecture lists "image"


def test_labels():
    by_id = {m["id"]: m["label"] for g in options(many()) for m in g["models"]}
    # The provider prefix is left out: the picker's group says it.
    assert by_id["openai/gpt-4o-mini"] == "GPT-4o-mini \u00b7 128K context \u00b7 $0.15/$0.60 per M"
    assert by_id["tiny/4k"] == "4K \u00b7 4K context \u00b7 free"
    assert by_id["anthropic/claude-x"] == "Claude X \u00b7 1.05M context \u00b7 $3.00/$15.00 per M"
    assert by_id["openai/a-model"] == "a-model"  # unknown context and prices left out
    assert by_id["mistral/cheap"] == "Cheap \u00b7 32K context \u00b7 $0.0013/$0 per M"
    assert [g["title"] for g in options(many())] == ["Anthropic", "Mistral", "OpenAI", "Tiny"]
    assert label({"id": "solo/x", "name": "No prefix here"}) == "No prefix here"


def test_options_filtered_to_allowed_ids_keep_the_default():
    groups = options(many(), allowed={"openai/gpt-4o-mini", "tiny/4k", "gone/model"}, default="openai/o4-mini")
    assert [(g["label"], [m["id"] for m in g["models"]]) for g in groups] == [
        ("openai", ["openai/gpt-4o-mini", "openai/o4-mini"]), ("tiny", ["tiny/4k"])]
    assert options(many(), allowed=[]) == []


def test_a_default_missing_from_the_list_is_a_bare_entry():
    for models in (MODELS["data"], None, []):
        groups = options(models, allowed=["openai/o4-mini"], default="acme/private")
        entries = {m["id"]: m for g in groups for m in g["models"]}
        assert entries["acme/private"] == {"id": "acme/private", "name": "acme/private", "context_length": None,
                                           "prompt_price": None, "completion_price": None,
                                           "label": "acme/private", "params": [], "page_params": "", "images": None}
        assert ("openai/o4-mini" in entries) is bool(models)


def test_duplicate_ids_appear_once():
    groups = options([O4, dict(O4, name="again")])
    assert [m["name"] for g in groups for m in g["models"]] == ["OpenAI: o4-mini"]


def test_a_model_id_without_a_provider_is_its_own_group():
    assert catalogue.provider("solo") == "solo" and options([{"id": "solo"}])[0]["label"] == "solo"
