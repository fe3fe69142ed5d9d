"""Failures from OpenRouter as one `UpstreamError(kind, status, detail, retry_after)` whose message a
user can read, and the scrubbing that keeps every registered API key out of it (and so out of pages,
stored conversations and logs): the upstream's words are scrubbed first, then cut short."""

import math
import re
import threading
import time
from email.utils import parsedate_to_datetime

# What a user is told for each kind of failure. `{detail}` is OpenRouter's own message when it sent one.
MESSAGES = {
    "no_key": "No OpenRouter API key is configured. The operator must set OPENROUTER_API_KEY "
    "(in the environment or a .env file) and restart the app.",
    "bad_request": "OpenRouter rejected the request (400): {detail}",
    "auth": "OpenRouter did not accept the API key (401). The operator must check OPENROUTER_API_KEY.",
    "credits": "The OpenRouter account is out of credits (402). Add credits, then retry.",
    # A person's own key (signed in with OpenRouter): never answered with the operator's instead.
    "own_auth": "OpenRouter did not accept your key (401): it may have been revoked or have expired. "
    "Sign out, then sign in with OpenRouter again.",
    "own_credits": "Your OpenRouter account is out of credit (402). Add credit on OpenRouter, then retry.",
    "signin_refused": "OpenRouter did not accept this sign-in (its code is wrong, already used or "
    "expired), so nothing was stored. Sign in with OpenRouter again.",
    "moderation": "The message was flagged by moderation (403): {detail}",
    "timeout": "The model took too long to answer. Try again.",
    "rate_limited": "OpenRouter is rate limiting requests (429). Try again {when}.",
    "unavailable": "The model provider is unavailable right now ({status}). Try again in a moment.",
    "connection": "Could not reach OpenRouter. Check the network, then try again.",
    "bad_response": "OpenRouter sent a reply the app could not read. Try again.",
    "no_message": "The model finished without an answer. Try again.",
    "failed": "The model stopped with an error: {detail}",
    "upstream": "OpenRouter answered with an error ({status}): {detail}",
    "cut": "The connection to the model was cut before the reply finished. Try again.",
    "stopped": "Stopped before the model answered.",
    # Not OpenRouter's: the turn could not be sent at all (its bytes expired from the store).
    "missing_file": "An attached file ({detail}) is no longer stored, so the message was not sent. "
    "Send it again without that file, or attach it again.",
}


DETAIL_LIMIT = 300  # characters of the upstream's own words a user is shown (and a conversation keeps)
REDACTED = "[redacted]"
MIN_SECRET = 8  # shorter "keys" are no real key, and scrubbing them would garble every message
MAX_RETRY_AFTER = 86400  # seconds; a longer Retry-After is not believed

# Every API key a Client in this process was given. Replaced whole (never changed in place) under
# the lock, so `scrub` reads it without one.
_secrets = frozenset()
_secrets_lock = threading.Lock()


def register_secret(secret):
    """Make `scrub` (so every `UpstreamError`) remove `secret` from the text it passes on."""
    global _secrets
    if isinstance(secret, str) and len(secret) >= MIN_SECRET and secret not in _secrets:
        with _secrets_lock:
            _secrets = _secrets | {secret}


def scrub(text):
    """`text` without any registered secret (longest first, so no part of one is left behind)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def clean_detail(detail):
    """The upstream's words as a user may see them: scrubbed first, then cut to DETAIL_LIMIT
    characters (cutting first could leave half a key that scrubbing no longer recognises)."""
    text = scrub(detail if isinstance(detail, str) else str(detail or ""))
    return text if len(text) <= DETAIL_LIMIT else text[:DETAIL_LIMIT].rstrip() + "\u2026"


def parse_retry_after(value, now=None):
    """Seconds to wait from a `Retry-After` header, or None when it is missing or not believable.

    Only what RFC 9110 allows: ASCII digits (not `str.isdigit`, which takes '²' and other digits
    `int` refuses or misreads), up to a day, or an HTTP-date, as seconds from `now` (0 if past)."""
    if not isinstance(value, str):
        return None
    value = value.strip(" \t")
    if re.fullmatch(r"[0-9]{1,9}", value):
        seconds = int(value)
        return seconds if seconds <= MAX_RETRY_AFTER else None
    if not re.search(r"[A-Za-z]", value) or len(value) > 64:
        return None  # an HTTP-date names its day and month; anything else is not one
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None  # "-0000": no known zone, so no known moment
    seconds = math.ceil(when.timestamp() - (time.time() if now is None else now))
    return max(0, seconds) if seconds <= MAX_RETRY_AFTER else None


class UpstreamError(Exception):
    """A turn could not be completed. `message` is safe to show a user and to store: the upstream's
    words in it (and in `detail`) are scrubbed of every registered key and cut to DETAIL_LIMIT."""

    def __init__(self, kind, status=None, detail="", retry_after=None):
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.detail = clean_detail(detail)  # for the operator's log line; `message` is what users see
        if retry_after:
            when = f"in {retry_after} second{'s' if retry_after != 1 else ''}"
        else:
            when = "shortly"
        self.message = MESSAGES[kind].format(
            detail=self.detail or "no reason given", status=status, when=when
        )
        super().__init__(self.message)


def error_for_status(status, detail="", retry_after=None, own_key=False):
    """Map an HTTP error status from OpenRouter to an `UpstreamError`. `own_key`: the request was
    made with a person's own key (signed in with OpenRouter), so a 401 or 402 is theirs to fix."""
    kinds = {400: "bad_request", 401: "own_auth" if own_key else "auth",
             402: "own_credits" if own_key else "credits", 403: "moderation", 408: "timeout",
             429: "rate_limited"}
    if status in kinds:
        return UpstreamError(kinds[status], status, detail, retry_after)
    if status >= 500:
        return UpstreamError("unavailable", status, detail, retry_after)
    return UpstreamError("upstream", status, detail, retry_after)


def error_detail(body):
    """OpenRouter's error message from `{"error": {"code", "message"}}` or a flat error event."""
    if not isinstance(body, dict):
        return ""
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    message = err.get("message")
    return message if isinstance(message, str) else ""
