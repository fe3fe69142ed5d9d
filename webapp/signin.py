"""Signing in with OpenRouter (OAuth PKCE), so each person chats on their own account and key.

Plain: no Flask. The routes (views/signin.py) hand it the session mapping, the store's backend,
the OpenRouter client and this browser (`ownership.Browser`).

    url = start(session, auth_url, callback_url)     # a fresh verifier kept in the session
    finish(session, code, client, box, browser)      # NotStarted, or UpstreamError
    box.get(bid) / sign_out(box, browser)

- **The flow:** each sign-in makes a fresh random `code_verifier` (86 characters of the URL-safe
  alphabet), kept in this browser's server-side session for `PENDING_FOR` seconds, and sends the
  browser to `{auth_url}?callback_url=…&code_challenge=<base64url(SHA-256(verifier))>&
  code_challenge_method=S256`. The callback takes the verifier out of the session (so a code is
  tried once per sign-in: a replayed callback finds none) and trades it with the code for the key.
  A browser that never started a sign-in has no verifier: it is refused before anything is sent.
- **Keys stay on the server:** a person's key is kept in the store under their browser's id
  (`signin:<browser id>`; emptying the store signs everyone out), encrypted with Fernet
  (AES-128-CBC and HMAC-SHA256, from the `cryptography` package) under a key derived from
  SECRET_KEY with HKDF-SHA256. The plaintext names the browser, so a record copied under another
  browser's id does not open. Another SECRET_KEY cannot read it: that person is signed out.
- A turn is given its browser's key with its request (`api_key`), never reads it from a session.
"""

import base64
import hashlib
import json
import secrets
import threading
import time
from urllib.parse import urlencode

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .openrouter import UpstreamError, register_secret
from .usage import format_usd, money

PENDING_FOR = 600  # seconds a started sign-in waits for its callback (OpenRouter's codes last 10 min)
SESSION_FIELD = "openrouter_signin"  # the session's pending sign-in: {"verifier", "at"}
KEY_PREFIX = "signin:"  # a browser's encrypted key in the store: signin:<browser id>
CODE_LIMIT = 2048  # characters: a longer `code` is no code OpenRouter gave
CREDITS_FOR = 60.0  # seconds a key's remaining credit is kept per process before asking again
HKDF_INFO = b"chat: people's own OpenRouter keys, at rest"


class NotStarted(Exception):
    """A callback in a browser with no sign-in under way (never started, already used, too old)."""


def new_verifier():
    """A fresh PKCE code_verifier: 64 random bytes as 86 URL-safe characters (RFC 7636: 43-128)."""
    return secrets.token_urlsafe(64)


def challenge(verifier):
    """The S256 code_challenge of `verifier`: base64url(SHA-256(verifier)), without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def start(session, auth_url, callback_url, now=None):
    """Begin a sign-in for this browser: keep a fresh verifier in its `session` (replacing any sign-in
    it had under way) and return the URL to send the browser to."""
    verifier = new_verifier()
    session[SESSION_FIELD] = {"verifier": verifier, "at": time.time() if now is None else now}
    query = urlencode({"callback_url": callback_url, "code_challenge": challenge(verifier),
                       "code_challenge_method": "S256"})
    return f"{auth_url}?{query}"


def take_pending(session, now=None):
    """The verifier of the sign-in under way in this browser, taken out of its session (so a callback
    is tried once), or None: none was started, or it is older than PENDING_FOR."""
    pending = session.pop(SESSION_FIELD, None)
    if not isinstance(pending, dict) or not isinstance(pending.get("verifier"), str):
        return None
    at = pending.get("at")
    now = time.time() if now is None else now
    if not isinstance(at, (int, float)) or not 0 <= now - at <= PENDING_FOR:
        return None
    return pending["verifier"]


def finish(session, code, client, box, browser):
    """The callback: trade `code` and this browser's verifier for its own key, and keep the key
    (encrypted) under this browser's id. Raises NotStarted (nothing sent, nothing stored) or the
    client's UpstreamError (`signin_refused` for a code OpenRouter refuses; nothing stored). The
    session gets a new id: a sign-in is a login."""
    verifier = take_pending(session)
    if verifier is None:
        raise NotStarted()
    if not isinstance(code, str) or not code or len(code) > CODE_LIMIT:
        raise UpstreamError("signin_refused")
    key = client.exchange_code(code, verifier)
    had_id = browser.id()
    bid = browser.claim()  # a new browser record gets a new session id at once
    box.put(bid, key)
    if had_id:
        browser.rotate()
    return bid


def sign_out(box, browser):
    """Forget this browser's key: its next send is on the operator's key, or refused without one."""
    bid = browser.id()
    if bid:
        box.delete(bid)


def header(config, logged_in, own_key, credits):
    """What the page header offers while sign-in is on: None (nothing: sign-in is off, or the access
    password comes first), else `{"signed_in", "needed", "credits"}`: `needed` when there is no
    operator key to chat on, `credits` the key's remaining credit as text (or None). `logged_in()`
    and `own_key()` are asked only when needed; `credits` is a `Credits`."""
    if not config["SIGN_IN_WITH_OPENROUTER"] or (config["ACCESS_PASSWORD"] and not logged_in()):
        return None
    key = own_key()
    return {"signed_in": key is not None, "needed": not config["OPENROUTER_API_KEY"],
            "credits": credits.text(key) if key else None}


def derive_key(secret):
    """The Fernet key for people's keys at rest: HKDF-SHA256 of SECRET_KEY (never SECRET_KEY itself,
    which also signs CSRF tokens)."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(secret.encode())
    return base64.urlsafe_b64encode(raw)


