"""The guard as an OAuth client of a remote MCP upstream, against a real OpenID provider on loopback."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import jwt
import pytest
from guard_kit import config_from, reason_of, running_guard, text_of
from identity_kit import INIT, MCP_HEADERS, free_port, loopback_certificate, serve_app, wait_until_served
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from oauth_kit import Browser, OAuthUpstream, Op, running_op, running_upstream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from guard_mcp._clock import FakeClock
from guard_mcp._config import GuardConfig, HttpAuthConfig, HttpServeConfig
from guard_mcp._identity import TokenVault, login, login_states
from guard_mcp._state import StateDir
from guard_mcp._transports import bind_http, serve_http

pytestmark = [pytest.mark.anyio, pytest.mark.subprocess]

READ = "{category: read, reversibility: full, blast_radius: single, sensitivity: public}"


@dataclass
class World:
    op: Op
    upstream: OAuthUpstream
    config: GuardConfig
    state: StateDir
    clock: FakeClock
    browser: Browser


# How the guard talks to the upstream: a 2025-11-25 server (initialize, a session) or one of the
# 2026-07-28 era too (stateless requests, each carrying its protocol version), with what each sends.
ERAS = {"handshake": {"2025-11-25 session"}, "2026": {"2026-07-28"}}
CLIENT_MODE = {"handshake": "legacy", "2026": "auto"}  # and the client calling the guard speaks the same era


@pytest.fixture(params=list(ERAS))
def era(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def world(state: StateDir, *, ttl: int = 600, era: str = "2026") -> AsyncIterator[World]:
    async with running_op(access_token_ttl=ttl) as op, running_upstream(op, era=era) as upstream:
        config = config_from(
            f"""
upstreams:
  remote:
    url: {upstream.url}
    auth: {{type: oauth, scope: mcp}}
    tools:
      whoami: {READ}
      echo_auth: {READ}
""",
            state,
        )
        yield World(op, upstream, config, state, FakeClock(time.time()), Browser())


async def _login(w: World) -> None:
    result = await login(w.config, w.state, "remote", clock=w.clock, open_url=w.browser.open, wait=30)
    assert result.tools == 2 and result.refreshable
    # The login's first request goes without a token on purpose (its 401 starts the discovery);
    # from here on, everything the upstream is sent comes from the guard.
    w.upstream.headers_seen.clear()


async def test_login_then_a_call_through_the_guard_runs_as_the_signed_in_user(state: StateDir, era: str) -> None:
    async with world(state, era=era) as w:
        await _login(w)
        [url] = w.browser.visited
        assert "code_challenge_method=S256" in url and "resource=" in url  # PKCE, RFC 8707
        async with (
            running_guard(w.config, state, clock=w.clock) as guard,
            Client(guard.server, mode=CLIENT_MODE[era]) as client,
        ):
            result = await client.call_tool("remote__whoami", {})
    assert text_of(result) == "you are alice", text_of(result)
    assert w.upstream.eras() == ERAS[era] and w.upstream.unauthenticated() == []


async def _stored(w: World) -> tuple[str, str, str]:
    """The access and refresh tokens the vault holds for `remote`, and the registered client's id."""
    vault = await TokenVault.open(w.state, w.clock)
    try:
        storage = vault.storage("remote", w.upstream.url)
        tokens, client = await storage.get_tokens(), await storage.get_client_info()
    finally:
        await vault.close()
    assert tokens is not None and tokens.refresh_token and client is not None
    return tokens.access_token, tokens.refresh_token, client.client_id


async def test_tokens_are_sealed_at_rest_and_check_lists_the_login(state: StateDir) -> None:
    async with world(state) as w:
        await _login(w)
        access, refresh, _ = await _stored(w)
        states = await login_states(w.config, state, w.clock)
    raw = b"".join(p.read_bytes() for p in state.root.rglob("*") if p.is_file())
    assert access.encode() not in raw and refresh.encode() not in raw
    login = states["remote"]
    assert login.logged_in and login.refreshable and login.expires_at == pytest.approx(w.clock.now() + 600, abs=5)


async def test_a_token_is_refreshed_before_it_expires(state: StateDir, era: str) -> None:
    async with world(state, era=era) as w:
        await _login(w)
        first, _, _ = await _stored(w)
        async with (
            running_guard(w.config, state, clock=w.clock) as guard,
            Client(guard.server, mode=CLIENT_MODE[era]) as client,
        ):
            await client.call_tool("remote__whoami", {})
            w.clock.advance(600 - 30)  # inside the last minute: refreshed ahead of the expiry
            result = await client.call_tool("remote__whoami", {})
            second, _, _ = await _stored(w)
            w.clock.advance(3600)  # long past the expiry (a guard asleep for an hour): refreshed all the same
            late = await client.call_tool("remote__whoami", {})
        third, _, _ = await _stored(w)
    assert text_of(result) == text_of(late) == "you are alice"
    assert second != first and third not in (first, second) and w.upstream.tokens_seen[-1] == third
    assert w.upstream.unauthenticated() == [] and w.upstream.eras() == ERAS[era]


