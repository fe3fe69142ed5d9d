"""The app's signing key (Flask's `SECRET_KEY`: CSRF tokens, the session fingerprint, the access gate).

Set in the environment, it is used as given. Unset, one key is made once and kept in a file beside the
store (`instance/secret_key`, or `SECRET_KEY_FILE`), so every worker, and the app after a restart, signs
with the same key: a key drawn per process made a form drawn by one worker fail on the other.

The file is created atomically (written whole under a temporary name, then hard-linked to its name,
which fails if another worker got there first; that worker's key is then read), so workers starting
together agree, and it is readable by the app's user only (0600). Never log the key itself.
"""

import os
import secrets
import tempfile

from .settings import SettingsError


def load_or_create(path):
    """The key kept in `path`, made there first if there is none. Returns (key, created)."""
    key = _read(path)
    if key is not None:
        return key, False
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, draft = tempfile.mkstemp(dir=folder, prefix=".secret_key-")  # mkstemp makes it 0600
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(draft, path)  # atomic: only one of several workers starting together wins
            created = True
        except FileExistsError:
            created = False  # another worker made it first: use theirs
        finally:
            os.unlink(draft)
    except OSError as exc:
        raise SettingsError(f"SECRET_KEY is not set and the key file {path} could not be created "
                            f"({exc.strerror}): set SECRET_KEY, or make its folder writable") from None
    key = _read(path)
    if key is None:
        raise SettingsError(f"the key file {path} is empty: delete it (a new key is made) or set SECRET_KEY")
    return key, created


def _read(path):
    try:
        with open(path, encoding="ascii") as f:
            key = f.read().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"the key file {path} cannot be read ({exc}): fix its permissions, or set "
                            f"SECRET_KEY") from None
    return key or None