class KeyBox:
    """Each browser's own OpenRouter key in the store (a `store.Store`'s backend), encrypted.

    A record lives `ttl` seconds (the store's lifetime) and is written again, under its lock, once it
    is past half of it while in use, so an active person is never signed out by expiry."""

    def __init__(self, backend, secret, ttl, lock_timeout=10.0):
        self.backend, self.ttl, self.lock_timeout = backend, ttl, lock_timeout
        self.fernet = Fernet(derive_key(secret))

    def _seal(self, bid, key):
        return self.fernet.encrypt(json.dumps({"browser": bid, "key": key}).encode())

    def _open(self, bid, token):
        """The key in `token` (bytes) if it is this browser's, else None."""
        try:
            plain = json.loads(self.fernet.decrypt(token))
        except (InvalidToken, ValueError, TypeError):
            return None
        if not isinstance(plain, dict) or plain.get("browser") != bid or not isinstance(plain.get("key"), str):
            return None
        return plain["key"]

    def put(self, bid, key):
        register_secret(key)
        with self.backend.lock(KEY_PREFIX + bid, self.lock_timeout):
            self.backend.set_blob(KEY_PREFIX + bid, self._seal(bid, key), self.ttl)

    def get(self, bid, now=None):
        """Browser `bid`'s key, or None (not signed in, signed out, expired, unreadable)."""
        token = self.backend.get_blob(KEY_PREFIX + bid)
        if not isinstance(token, (bytes, str)):
            return None
        token = token.encode() if isinstance(token, str) else token
        key = self._open(bid, token)
        if key is None:
            return None
        register_secret(key)  # scrubbed from every error in this process too
        now = time.time() if now is None else now
        try:
            sealed_at = self.fernet.extract_timestamp(token)
        except InvalidToken:
            sealed_at = 0
        if now - sealed_at > self.ttl / 2:
            self._renew(bid, token)
        return key

    def _renew(self, bid, token):
        # Under the lock, and only if it is still the same record: a sign-out meanwhile stays one.
        with self.backend.lock(KEY_PREFIX + bid, self.lock_timeout):
            if self.backend.get_blob(KEY_PREFIX + bid) == token:
                key = self._open(bid, token)
                if key is not None:
                    self.backend.set_blob(KEY_PREFIX + bid, self._seal(bid, key), self.ttl)

    def has(self, bid):
        return self.get(bid) is not None

    def delete(self, bid):
        with self.backend.lock(KEY_PREFIX + bid, self.lock_timeout):
            self.backend.delete(KEY_PREFIX + bid)


class Credits:
    """A key's remaining credit as a short text for the page, from `key_info(key)` (the client's
    `GET /key`), kept CREDITS_FOR seconds per key in this process (failures too: a page never waits
    on a slow OpenRouter twice a minute). Keys are held only as their SHA-256."""

    def __init__(self, key_info, keep_for=CREDITS_FOR, clock=time.monotonic):
        self.key_info, self.keep_for, self.clock = key_info, keep_for, clock
        self.known = {}  # sha256(key) -> (until, text or None)
        self.lock = threading.Lock()

    def text(self, key):
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = self.clock()
        with self.lock:
            found = self.known.get(digest)
        if found and found[0] > now:
            return found[1]
        try:
            shown = credit_text(self.key_info(key))
        except UpstreamError:
            shown = None
        with self.lock:
            if len(self.known) > 10_000:
                self.known = {d: v for d, v in self.known.items() if v[0] > now}
            self.known[digest] = (now + self.keep_for, shown)
        return shown

    def forget(self, key):
        with self.lock:
            self.known.pop(hashlib.sha256(key.encode()).hexdigest(), None)


def credit_text(data):
    """What the page says of a key's credit, from GET /key's `data`: what is left within the key's
    limit, or what it used when it has none; None when OpenRouter's numbers cannot be read."""
    left, used = data.get("limit_remaining"), money(data.get("usage"))
    if isinstance(left, (int, float)) and not isinstance(left, bool) and -1e9 < left < 0:
        left = 0  # spent past its limit: nothing left
    left = money(left)
    if data.get("limit") is not None and left is not None:
        return f"{format_usd(left)} left"
    if used is not None:
        return f"{format_usd(used)} used"
    return None
