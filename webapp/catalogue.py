"""The model catalogue: OpenRouter's model list, cached, and what a page or a turn needs to know of it.

No HTTP and no Flask here: `Catalogue` is given the function that fetches the list (the app passes
`client.models`, which raises `UpstreamError` on any failure), and the rest are pure functions over
model dicts as `GET /models` returns them (`id`, `name`, `context_length`, `pricing` as decimal strings
in USD per token, `top_provider`, `supported_parameters`).
"""

import logging
import math
import threading
import time

log = logging.getLogger(__name__)

TTL = 300.0  # seconds a fetched list is served before it is fetched again
RETRY_AFTER = 30.0  # seconds a failed fetch is remembered, so a down endpoint is not asked on every page

# A client option -> the `supported_parameters` entry that says the model takes it.
PARAMETERS = {"max_output_tokens": "max_tokens", "reasoning_effort": "reasoning", "web_search": "tools"}
ALWAYS_SUPPORTED = {"model", "instructions"}  # not in supported_parameters: every model takes them


class Catalogue:
    """The model list, fetched at most once per `ttl` seconds, whatever the number of threads asking.

    After a failed fetch it keeps serving the last good list (None when there never was one) and does
    not ask again for `retry_after` seconds. `last_error` is the latest failure (None once a fetch
    succeeds). The list returned is shared: read it, never change it."""

    def __init__(self, fetch, ttl=TTL, clock=time.monotonic, retry_after=RETRY_AFTER):
        self._fetch, self.ttl, self._clock, self.retry_after = fetch, ttl, clock, retry_after
        self._models = None
        self._fetched = None  # clock() of the last good fetch
        self._failed = None  # clock() of the last failed fetch
        self.last_error = None
        self._lock = threading.Lock()  # guards the fields above
        self._fetching = threading.Lock()  # one fetch at a time

    def _fresh(self, now):
        """The list to serve without fetching, as (True, list); (False, None) when a fetch is due."""
        with self._lock:
            if self._models is not None and now - self._fetched < self.ttl:
                return True, self._models
            if self._failed is not None and now - self._failed < self.retry_after:
                return True, self._models
            return False, None

    def get(self):
        """The model list (a list of dicts), or None when it has never been fetched successfully."""
        done, models = self._fresh(self._clock())
        if done:
            return models
        # Someone else is fetching: a stale list is good enough meanwhile; with none, wait for theirs.
        if not self._fetching.acquire(blocking=self._models is None):
            return self._models
        try:
            done, models = self._fresh(self._clock())  # fetched (or failed) while we waited
            if done:
                return models
            try:
                models = self._fetch()
                if not isinstance(models, list):
                    raise TypeError(f"the model list is a {type(models).__name__}, not a list")
            except Exception as exc:
                log.warning("could not fetch the model list: %s", exc)
                with self._lock:
                    self._failed, self.last_error = self._clock(), exc
                    return self._models
            with self._lock:
                self._models, self._fetched, self._failed, self.last_error = models, self._clock(), None, None
                return models
        finally:
            self._fetching.release()


# --- reading one model -------------------------------------------------------------------------------

def find(models, model_id):
    """The model with id `model_id` in `models` (None allowed), or None."""
    for model in models or []:
        if isinstance(model, dict) and model.get("id") == model_id:
            return model
    return None


def supports(model, param):
    """Whether `model` takes `param`: a `supported_parameters` name (`temperature`, `reasoning`,
    `max_tokens`, ...) or a client option name (`max_output_tokens` means `max_tokens`,
    `reasoning_effort` means `reasoning`). `model` and `instructions` always; anything else never
    for a model without a `supported_parameters` list (or no model at all)."""
    if param in ALWAYS_SUPPORTED:
        return True
    params = model.get("supported_parameters") if isinstance(model, dict) else None
    if not isinstance(params, list):
        return False
    return PARAMETERS.get(param, param) in params or param in params


def images(model):
    """Whether `model` (its catalogue dict) takes images, as its `architecture`'s `input_modalities`
    say: True, False, or None when the catalogue does not say."""
    architecture = model.get("architecture") if isinstance(model, dict) else None
    found = architecture.get("input_modalities") if isinstance(architecture, dict) else None
    return "image" in found if isinstance(found, list) else None


def reads_images(model):
    """Whether images may be sent to `model`: a model the catalogue says nothing about is given the
    benefit of the doubt (the upstream refuses what it cannot read)."""
    return images(model) is not False


def display_name(model, model_id):
    name = model.get("name") if isinstance(model, dict) else None
    return name.strip() if isinstance(name, str) and name.strip() else model_id


def supported_options(model, options):
    """`options` (the client's per-turn keywords) without those that are None or that `model` (its
    dict, or None when unknown) does not take, so a turn never sends a parameter the API refuses
    for that model. `max_output_tokens` stays whatever the model says: every request carries a
    limit (the client's default otherwise), so dropping a chosen one would not send less."""
    return {name: value for name, value in options.items()
            if value is not None and (name == "max_output_tokens" or supports(model, name))}