async def test_attack_a_revoked_refresh_token_denies_every_call_until_a_new_login(state: StateDir, era: str) -> None:
    async with world(state, era=era) as w:
        await _login(w)
        _, refresh, client_id = await _stored(w)
        async with (
            running_guard(w.config, state, clock=w.clock) as guard,
            Client(guard.server, mode=CLIENT_MODE[era]) as client,
        ):
            assert text_of(await client.call_tool("remote__whoami", {})) == "you are alice"
            await w.op.revoke(refresh, client_id)
            w.clock.advance(601)
            seen = len(w.upstream.headers_seen)
            refused = [await client.call_tool("remote__whoami", {}) for _ in range(3)]
            assert [reason_of(r) for r in refused] == ["upstream_auth_required"] * 3
            assert all("guard-mcp login remote" in text_of(r) for r in refused)
            # nothing reached the upstream without a token, and no call ran
            assert w.upstream.unauthenticated() == [] and w.upstream.subjects == ["alice"]
            assert len(w.upstream.headers_seen) == seen
            states = await login_states(w.config, state, w.clock)
            assert not states["remote"].logged_in and "refresh" in str(states["remote"].note)
            await _login(w)  # the user logs in again; the guard picks it up on its next attempt
            with anyio.fail_after(20):
                while reason_of(result := await client.call_tool("remote__whoami", {})) == "upstream_auth_required":  # noqa: ASYNC110 - the supervisor retries on its own clock
                    await anyio.sleep(0.1)
        assert text_of(result) == "you are alice" and w.upstream.eras() == ERAS[era]
    with sqlite3.connect(state.database) as conn:
        reasons = [
            r
            for (r,) in conn.execute(
                "SELECT json_extract(data, '$.reason') FROM audit_events WHERE type IN ('call.invalid', 'call.error')"
            )
        ]
    assert reasons.count("upstream_auth_required") >= 3


async def test_a_guard_that_was_never_logged_in_says_so_and_sends_nothing(state: StateDir) -> None:
    async with (
        world(state) as w,
        running_guard(w.config, state, clock=w.clock) as guard,
        Client(guard.server) as client,
    ):
        with anyio.fail_after(10):
            while guard.upstreams.login_needed("remote") is None:  # noqa: ASYNC110 - the first connection attempt says
                await anyio.sleep(0.05)
        result = await client.call_tool("remote__whoami", {})
    assert reason_of(result) == "upstream_auth_required" and "guard-mcp login remote" in text_of(result)
    assert w.upstream.headers_seen == []  # not even an unauthenticated initialize


