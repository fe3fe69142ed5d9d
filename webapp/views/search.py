"""Search: `GET /search?q=…` lists this browser's conversations holding the words (webapp/search.py)."""

from flask import Blueprint, render_template, request

from .. import search
from . import wiring

bp = Blueprint("search", __name__)


@bp.get("/search")
def results():
    query = request.args.get("q", "")[:200]
    entries = wiring.browser().listed()
    found = search.find(wiring.store(), entries, query)
    return render_template("search.html", query=query, results=found, entries=entries, cid=None,
                           words=search.words_of(query))