def _price(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None  # "-1" marks a price that depends on the model chosen (openrouter/auto)
    return float(value)


def pricing(model):
    """(prompt, completion) in USD per token, from the model's decimal strings (`"0.0000011"`);
    each None when absent or not a price."""
    prices = model.get("pricing") if isinstance(model, dict) else None
    if not isinstance(prices, dict):
        return None, None
    return _price(prices.get("prompt")), _price(prices.get("completion"))


def _length(value):
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if type(value) is int and value > 0 else None


def context_length(model):
    """The model's context length in tokens (its own, else its top provider's), or None."""
    if not isinstance(model, dict):
        return None
    top = model.get("top_provider")
    return _length(model.get("context_length")) or (_length(top.get("context_length"))
                                                    if isinstance(top, dict) else None)


# --- the model picker ----------------------------------------------------------------------------------

def _tokens(n):
    """200000 -> "200K", 1048576 -> "1.05M", 512 -> "512"."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.3g}M"
    if n >= 1000:
        return f"{round(n / 1000)}K"
    return str(n)


def _per_million(price):
    value = price * 1_000_000
    if value == 0:
        return "$0"
    return f"${value:.2f}" if value >= 0.01 else f"${value:.2g}"


def label(model):
    """A short line for a picker: "o4-mini · 200K context · $1.10/$4.40 per M" (the name without
    its "OpenAI: " provider prefix, which the picker's group already shows; "free" for a free model;
    an unknown context length or price is left out). Short, so a closed picker shows it whole."""
    name = model.get("name") if isinstance(model.get("name"), str) and model["name"].strip() else model["id"]
    _, colon, rest = name.partition(": ")
    parts = [rest.strip() if colon and rest.strip() else name]
    length = context_length(model)
    if length:
        parts.append(f"{_tokens(length)} context")
    prompt, completion = pricing(model)
    if prompt == 0 and completion == 0:
        parts.append("free")
    elif prompt is not None and completion is not None:
        parts.append(f"{_per_million(prompt)}/{_per_million(completion)} per M")
    return " \u00b7 ".join(parts)


# The parameters the page shows a field for (templates/chat.html `data-param`): an option lists only
# these, not the dozen or more a model supports.
PAGE_PARAMS = ("max_tokens", "temperature", "reasoning", "tools")


def _entry(model):
    prompt, completion = pricing(model)
    params = model.get("supported_parameters")
    params = [p for p in params if isinstance(p, str)] if isinstance(params, list) else []
    return {"id": model["id"], "name": model.get("name") if isinstance(model.get("name"), str)
            and model["name"].strip() else model["id"],
            "context_length": context_length(model), "prompt_price": prompt,
            "completion_price": completion, "label": label(model), "params": params,
            "images": images(model),
            "page_params": " ".join(p for p in params if p in PAGE_PARAMS)}


def _bare(model_id):
    return {"id": model_id, "name": model_id, "context_length": None, "prompt_price": None,
            "completion_price": None, "label": model_id, "params": [], "page_params": "", "images": None}


def provider(model_id):
    """The provider part of a model id: "openai" for "openai/o4-mini"."""
    return model_id.split("/", 1)[0] if "/" in model_id else model_id


def options(models, allowed=None, default=None):
    """The models for a picker, grouped by provider: `[{"label": provider id, "title": its name,
    "models": [entry, ...]}]`,
    groups sorted by label and models by name. An entry is `{"id", "name", "context_length",
    "prompt_price", "completion_price" (USD per token, or None), "label", "params"}`.

    `allowed` (ids): only those models (ids not in `models` are left out). `default` is always there,
    as a bare entry (its id as name and label, nothing else known) when `models` lacks it."""
    wanted = None if allowed is None else set(allowed)
    entries, seen = [], set()
    for model in models or []:
        if not isinstance(model, dict) or not isinstance(model.get("id"), str) or not model["id"]:
            continue
        if model["id"] in seen or (wanted is not None and model["id"] not in wanted
                                   and model["id"] != default):
            continue
        seen.add(model["id"])
        entries.append(_entry(model))
    if default and default not in seen:
        entries.append(_bare(default))
    groups = {}
    for entry in entries:
        groups.setdefault(provider(entry["id"]), []).append(entry)
    return [{"label": name, "title": _provider_title(name, group),
             "models": sorted(group, key=lambda e: (e["name"].casefold(), e["id"]))}
            for name, group in sorted(groups.items(), key=lambda kv: (kv[0].casefold(), kv[0]))]


def _provider_title(provider_id, entries):
    """The group's heading in a picker: the provider as its models' names spell it ("OpenAI" from
    "OpenAI: o4-mini"), since their labels leave it out; else its id."""
    for entry in entries:
        prefix, colon, rest = entry["name"].partition(": ")
        if colon and prefix.strip() and rest.strip():
            return prefix.strip()
    return provider_id
