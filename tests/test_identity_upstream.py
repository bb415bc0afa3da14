"""The guard as an OAuth client of a remote MCP upstream, against a real OpenID provider on loopback."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest
from mcp import Client

from guard_mcp._clock import FakeClock
from guard_mcp._config import GuardConfig
from guard_mcp._identity import TokenVault, login, login_states
from guard_mcp._state import StateDir
from tests.guard_kit import config_from, reason_of, running_guard, text_of
from tests.oauth_kit import Browser, OAuthUpstream, Op, running_op, running_upstream

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


@contextlib.asynccontextmanager
async def world(state: StateDir, *, ttl: int = 600) -> AsyncIterator[World]:
    async with running_op(access_token_ttl=ttl) as op, running_upstream(op) as upstream:
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


async def test_login_then_a_call_through_the_guard_runs_as_the_signed_in_user(state: StateDir) -> None:
    async with world(state) as w:
        await _login(w)
        [url] = w.browser.visited
        assert "code_challenge_method=S256" in url and "resource=" in url  # PKCE, RFC 8707
        async with running_guard(w.config, state, clock=w.clock) as guard, Client(guard.server) as client:
            result = await client.call_tool("remote__whoami", {})
    assert text_of(result) == "you are alice", text_of(result)


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


async def test_a_token_is_refreshed_before_it_expires(state: StateDir) -> None:
    async with world(state) as w:
        await _login(w)
        first, _, _ = await _stored(w)
        async with running_guard(w.config, state, clock=w.clock) as guard, Client(guard.server) as client:
            await client.call_tool("remote__whoami", {})
            w.clock.advance(600 - 30)  # inside the last minute: refreshed ahead of the expiry
            result = await client.call_tool("remote__whoami", {})
        second, _, _ = await _stored(w)
    assert text_of(result) == "you are alice"
    assert second != first and w.upstream.tokens_seen[-1] == second
    assert w.upstream.unauthenticated() == []


async def test_attack_a_revoked_refresh_token_denies_every_call_until_a_new_login(state: StateDir) -> None:
    async with world(state) as w:
        await _login(w)
        _, refresh, client_id = await _stored(w)
        async with running_guard(w.config, state, clock=w.clock) as guard, Client(guard.server) as client:
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
        assert text_of(result) == "you are alice"
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
