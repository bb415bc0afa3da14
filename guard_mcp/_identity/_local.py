"""The guard's own HTTP bearer token: configured (`guard.http.token`), else generated once and kept.

The generated token lives in `keys/http.token` (0600, beside the signing keys), so a restarted guard
and `guard-mcp serve --print-token` read the same one. Two guards starting at once on a new state
directory agree on one token: it is published with link(), which fails for the second, who then
reads the first's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from guard_mcp._config import MIN_TOKEN_CHARS, GuardConfig
from guard_mcp._errors import StateError
from guard_mcp._state import StateDir, write_private

__all__ = ["HTTP_TOKEN_FILE", "http_token", "http_token_path"]

HTTP_TOKEN_FILE = "http.token"  # noqa: S105 - a file name, not a secret


def http_token_path(state: StateDir) -> Path:
    return state.keys / HTTP_TOKEN_FILE


def http_token(config: GuardConfig, state: StateDir, *, create: bool = True) -> tuple[str, bool]:
    """The bearer token HTTP clients must present, and whether it was generated just now.

    `guard.http.token` wins; otherwise the stored token, made on first use when `create`."""
    configured = config.guard.http.token
    if configured is not None:
        return configured, False
    path = http_token_path(state)
    stored = _read(path)
    if stored is not None:
        return stored, False
    if not create:
        raise StateError(
            f"no HTTP bearer token in `{path}` yet; start `guard-mcp serve --transport http` once, "
            "or set `guard.http.token`"
        )
    return _create(path)


def _read(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(
            f"cannot read the HTTP bearer token `{path}`: {exc.strerror}; check its owner and permissions"
        ) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        text = f.read(4096).decode("ascii", errors="replace").strip()
    if os.name == "posix" and mode & 0o077:
        raise StateError(
            f"the HTTP bearer token `{path}` is readable by others; remove it (a new one is made at "
            "the next start) and give the new one to your clients"
        )
    if len(text) < MIN_TOKEN_CHARS or not text.isprintable() or any(c.isspace() for c in text):
        raise StateError(
            f"the HTTP bearer token `{path}` is damaged; remove it (a new one is made at the next "
            "start) and give the new one to your clients"
        )
    return text


def _create(path: Path) -> tuple[str, bool]:
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    write_private(tmp, token.encode() + b"\n")
    try:
        os.link(tmp, path)
    except FileExistsError:  # another guard made one first: use theirs
        stored = _read(path)
        if stored is None:
            raise StateError(f"the HTTP bearer token `{path}` vanished while it was being made; start again") from None
        return stored, False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return token, True
