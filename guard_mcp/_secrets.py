"""Static secrets the configuration names instead of holding: an upstream's client secret, API keys and
bearer tokens in headers or a stdio upstream's environment, the guard's HTTP token and `/metrics` token, the
store's URL, a notification target's URL and secret (the keys typed `Secret` in _config.py).

Any of those keys takes, instead of the value itself, one of

- `{file: PATH}`: the file's one line (a final newline dropped). PATH is relative to the configuration
  file's directory; the file must belong to this user (or root) and give group and others no access.
- `{env: NAME}`: the guard's environment variable NAME (as `${NAME}` does, without a default).
- `{keyring: SERVICE/NAME}`: the OS keyring's password for user NAME of SERVICE, through the `keyring`
  library (`keyring set SERVICE NAME` stores one).

with `prefix:` put in front (`{file: token, prefix: "Bearer "}` for an `Authorization` header). A value
is read when the configuration loads; what is wrong is one line that names the key and the reference,
never the value. A value written into the file itself still works, with a warning (`inline_secrets`).
The upstreams cut the credentials they were configured with out of what they send back: every value read by
reference (`GuardConfig.referenced`), and the header and variable values `names_a_secret` says are credentials.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["SECRET_KEYS", "inline_secrets", "names_a_secret", "read_reference"]

_KINDS = ("file", "env", "keyring")
_MAX_FILE = 64 * 1024
# A name one of whose words (between `-`, `_`, `.`) ends in one of these: `API_KEY`, `X-Auth-Token`, `PGPASSWORD`.
_SECRET_NAME = re.compile(
    r"(?:^|[-_.])[a-z0-9]*(?:key|token|secret|passw(?:or)?d|pwd|credentials?|authorization|cookie)s?(?:$|[-_.])",
    re.IGNORECASE,
)
# Where the configuration holds a secret (`*` any name): these take a reference, and warn when inline.
SECRET_KEYS: tuple[tuple[str, ...], ...] = (
    ("upstreams", "*", "auth", "client_secret"),
    ("upstreams", "*", "headers", "*"),
    ("upstreams", "*", "env", "*"),
    ("guard", "http", "token"),
    ("guard", "metrics", "token"),
    ("guard", "notify", "targets", "*", "secret"),
)
# URLs that may carry a password (`postgresql://guard:PASSWORD@db/guard`): they warn when they do.
SECRET_URL_KEYS: tuple[tuple[str, ...], ...] = (
    ("guard", "store"),
    ("guard", "notify", "targets", "*", "webhook"),
    ("guard", "notify", "targets", "*", "apprise"),
)


def names_a_secret(key: str) -> bool:
    """Whether a header or variable name says its value is a credential (`Authorization`, `API_KEY`, ...)."""
    return bool(_SECRET_NAME.search(key))


def read_reference(value: Mapping[str, Any], *, environ: Mapping[str, str], base: Path | None) -> str:
    """The secret a `{file|env|keyring: ..., prefix: ...}` mapping names. Raises ValueError with one
    line saying what is wrong with the reference (never a value read)."""
    kinds = [k for k in _KINDS if k in value]
    unknown = sorted(set(value) - {*_KINDS, "prefix"}, key=str)
    if unknown:
        return _refuse(
            f"unknown key `{unknown[0]}` in a secret reference; write `{{file: PATH}}`, `{{env: NAME}}` "
            "or `{keyring: SERVICE/NAME}`, with `prefix:` if the value needs one"
        )
    if len(kinds) != 1:
        return _refuse("a secret reference names one place: `file`, `env` or `keyring`; keep one")
    kind, where, prefix = kinds[0], value[kinds[0]], value.get("prefix", "")
    if not isinstance(where, str) or not where or not isinstance(prefix, str):
        return _refuse(f"`{kind}:` of a secret reference must be a non-empty string")
    if kind == "file":
        secret = _from_file(where, base)
    elif kind == "env":
        secret = _from_env(where, environ)
    else:
        secret = _from_keyring(where)
    return prefix + secret


def _refuse(message: str) -> str:
    raise ValueError(message)


def _from_file(name: str, base: Path | None) -> str:
    path = Path(name).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        # The checks and the read on one open file (no swap between them); a FIFO does not block the open.
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return _refuse(
                    f"secret file `{path}` is not a regular file; point `file:` at the file holding the value"
                )
            if os.name == "posix":
                if st.st_uid not in (os.geteuid(), 0):
                    return _refuse(
                        f"secret file `{path}` belongs to another user (uid {st.st_uid}), who could "
                        "change it; keep it in a file of your own"
                    )
                if stat.S_IMODE(st.st_mode) & 0o077:
                    return _refuse(
                        f"secret file `{path}` can be read or written by group or others (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`"
                    )
            raw = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return _refuse(f"secret file `{path}` does not exist; create it (`chmod 600`) or fix `file:`")
    except OSError as exc:
        return _refuse(f"cannot read secret file `{path}` ({exc.strerror or type(exc).__name__}); check it")
    if len(raw) > _MAX_FILE:
        return _refuse(f"secret file `{path}` is larger than {_MAX_FILE // 1024} KiB; it should hold one value")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _refuse(f"secret file `{path}` is not UTF-8 text; write the value as text")
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        return _refuse(f"secret file `{path}` is empty; write the value into it")
    if "\n" in text or "\r" in text:
        return _refuse(f"secret file `{path}` holds more than one line; write only the value")
    return text


def _from_env(name: str, environ: Mapping[str, str]) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return _refuse(f"`{name[:60]}` is not an environment variable name; write it like `TRACKER_TOKEN`")
    value = environ.get(name)
    if value is None:
        return _refuse(f"environment variable `{name}` is not set in the guard's environment; export it")
    if not value:
        return _refuse(f"environment variable `{name}` is empty; export the secret in it")
    return value


def _from_keyring(where: str) -> str:
    service, _, user = where.partition("/")
    if not service or not user:
        return _refuse(f"`keyring: {where[:80]}` must be `SERVICE/NAME`, as stored with `keyring set SERVICE NAME`")
    import keyring
    from keyring.errors import NoKeyringError

    try:
        value = keyring.get_password(service, user)
    except NoKeyringError:
        return _refuse(
            f"no OS keyring is available to read `{where}`; start one (an unlocked Secret Service, "
            "macOS Keychain or Windows Credential Locker), or use `{file: PATH}`"
        )
    except Exception as exc:  # KeyringLocked, or a backend's own error (D-Bus, the Keychain): never its text
        return _refuse(f"the OS keyring did not give `{where}` ({type(exc).__name__}); unlock it and retry")
    if not value:
        return _refuse(
            f"the OS keyring holds no `{user}` for service `{service}`; store it with `keyring set {service} {user}`"
        )
    return value


def inline_secrets(raw: Any) -> list[tuple[str, ...]]:
    """Where the document (before `${VAR}` expansion) writes a secret out instead of referring to it:
    a plain value at a secret key, under a name that says it is one (`Authorization`, `API_KEY`, ...), or a
    URL with a password in it."""
    found: list[tuple[str, ...]] = []

    def walk(node: Any, pattern: tuple[str, ...], path: tuple[str, ...], url: bool) -> None:
        if not pattern:
            written = isinstance(node, str) and node and "${" not in node
            if written and (_has_password(node) if url else names_a_secret(path[-1])):
                found.append(path)
            return
        if not isinstance(node, dict):
            return
        head, rest = pattern[0], pattern[1:]
        for key, child in node.items():
            if head in ("*", key):
                walk(child, rest, (*path, str(key)), url)

    for pattern in SECRET_KEYS:
        walk(raw, pattern, (), False)
    for pattern in SECRET_URL_KEYS:
        walk(raw, pattern, (), True)
    return found


def _has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:  # not a URL: the key's own check says so
        return False
