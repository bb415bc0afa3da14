"""`guard-mcp login UPSTREAM` and the credentials a serving guard hands its OAuth upstreams.

A login is the SDK's authorization code flow with PKCE in the user's browser: the guard listens on a
loopback port for the redirect (RFC 8252), prints the authorization URL and opens it if it can, and
connects to the upstream once the token is in the vault, so a finished login has been seen to work.
"""

from __future__ import annotations

import hmac
import html
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from guard_mcp._clock import Clock
from guard_mcp._config import GuardConfig, HttpUpstream
from guard_mcp._errors import ConfigError, UpstreamError
from guard_mcp._identity._upstream import UpstreamOAuthClient, resource_of
from guard_mcp._identity._vault import LoginState, TokenVault
from guard_mcp._state import StateDir

__all__ = ["LoginResult", "UpstreamCredentials", "login", "login_states", "oauth_upstream"]

CALLBACK_PATH = "/callback"


class UpstreamCredentials:
    """The OAuth clients of a serving guard's upstreams, one per connection attempt, over one vault."""

    def __init__(self, vault: TokenVault) -> None:
        self.vault = vault

    @classmethod
    async def needed(cls, config: GuardConfig, state: StateDir, clock: Clock) -> UpstreamCredentials | None:
        """The credentials of the configuration's `auth: oauth` upstreams; None when it has none."""
        if not any(isinstance(up, HttpUpstream) and up.auth is not None for up in config.upstreams.values()):
            return None
        return cls(await TokenVault.open(state, clock, store=config.guard.store))

    async def client(self, name: str, config: HttpUpstream) -> UpstreamOAuthClient:
        oauth = UpstreamOAuthClient(name, config, self.vault.storage(name, resource_of(config)))
        await oauth.prepare()
        return oauth

    async def close(self) -> None:
        await self.vault.close()


def oauth_upstream(config: GuardConfig, name: str) -> HttpUpstream:
    up = config.upstreams.get(name)
    if up is None:
        known = ", ".join(f"`{n}`" for n in config.upstreams) or "none"
        raise ConfigError(f"no upstream `{name}` in the configuration (upstreams: {known})")
    if not isinstance(up, HttpUpstream) or up.auth is None:
        raise ConfigError(f"upstream `{name}` does not sign in with OAuth; give it `url:` and `auth: oauth`")
    return up


async def login_states(config: GuardConfig, state: StateDir, clock: Clock) -> dict[str, LoginState]:
    """The login state of every OAuth upstream, for `guard-mcp check`."""
    names = [n for n, up in config.upstreams.items() if isinstance(up, HttpUpstream) and up.auth is not None]
    if not names:
        return {}
    vault = await TokenVault.open(state, clock, store=config.guard.store)
    try:
        return {n: await vault.state(n, resource_of(oauth_upstream(config, n))) for n in names}
    finally:
        await vault.close()


@dataclass(frozen=True)
class LoginResult:
    upstream: str
    tools: int
    expires_at: float | None
    refreshable: bool


def _bind(port: int) -> socket.socket | None:
    try:
        return socket.create_server(("127.0.0.1", port))
    except OSError:
        return None


class _Callback:
    """The loopback redirect target: takes the authorization response of this login (its `state`), then
    says so in the browser. Anything else that reaches the port (another local process, a web page
    guessing it, the answer of an older login) is refused and ends nothing."""

    def __init__(self) -> None:
        self.result: AuthorizationCodeResult | None = None
        self.error: str | None = None
        self.done = anyio.Event()
        self._state: str | None = None

    def expect(self, authorization_url: str) -> None:
        """The authorization request being shown: its `state` is what the answer must carry back."""
        found = parse_qs(urlsplit(authorization_url).query).get("state")
        self._state = found[0] if found else None

    async def handle(self, request: Request) -> HTMLResponse:
        params = request.query_params
        if self.done.is_set():
            return HTMLResponse("<p>This login is already finished; close this tab.</p>", status_code=409)
        if "error" not in params and "code" not in params:
            return HTMLResponse("<p>No authorization response here.</p>", status_code=400)
        state = params.get("state")
        if self._state is None or state is None or not hmac.compare_digest(state.encode(), self._state.encode()):
            return HTMLResponse(
                "<p>This is not the answer to the login the terminal is waiting for.</p>", status_code=400
            )
        if "error" in params:
            self.error = f"{params['error']}: {params.get('error_description', '')}"[:300]
        else:
            self.result = AuthorizationCodeResult(code=params["code"], state=state, iss=params.get("iss"))
        self.done.set()
        said = (
            "You are logged in; close this tab."
            if self.error is None
            else f"The login did not succeed ({html.escape(self.error)}); go back to the terminal."
        )
        return HTMLResponse(f"<!doctype html><title>guard-mcp</title><p>{said}</p>")


