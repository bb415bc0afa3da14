"""The guard as an OAuth 2.1 resource server: bearer JWTs from the organisation's identity provider.

A token is accepted only when PyJWT verifies its signature with a key from the provider's JWKS (an
asymmetric algorithm of the allow-list, the key's own algorithm), its `iss` is the configured issuer,
its `aud` names the guard (RFC 8707: the guard's resource URL unless configured otherwise), it carries
the required scopes and a principal claim, and the injected clock is inside `nbf`..`exp` give or take
the leeway. Every refusal is a 401 whose `WWW-Authenticate` points at the RFC 9728 metadata, so a
standard MCP client finds the provider and signs in by itself.

The JWKS address comes from the issuer's metadata (OpenID discovery, else RFC 8414) unless configured;
a provider that cannot be reached makes the guard answer 503 for a while, never let anyone in.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt
from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
from mcp.server.auth.routes import build_resource_metadata_url, cors_middleware
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.routing import Route

from guard_mcp._clock import Clock
from guard_mcp._config import HttpAuthConfig
from guard_mcp._identity._callers import Caller, Refusal, bearer_credential

__all__ = ["ResourceServer", "issuer_metadata_urls"]

log = logging.getLogger("guard_mcp.identity")

_RETRY_DISCOVERY = 10.0  # seconds before an unreachable provider is asked again
_MAX_NAME = 128
_MAX_GROUPS = 64
ROOT_METADATA_PATH = "/.well-known/oauth-protected-resource"


def issuer_metadata_urls(issuer: str) -> list[str]:
    """Where an issuer publishes its metadata: OpenID discovery, then RFC 8414 (path after the well-known)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [
        f"{origin}{path}/.well-known/openid-configuration",
        f"{origin}/.well-known/oauth-authorization-server{path}",
    ]


