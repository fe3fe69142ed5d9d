"""The models on offer: OpenRouter's catalogue narrowed by ALLOWED_MODELS, the default always in it,
worked out once per fetch of the catalogue (the real one has hundreds of models: per request this was
most of a page's time). Plain: no Flask; the picker's options are rendered by a function it is given."""

from markupsafe import Markup, escape

from . import catalogue
from .conversation import Settings


class Offer:
    """What pages and sends need from one fetch of the catalogue: the picker's groups, the ids on
    offer, prices by model, the models by id, and the picker's rendered options."""

    def __init__(self, models_list, allowed, default, render_options):
        self.source, self.allowed, self.default = models_list, allowed, default
        self.groups = catalogue.options(models_list or [], allowed, default)
        self.ids = frozenset(m["id"] for g in self.groups for m in g["models"])
        self.prices = {m["id"]: catalogue.pricing(m) for m in models_list or []}
        self.by_id = {m["id"]: m for m in models_list or [] if isinstance(m, dict)}
        # For static/app.js (/models.json): each model's context length and the page's options it takes.
        self.page_models = {m["id"]: {"context": m["context_length"], "params": m["page_params"]}
                            for g in self.groups for m in g["models"]}
        self._render, self._html = render_options, None

    def options_html(self, chosen):
        """The picker's <optgroup>s with `chosen` selected (rendered once, then only marked)."""
        if self._html is None:
            self._html = str(self._render(self.groups))
        option = f'<option value="{escape(chosen)}"'
        return Markup(self._html.replace(option, option + " selected", 1))


class Offers:
    """The models on offer now. `models_catalogue.get()` gives the catalogue's list (cached a few
    minutes; None while OpenRouter's /models cannot be reached); `config` holds ALLOWED_MODELS and
    OPENROUTER_MODEL; `render_options(groups)` renders the picker's options."""

    def __init__(self, models_catalogue, config, render_options):
        self.catalogue, self.config, self.render_options = models_catalogue, config, render_options
        self._offer = None

    def models(self):
        return self.catalogue.get()

    def offer(self, models_list):
        """The `Offer` for this catalogue list (the same list object until the next fetch)."""
        allowed, default = self.config["ALLOWED_MODELS"], self.config["OPENROUTER_MODEL"]
        cached = self._offer
        if (cached is None or cached.source is not models_list
                or (cached.allowed, cached.default) != (allowed, default)):
            cached = self._offer = Offer(models_list, allowed, default, self.render_options)
        return cached

    def offered(self, models_list, conv=None):
        """The ids on offer; while the list is unavailable, the conversation's own model too (it was
        offered when chosen)."""
        ids = self.offer(models_list).ids
        return ids | {self.model_of(conv)} if models_list is None else ids

    def model_of(self, conv):
        return Settings.of(conv).model or self.config["OPENROUTER_MODEL"]
