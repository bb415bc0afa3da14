"""The guard as an OAuth client of its upstreams: the SDK's `OAuthClientProvider`, kept to three rules.

- Discovery (RFC 9728 protected resource metadata, RFC 8414 authorization server metadata), dynamic
  registration, PKCE, the RFC 8707 `resource` and the token requests are the SDK's. The tokens live in
  the vault (`VaultStorage`), sealed; what the login discovered is kept too, so a restarted guard
  refreshes at the right token endpoint.
- A token is refreshed before it expires, by the guard's clock: the SDK's own check runs on the wall
  clock at the expiry itself, so the expiry the vault holds is handed to it early (`_REFRESH_AHEAD`).
- Serving, nothing goes to the upstream without a token, and nobody is sent to a browser: when there
  is no usable token (never logged in, the refresh refused, the upstream refusing the token even after
  a refresh) the request is answered inside the guard (`LocalRefusals`) with a JSON-RPC error, the
  provider says `needs_login`, and every call to that upstream is denied `upstream_auth_required`
  until someone runs `guard-mcp login UPSTREAM`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthMetadata,
    ProtectedResourceMetadata,
)
from mcp.shared.auth_utils import resource_url_from_server_url
from pydantic import AnyUrl, ValidationError

from guard_mcp._config import HttpUpstream
from guard_mcp._identity._vault import VaultStorage

__all__ = [
    "AUTH_REQUIRED_CODE",
    "LocalRefusals",
    "UpstreamOAuthClient",
    "client_metadata",
    "login_message",
    "resource_of",
]

log = logging.getLogger("guard_mcp.identity")

_REFUSE_HERE = "guard_mcp.refuse_here"  # a request extension: answer it inside the guard, send nothing
AUTH_REQUIRED_CODE = -32050
_REFRESH_AHEAD = 60.0  # seconds before expiry a token is refreshed (at most half its life)


def login_message(upstream: str, why: str) -> str:
    return f"upstream `{upstream}` needs a login ({why}); run `guard-mcp login {upstream}` on the guard's machine"


def client_metadata(upstream: HttpUpstream, redirect_uri: str) -> OAuthClientMetadata:
    assert upstream.auth is not None
    secret = upstream.auth.client_secret
    return OAuthClientMetadata(
        client_name="guard-mcp",
        redirect_uris=[AnyUrl(redirect_uri)],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="client_secret_post" if secret else "none",
        scope=upstream.auth.scope,
    )


class LocalRefusals(httpx2.AsyncBaseTransport):
    """The upstream's HTTP transport, except for requests the OAuth client marked: those are answered
    here with 401 and a JSON-RPC error, which the SDK hands to the waiting call, and never sent."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, message: Callable[[], str]) -> None:
        self._inner = inner
        self._message = message

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.extensions.get(_REFUSE_HERE):
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": AUTH_REQUIRED_CODE, "message": self._message()}}
            return httpx2.Response(401, json=body, request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class UpstreamOAuthClient(OAuthClientProvider):
    """One upstream's OAuth client. Serving (`interactive=False`) it never opens a browser."""

    def __init__(
        self,
        upstream: str,
        config: HttpUpstream,
        storage: VaultStorage,
        *,
        redirect_uri: str = "http://127.0.0.1/callback",
        open_url: Callable[[str], Awaitable[None]] | None = None,
        wait_for_code: Callable[[], Awaitable[AuthorizationCodeResult]] | None = None,
    ) -> None:
        self.upstream = upstream
        self.storage = storage
        self.interactive = open_url is not None
        self.needs_login: str | None = None

        async def no_browser(_: str) -> None:  # unreachable while serving: the flow is cut before it
            raise RuntimeError("an interactive login was started while serving")

        async def no_code() -> AuthorizationCodeResult:
            raise RuntimeError("an interactive login was started while serving")

        super().__init__(
            config.url,
            client_metadata(config, redirect_uri),
            storage,
            redirect_handler=open_url or no_browser,
            callback_handler=wait_for_code or no_code,
            client_metadata_url=config.auth.client_metadata_url if config.auth is not None else None,
        )
        self._preregistered = _preregistered(config, redirect_uri)

    @property
    def resource(self) -> str:
        return self.storage.resource

    async def prepare(self) -> None:
        """Load what a login stored: a client registered beforehand, what discovery found, and whether
        there is a token at all (so a guard that was never logged in says so before the first call)."""
        if self._preregistered is not None and await self.storage.get_client_info() is None:
            await self.storage.set_client_info(self._preregistered)
        found = await self.storage.vault.discovery(self.upstream, self.resource)
        if found:
            try:
                doc = json.loads(found)
                self.context.protected_resource_metadata = ProtectedResourceMetadata.model_validate(doc["prm"])
                self.context.oauth_metadata = OAuthMetadata.model_validate(doc["asm"])
                self.context.auth_server_url = str(doc.get("as") or "") or None
            except (ValueError, KeyError, TypeError, ValidationError):
                log.warning("upstream %s: the stored OAuth metadata is damaged; log in again", self.upstream)
        if not self.interactive:
            state = await self.storage.vault.state(self.upstream, self.resource)
            self.needs_login = None if state.logged_in else state.note or "never logged in"
            # The SDK's own first load, done now: the first request then already knows the stored token's
            # expiry (`_refresh_early`) instead of sending a token that may have expired while the guard was down.
            await self._initialize()

    def discovery_document(self) -> str | None:
        prm, asm = self.context.protected_resource_metadata, self.context.oauth_metadata
        if prm is None or asm is None:
            return None
        return json.dumps(
            {
                "prm": prm.model_dump(mode="json", exclude_none=True),
                "asm": asm.model_dump(mode="json", exclude_none=True),
                "as": self.context.auth_server_url,
            }
        )

    def login_message(self) -> str:
        return login_message(self.upstream, self.needs_login or "the login was refused")

    def _refresh_early(self) -> None:
        """Hand the SDK (which compares the wall clock with the expiry itself) the stored expiry moved
        ahead, measured on the guard's clock, so the token is refreshed before the upstream sees it expire."""
        storage = self.storage
        if storage.expires_at is None or self.context.current_tokens is not storage.tokens:
            return
        life = storage.expires_at - (storage.stored_at or storage.expires_at)
        left = storage.expires_at - min(_REFRESH_AHEAD, max(life, 0) / 2) - storage.vault.clock.now()
        self.context.token_expiry_time = time.time() + left

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        flow = super().async_auth_flow(request) if self.interactive else self._serving(request)
        response: httpx2.Response | None = None
        try:
            while True:
                outgoing = await (flow.__anext__() if response is None else flow.asend(response))
                response = yield outgoing
        except StopAsyncIteration:
            return
        finally:
            await flow.aclose()

    async def _serving(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        """The SDK's flow, stopped at the two points it would go wrong while serving: the request about to
        go out without a token, and a 401 that would start a browser login. A 401 earns one more try
        after a refresh; then the request is refused inside the guard."""
        why = "no token is stored"
        for attempt in (1, 2):
            if attempt == 1:
                self._refresh_early()
            else:
                if not self.context.can_refresh_token():
                    break
                self.context.token_expiry_time = 1.0  # long past: the SDK refreshes first
                request.headers.pop("authorization", None)  # the refused token is not sent again
            had_tokens = self.context.current_tokens is not None or self.storage.tokens is not None
            flow = super().async_auth_flow(request)
            try:
                outgoing = await flow.__anext__()
                while True:
                    if outgoing is request and "authorization" not in request.headers:
                        # no usable token (none stored, or the refresh was refused): never sent
                        why = (
                            "the authorization server refused to refresh the token"
                            if had_tokens
                            else "no token is stored"
                        )
                        break
                    response = yield outgoing
                    if outgoing is request:
                        if response.status_code != 401:
                            self.needs_login = None
                            return
                        why = "the upstream refused its token"
                        break  # not the SDK's browser login: a refresh, once
                    outgoing = await flow.asend(response)
            except StopAsyncIteration:
                return
            finally:
                await flow.aclose()
            if "authorization" not in request.headers:
                break
        await self._refused(why)
        request.headers.pop("authorization", None)
        request.extensions = {**request.extensions, _REFUSE_HERE: True}
        yield request

    async def _refused(self, why: str) -> None:
        if self.needs_login != why:
            log.warning("%s", login_message(self.upstream, why))
        self.needs_login = why
        self.context.clear_tokens()
        if self.storage.tokens is not None:  # the stored token is dead: not offered again
            self.storage.tokens = None
            await self.storage.vault.note_login_required(self.upstream, why)


def _preregistered(config: HttpUpstream, redirect_uri: str) -> OAuthClientInformationFull | None:
    auth = config.auth
    if auth is None or auth.client_id is None:
        return None
    return OAuthClientInformationFull(
        client_id=auth.client_id,
        client_secret=auth.client_secret,
        redirect_uris=[AnyUrl(redirect_uri)],
        token_endpoint_auth_method="client_secret_post" if auth.client_secret else "none",
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        scope=auth.scope,
    )


def resource_of(config: HttpUpstream) -> str:
    """The RFC 8707 resource the upstream's tokens are bound to (the vault's key beside the name)."""
    return resource_url_from_server_url(config.url)
