"""Health checks for load balancers and orchestrators: `/healthz` (the process answers) and `/readyz`
(the conversation store answers). Neither ever calls OpenRouter, so a probe costs no credits."""

from flask import Blueprint, current_app

from .store import StoreError

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    try:
        current_app.extensions["chat_store"].ping()
    except StoreError as exc:
        current_app.logger.warning("readyz: the store does not answer: %s", exc)
        return {"status": "unavailable", "reason": "the conversation store does not answer"}, 503
    return {"status": "ok"}