async def login(
    config: GuardConfig,
    state: StateDir,
    name: str,
    *,
    clock: Clock,
    open_url: Callable[[str], Awaitable[None]],
    wait: float = 300.0,
) -> LoginResult:
    """Run the browser login for upstream `name` and store its tokens; `open_url` shows the user the
    authorization URL. Raises ConfigError or UpstreamError with one line saying what failed."""
    up = oauth_upstream(config, name)
    assert up.auth is not None
    resource = resource_of(up)
    vault = await TokenVault.open(state, clock, store=config.guard.store)
    try:
        storage = vault.storage(name, resource)
        known = await storage.get_client_info()
        wanted = up.auth.redirect_port
        if wanted is None and known is not None and known.redirect_uris and up.auth.client_id is None:
            wanted = urlsplit(str(known.redirect_uris[0])).port
        sock = _bind(wanted or 0)
        if sock is None and up.auth.redirect_port is not None:
            raise ConfigError(
                f"cannot listen on `127.0.0.1:{up.auth.redirect_port}` for the login redirect "
                "(`auth.redirect_port`); stop what uses it and retry"
            )
        if sock is None:  # the registered redirect port is taken: register anew on a free one
            sock = _bind(0)
            assert sock is not None
        port = sock.getsockname()[1]
        redirect_uri = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
        same_client = known is not None and [str(u) for u in known.redirect_uris or []] == [redirect_uri]
        await vault.forget(name, client=not same_client and up.auth.client_id is None)
        callback = _Callback()

        async def wait_for_code() -> AuthorizationCodeResult:
            with anyio.move_on_after(wait):
                await callback.done.wait()
            if callback.result is None:
                raise UpstreamError(
                    f"login to `{name}` did not finish: {callback.error or f'no answer within {wait:g}s'}; run it again"
                )
            return callback.result

        async def show(url: str) -> None:
            callback.expect(url)
            await open_url(url)

        oauth = UpstreamOAuthClient(
            name, up, storage, redirect_uri=redirect_uri, open_url=show, wait_for_code=wait_for_code
        )
        await oauth.prepare()
        server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=[Route(CALLBACK_PATH, callback.handle)]), log_level="warning", lifespan="off"
            )
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: server.serve(sockets=[sock]))
                try:
                    tools = await _connect(name, up, oauth, wait)
                finally:
                    server.should_exit = True
        except BaseExceptionGroup as group:  # the one-line error, not the task group around it
            found = _first(group)
            if isinstance(found, UpstreamError | ConfigError):
                raise found from None
            raise
        document = oauth.discovery_document()
        if document is not None:
            await vault.save_discovery(name, document)
        after = await vault.state(name, resource)
        return LoginResult(name, tools, after.expires_at, after.refreshable)
    finally:
        await vault.close()


async def _connect(name: str, up: HttpUpstream, oauth: UpstreamOAuthClient, wait: float) -> int:
    try:
        async with httpx2.AsyncClient(
            headers=up.headers, auth=oauth, timeout=httpx2.Timeout(up.timeout, read=up.timeout + 5)
        ) as http:
            with anyio.fail_after(wait + up.timeout):
                async with Client(streamable_http_client(up.url, http_client=http)) as client:
                    return len((await client.list_tools()).tools)
    except UpstreamError:
        raise
    except BaseException as exc:  # the SDK's OAuth errors, a refused registration, the network
        found = _first(exc)
        if isinstance(found, UpstreamError | ConfigError):
            raise found from None
        if isinstance(found, anyio.get_cancelled_exc_class()):
            raise
        text = str(found).splitlines()[0][:300] if str(found) else ""
        raise UpstreamError(
            f"login to `{name}` failed: {type(found).__name__}"
            f"{': ' + oauth_scrub(text, oauth) if text else ''}; check the upstream's URL and "
            "its authorization server, then run it again"
        ) from None


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def oauth_scrub(text: str, oauth: UpstreamOAuthClient) -> str:
    for secret in oauth.storage.secrets():
        text = text.replace(secret, "***")
    return text
