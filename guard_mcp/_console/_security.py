"""What every console response and request goes through before a view sees it.

- Host: only the console's own host names are served (loopback names on a loopback listener, the
  public URL's host), so a DNS-rebinding page (`evil.example` resolved to 127.0.0.1) gets nothing.
- Origin: a state change (any method but GET/HEAD) must come from the console's own origin (or,
  where the browser withholds it, say `Sec-Fetch-Site: same-origin`); anything else is refused
  before any view runs (cross-site request forgery from a foreign page). The CSRF token
  (`check_csrf`) is the second, independent check.
- Headers on every answer: a CSP with no inline script and `frame-ancestors 'none'`, X-Frame-Options
  DENY, nosniff, no referrer (an enrolment link in the address bar never leaks), no caching.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["SECURITY_HEADERS", "Guarded", "check_csrf", "host_name", "safe_next"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
_SAFE_METHODS = frozenset({"GET", "HEAD"})
DEFAULT_NEXT = "/console/"


def host_name(host: str) -> str:
    """`localhost:8766` -> `localhost`, `[::1]:8766` -> `::1` (lower-cased)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def _plain(send: Send, status: int, text: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *SECURITY_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": text.encode()})


class Guarded:
    """The console app behind the Host and Origin checks, with the security headers on every answer."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str], origins: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)
        self.origins = frozenset(origins)

    def _same_origin(self, scope: Scope, headers: Headers, host: str) -> bool:
        """A state change from the console's own page. Browsers send its origin, except that under
        `Referrer-Policy: no-referrer` a form's navigation says `Origin: null`; then the browser's own
        `Sec-Fetch-Site` (which no page can set) must say `same-origin`."""
        origin = headers.get("origin")
        site = headers.get("sec-fetch-site")
        if site is not None and site != "same-origin":
            return False
        if origin is None or origin == "null":
            return site == "same-origin"
        return origin in {f"{scope.get('scheme', 'http')}://{host}", *self.origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if host_name(host) not in self.hosts:
            await _plain(send, 421, "this console does not answer for that host name; open the link the guard printed")
            return
        if scope["method"] not in _SAFE_METHODS and not self._same_origin(scope, headers, host):
            await _plain(send, 403, "refused: this change did not come from the console's own page")
            return

        async def secured(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                existing = list(message.get("headers", []))  # type: ignore[call-overload]
                names = {k.lower() for k, _ in existing}
                message = {**message, "headers": [*existing, *(h for h in SECURITY_HEADERS if h[0] not in names)]}
            await send(message)

        await self.app(scope, receive, secured)  # type: ignore[arg-type]


def check_csrf(request: Request, expected: str, submitted: str | None) -> bool:
    """The form's (or the `X-CSRF-Token` header's) token equals the session's, in constant time."""
    value = submitted if submitted is not None else request.headers.get("x-csrf-token")
    return bool(value) and hmac.compare_digest(str(value).encode(), expected.encode())


def safe_next(value: str | None) -> str:
    """`next` only ever names a page of this console: a relative path under `/console/`, nothing else.

    `//evil.example`, `/\\evil.example`, `https://…`, `javascript:…`, encoded or control characters
    and paths outside the console all fall back to the queue.
    """
    if not value or len(value) > 512 or not value.isprintable() or "\\" in value or "%" in value:
        return DEFAULT_NEXT
    if not value.startswith(DEFAULT_NEXT) or value.startswith("//"):
        return DEFAULT_NEXT
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or "//" in parts.path or ".." in parts.path.split("/"):
        return DEFAULT_NEXT
    return value