class ResourceServer:
    """Verifies callers' JWTs; serves the protected resource metadata that names the provider."""

    def __init__(self, auth: HttpAuthConfig, *, resource: str, clock: Clock, timeout: float = 10.0) -> None:
        self.auth = auth
        self.resource = resource
        self.audience = auth.audience or resource
        self.clock = clock
        self.timeout = timeout
        self.metadata_url = str(build_resource_metadata_url(AnyHttpUrl(resource)))
        metadata_path = urlsplit(self.metadata_url).path
        self.public_paths = frozenset({metadata_path, ROOT_METADATA_PATH})
        self._jwks: jwt.PyJWKClient | None = None
        self._jwks_uri = auth.jwks_uri
        self._failed_at: float | None = None
        self._lock = anyio.Lock()

    # -- metadata (RFC 9728) ---------------------------------------------------------------------

    def routes(self) -> list[Route]:
        # Validated from strings, so the model keeps a path-less issuer without a trailing slash: clients
        # compare it with the provider's own `issuer` as strings (RFC 8414 §3.3).
        metadata = ProtectedResourceMetadata.model_validate(
            {
                "resource": self.resource,
                "authorization_servers": [self.auth.issuer],
                "scopes_supported": self.auth.scopes or None,
                "resource_name": "guard-mcp",
            }
        )
        handler = cors_middleware(ProtectedResourceMetadataHandler(metadata).handle, ["GET", "OPTIONS"])
        return [Route(path, endpoint=handler, methods=["GET", "OPTIONS"]) for path in sorted(self.public_paths)]

    def _refuse(self, error: str | None, detail: str) -> Refusal:
        # RFC 6750 §3: no error code when no credential was sent at all, `invalid_token` otherwise.
        params = [f'resource_metadata="{self.metadata_url}"']
        if error is not None:
            params.insert(0, f'error="{error}", error_description="{_quoted(detail)}"')
        return Refusal(401, error or "unauthorized", detail, challenge="Bearer " + ", ".join(params))

    # -- tokens ----------------------------------------------------------------------------------

    async def check(self, authorization: bytes) -> Caller | Refusal:
        credential = bearer_credential(authorization)
        if credential is None:
            return self._refuse(
                None,
                f"sign in with the identity provider `{self.auth.issuer}` and send "
                "`Authorization: Bearer <access token>`",
            )
        try:
            token = credential.decode("ascii")
        except UnicodeDecodeError:
            return self._refuse("invalid_token", "the bearer token is not a JWT")
        client = await self._client()
        if client is None:
            return Refusal(
                503,
                "identity_provider_unavailable",
                f"the identity provider `{self.auth.issuer}` cannot be reached to verify tokens; retry shortly",
                extra={"retry-after": "10"},
            )
        try:
            key = await anyio.to_thread.run_sync(client.get_signing_key_from_jwt, token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.auth.algorithms,
                audience=self.audience,
                issuer=self.auth.issuer,
                # the time window is checked below against the guard's clock, which tests can move
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "aud"],
                },
            )
        except jwt.PyJWKClientConnectionError:
            return Refusal(
                503,
                "identity_provider_unavailable",
                f"the keys of `{self.auth.issuer}` cannot be fetched to verify tokens; retry shortly",
                extra={"retry-after": "10"},
            )
        except jwt.InvalidAudienceError:
            return self._refuse("invalid_token", f"the token is not for this guard (audience `{self.audience}`)")
        except jwt.InvalidIssuerError:
            return self._refuse("invalid_token", f"the token is not from `{self.auth.issuer}`")
        except (jwt.PyJWTError, ValueError, TypeError):
            return self._refuse("invalid_token", "the token does not verify; sign in again")
        return self._caller(claims)

    def _caller(self, claims: dict[str, Any]) -> Caller | Refusal:
        now = self.clock.now()
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if (
            not isinstance(exp, int | float)
            or not isinstance(nbf, int | float)
            or isinstance(exp, bool)
            or isinstance(nbf, bool)
        ):
            return self._refuse("invalid_token", "the token's `exp` or `nbf` is not a time")
        if now >= exp + self.auth.leeway:
            return self._refuse("invalid_token", "the token expired; sign in again")
        if now + self.auth.leeway < nbf:
            return self._refuse("invalid_token", "the token is not valid yet")
        principal = claims.get(self.auth.principal_claim)
        if not _name(principal):
            return self._refuse(
                "invalid_token",
                f"the token has no usable `{self.auth.principal_claim}` claim "
                f"(1-{_MAX_NAME} printable characters) to name the caller",
            )
        groups = _groups(claims.get(self.auth.groups_claim)) if self.auth.groups_claim else ()
        if groups is None:
            return self._refuse(
                "invalid_token", f"the token's `{self.auth.groups_claim}` claim is not a list of group names"
            )
        scopes = _scopes(claims)
        missing = [s for s in self.auth.scopes if s not in scopes]
        if missing:
            return Refusal(
                403,
                "insufficient_scope",
                f"the token lacks scope `{missing[0]}`",
                challenge=f'Bearer error="insufficient_scope", scope="{" ".join(self.auth.scopes)}", '
                f'resource_metadata="{self.metadata_url}"',
            )
        client_id = claims.get("client_id", claims.get("azp"))
        return Caller(
            principal=principal,
            groups=groups,
            issuer=self.auth.issuer,
            client_id=client_id if isinstance(client_id, str) else None,
            scopes=scopes,
        )

    async def _client(self) -> jwt.PyJWKClient | None:
        if self._jwks is not None:
            return self._jwks
        async with self._lock:
            if self._jwks is None:
                if self._failed_at is not None and self.clock.now() - self._failed_at < _RETRY_DISCOVERY:
                    return None
                uri = self._jwks_uri or await self._discover()
                if uri is None:
                    self._failed_at = self.clock.now()
                    return None
                # PyJWKClient fetches and caches the key set; an unknown `kid` refetches at most once per cooldown.
                self._jwks = jwt.PyJWKClient(uri, cache_keys=True, lifespan=300, timeout=self.timeout)
        return self._jwks

    async def _discover(self) -> str | None:
        issuer = self.auth.issuer
        async with httpx2.AsyncClient(timeout=self.timeout) as http:
            for url in issuer_metadata_urls(issuer):
                try:
                    answer = await http.get(url)
                    doc = answer.json() if answer.status_code == 200 else None
                except (httpx2.HTTPError, ValueError) as exc:
                    log.warning("identity provider metadata `%s` cannot be read: %s", url, type(exc).__name__)
                    continue
                if not isinstance(doc, dict):
                    continue
                # RFC 8414 §3.3: metadata that names another issuer must not be used.
                if str(doc.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
                    log.warning(
                        "identity provider metadata `%s` names issuer `%s`, not `%s`; ignored",
                        url,
                        str(doc.get("issuer"))[:200],
                        issuer,
                    )
                    continue
                uri = doc.get("jwks_uri")
                if isinstance(uri, str) and uri.startswith(("https://", "http://")):
                    return uri
        log.warning("no usable metadata with a `jwks_uri` for issuer `%s`; set `guard.http.auth.jwks_uri`", issuer)
        return None


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_NAME and value.isprintable()


def _groups(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > _MAX_GROUPS or not all(_name(g) for g in items):
        return None
    return tuple(sorted(set(items)))


def _scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    scope = claims.get("scope", claims.get("scp"))
    if isinstance(scope, str):
        return tuple(scope.split())
    if isinstance(scope, list):
        return tuple(s for s in scope if isinstance(s, str))
    return ()


def _quoted(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")
