"""What `guard.store` names, and how it is shown: a PostgreSQL URL never appears with its password.

`None` is the embedded SQLite database in the state directory; a `postgresql://` (or `postgres://`)
URL is a shared PostgreSQL server. Every message that names a store goes through `shown()`, and
every driver message through `scrub()`, so a password expanded from `${PGPASSWORD}` is never echoed.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["is_postgres", "password_of", "scrub", "shown"]

_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str | None) -> bool:
    return url is not None and url.lower().startswith(_SCHEMES)


def password_of(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def shown(url: str) -> str:
    """The URL with its password replaced by `***` (and any query string, which may carry one, dropped)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://***"
    user = f"{parts.username}{':***' if parts.password else ''}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


def scrub(text: str, url: str | None) -> str:
    """A driver's message as one line, with the URL's password (raw and percent-decoded) cut out."""
    if url:
        for secret in {password_of(url), urlsplit(url).password}:
            if secret:
                text = text.replace(secret, "***")
    return " ".join(text.split())
