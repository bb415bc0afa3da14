"""Who is calling over HTTP, as the gate in front of the MCP endpoint establishes it.

Two ways to know, one contract (`CallerCheck`): the guard's shared bearer token (`SharedToken`: it
proves a caller holds the token, and names nobody, so calls run as the configured `guard.principal`),
or a JWT from the organisation's identity provider (`_resource.ResourceServer`: the principal and
groups come from its claims). The gate puts the `Caller` in the request's ASGI scope; the server
reads it from there (`caller_of`) and nowhere else: nothing the client writes in `_meta` can name one.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.routing import Route

__all__ = ["CALLER_SCOPE_KEY", "Caller", "CallerCheck", "Refusal", "SharedToken", "bearer_credential", "caller_of"]

CALLER_SCOPE_KEY = "guard_mcp.caller"
MAX_TOKEN_BYTES = 16 * 1024  # an access token is a few hundred bytes to a few kilobytes


@dataclass(frozen=True)
class Caller:
    """A caller the gate let in. `principal` None: the configured `guard.principal`."""

    principal: str | None = None
    groups: tuple[str, ...] = ()
    issuer: str | None = None
    client_id: str | None = None
    scopes: tuple[str, ...] = ()

    def user(self) -> AuthenticatedUser | None:
        """The SDK's view of this caller: the streamable HTTP transport binds each session to the
        credential that opened it, so another principal cannot ride an open session."""
        if self.principal is None:
            return None
        # The token itself stays out: nothing downstream of the gate needs it, and nothing may forward it.
        return AuthenticatedUser(
            AccessToken(
                token="",
                client_id=self.client_id or "",
                scopes=list(self.scopes),
                subject=self.principal,
                claims={"iss": self.issuer},
            )
        )


@dataclass(frozen=True)
class Refusal:
    """Why the gate refuses a request: the HTTP status, an error code, one line for the client, and the
    `WWW-Authenticate` challenge that tells a standard client how to sign in."""

    status: int
    error: str
    detail: str
    challenge: str = "Bearer"
    extra: dict[str, str] = field(default_factory=dict)


class CallerCheck(Protocol):
    public_paths: frozenset[str]

    def routes(self) -> list[Route]:
        """Routes served without a token (the protected resource metadata)."""
        ...

    async def check(self, authorization: bytes) -> Caller | Refusal:
        """The caller an `Authorization` header value proves, or why it proves none."""
        ...


def bearer_credential(authorization: bytes) -> bytes | None:
    """The credential of `Bearer <credential>` (the scheme in any case), or None."""
    scheme, _, credential = authorization.strip().partition(b" ")
    credential = credential.strip()
    if scheme.lower() != b"bearer" or not credential or len(credential) > MAX_TOKEN_BYTES:
        return None
    return credential


class SharedToken:
    """One bearer token every HTTP client presents, compared in constant time."""

    public_paths: frozenset[str] = frozenset()

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def routes(self) -> list[Route]:
        return []

    async def check(self, authorization: bytes) -> Caller | Refusal:
        credential = bearer_credential(authorization)
        if credential is not None and hmac.compare_digest(credential, self._token):
            return Caller()
        return Refusal(
            401,
            "unauthorized",
            "send `Authorization: Bearer <token>`; `guard-mcp serve --print-token` on the guard's machine shows it",
        )


def caller_of(request: Any) -> Caller | None:
    """The caller the gate established for this request (an HTTP request's ASGI scope), else None."""
    scope = getattr(request, "scope", None)
    caller = scope.get(CALLER_SCOPE_KEY) if isinstance(scope, dict) else None
    return caller if isinstance(caller, Caller) else None