async def _client_token(op: Op, resource: str) -> str:
    """An access token the provider issues a machine client for the guard (client credentials, RFC 8707)."""
    reg = await op.http.post(
        f"{op.issuer}/reg",
        json={
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "token_endpoint_auth_method": "client_secret_post",
        },
    )
    assert reg.status_code == 201, reg.text
    client = reg.json()
    answer = await op.http.post(
        f"{op.issuer}/token",
        data={
            "grant_type": "client_credentials",
            "scope": "mcp",
            "resource": resource,
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def test_attack_no_token_crosses_the_guard_in_either_direction(
    state: StateDir, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with world(state) as w:
        await _login(w)
        upstream_access, upstream_refresh, _ = await _stored(w)
        config = w.config.model_copy(
            update={
                "guard": w.config.guard.model_copy(
                    update={"http": HttpServeConfig(auth=HttpAuthConfig(issuer=w.op.issuer))}
                )
            }
        )
        async with running_guard(config, state, clock=w.clock) as guard:
            sock = bind_http("127.0.0.1", 0)
            base = f"http://127.0.0.1:{sock.getsockname()[1]}"
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: serve_http(guard, sock, host="127.0.0.1", token=None))
                await wait_until_served(base)
                client_token = await _client_token(w.op, f"{base}/mcp")  # the canary the client holds
                outputs = []
                async with (
                    httpx2.AsyncClient(headers={"authorization": f"Bearer {client_token}"}) as http,
                    Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
                ):
                    for tool in ("remote__whoami", "remote__echo_auth"):
                        result = await client.call_tool(tool, {})
                        outputs.append(result.model_dump_json())
                # the client's own copy of an upstream token gets it nowhere
                async with httpx2.AsyncClient() as http:
                    offered = await http.post(
                        f"{base}/mcp",
                        json=INIT,
                        headers={**MCP_HEADERS, "authorization": f"Bearer {w.upstream.tokens_seen[-1]}"},
                    )
                tg.cancel_scope.cancel()
    assert "you are alice" in outputs[0] and "rejected credential" in outputs[1]
    assert offered.status_code == 401
    # the guard's caller token never reached the upstream, in any header of any request
    assert all(client_token not in value for h in w.upstream.headers_seen for value in h.values())
    with sqlite3.connect(state.database) as conn:
        audit = "\n".join(d for (d,) in conn.execute("SELECT data FROM audit_events"))
    # Everything logged in this process but the upstream's own tool logger (the upstream runs in-process here;
    # what it logs about its own credential is not the guard's to keep).
    logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mcp.server.mcpserver"))
    for canary in (client_token, upstream_access, upstream_refresh, *w.upstream.tokens_seen):
        assert canary not in "\n".join(outputs)
        assert canary not in audit
        assert canary not in logs


async def test_a_guard_started_after_its_token_expired_refreshes_before_sending_it(state: StateDir) -> None:
    async with world(state) as w:
        await _login(w)
        first, _, _ = await _stored(w)
        w.upstream.tokens_seen.clear()
        w.clock.advance(601)  # the guard was down while the token expired
        async with running_guard(w.config, state, clock=w.clock) as guard, Client(guard.server) as client:
            result = await client.call_tool("remote__whoami", {})
        second, _, _ = await _stored(w)
    assert text_of(result) == "you are alice"
    assert second != first and first not in w.upstream.tokens_seen


async def _plant(w: World, access: str, refresh: str | None = None) -> None:
    """Replace the tokens the vault holds (someone edits the store, or the provider rotated its keys)."""
    vault = await TokenVault.open(w.state, w.clock)
    try:
        storage = vault.storage("remote", w.upstream.url)
        held = await storage.get_tokens()
        assert held is not None
        planted = {"access_token": access, "refresh_token": refresh or held.refresh_token}
        await storage.set_tokens(held.model_copy(update=planted))
    finally:
        await vault.close()


async def test_attack_an_access_token_the_upstream_refuses_is_refreshed_once_then_fails_closed(
    state: StateDir, era: str
) -> None:
    async with world(state, era=era) as w:
        await _login(w)
        forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0."  # alg none, subject mallory: never accepted
        await _plant(w, forged)
        async with (
            running_guard(w.config, state, clock=w.clock) as guard,
            Client(guard.server, mode=CLIENT_MODE[era]) as client,
        ):
            recovered = await client.call_tool("remote__whoami", {})
        renewed, _, _ = await _stored(w)
        assert text_of(recovered) == "you are alice" and renewed != forged
        assert w.upstream.tokens_seen.count(forged) == 1  # refused once, then refreshed; not sent again
        await _plant(w, forged, refresh="not-a-refresh-token")
        seen = len(w.upstream.headers_seen)
        async with (
            running_guard(w.config, state, clock=w.clock) as guard,
            Client(guard.server, mode=CLIENT_MODE[era]) as client,
        ):
            with anyio.fail_after(10):
                while guard.upstreams.login_needed("remote") is None:  # noqa: ASYNC110 - the connection attempt says
                    await anyio.sleep(0.05)
            refused = [await client.call_tool("remote__whoami", {}) for _ in range(2)]
        states = await login_states(w.config, state, w.clock)
    assert [reason_of(r) for r in refused] == ["upstream_auth_required"] * 2
    assert all("guard-mcp login remote" in text_of(r) for r in refused)
    assert w.upstream.subjects == ["alice"] and w.upstream.unauthenticated() == []
    assert all(h.get("authorization") == f"Bearer {forged}" for h in w.upstream.headers_seen[seen:])
    assert not states["remote"].logged_in and "refresh" in str(states["remote"].note)


async def test_a_client_named_by_its_metadata_document_logs_in_without_registering(
    state: StateDir, tmp_path: Path
) -> None:
    cert, key = loopback_certificate(tmp_path)
    port = free_port()
    url = f"https://127.0.0.1:{port}/oauth/guard-client.json"
    fetched: list[str] = []

    async def document(request: Request) -> JSONResponse:  # what the operator publishes for the guard
        fetched.append(str(request.url))
        return JSONResponse(
            {
                "client_id": url,
                "client_name": "guard-mcp",
                "application_type": "native",
                "redirect_uris": ["http://127.0.0.1/callback"],  # any loopback port (RFC 8252)
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            }
        )

    site = Starlette(routes=[Route("/oauth/guard-client.json", document)])
    async with (
        serve_app(site, port, tls=(cert, key)),
        running_op(trust=cert) as op,
        running_upstream(op) as upstream,
    ):
        config = config_from(
            f"""
upstreams:
  remote:
    url: {upstream.url}
    auth: {{type: oauth, scope: mcp, client_metadata_url: "{url}"}}
    tools:
      whoami: {READ}
""",
            state,
        )
        w = World(op, upstream, config, state, FakeClock(time.time()), Browser())
        result = await login(w.config, w.state, "remote", clock=w.clock, open_url=w.browser.open, wait=30)
        _, _, client_id = await _stored(w)
        async with running_guard(w.config, state, clock=w.clock) as guard, Client(guard.server) as client:
            called = await client.call_tool("remote__whoami", {})
    assert result.refreshable and text_of(called) == "you are alice"
    assert client_id == url and fetched  # the provider read the document; nothing was registered
    assert jwt.decode(upstream.tokens_seen[-1], options={"verify_signature": False})["client_id"] == url
