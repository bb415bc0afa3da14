"""The vault of upstream OAuth tokens, on both backends: sealed at rest, bound to the upstream and its URL."""

from __future__ import annotations

import pytest
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from guard_mcp._clock import FakeClock
from guard_mcp._identity import TokenVault
from guard_mcp._state import StateDir
from guard_mcp._store import Tx

pytestmark = pytest.mark.anyio

URL = "https://mcp.tracker.example/mcp"
ACCESS = "canary-access-" + "a" * 40
REFRESH = "canary-refresh-" + "r" * 40


async def test_tokens_round_trip_sealed_and_expire_on_the_guards_clock(state: StateDir, store_url: str | None) -> None:
    clock = FakeClock(1_800_000_000)
    vault = await TokenVault.open(state, clock, store=store_url)
    try:
        storage = vault.storage("tracker", URL)
        await storage.set_tokens(OAuthToken(access_token=ACCESS, refresh_token=REFRESH, expires_in=600))
        await storage.set_client_info(OAuthClientInformationFull(client_id="guard-client", client_secret="s" * 30))
        again = vault.storage("tracker", URL)
        tokens, client = await again.get_tokens(), await again.get_client_info()
        raw = await vault._row("tracker")
        login = await vault.state("tracker", URL)
    finally:
        await vault.close()
    assert tokens is not None and (tokens.access_token, tokens.refresh_token) == (ACCESS, REFRESH)
    assert client is not None and client.client_id == "guard-client"
    assert again.expires_at == 1_800_000_600 and login.logged_in and login.refreshable
    assert raw is not None
    sealed = b"".join(bytes(raw[k]) for k in ("tokens", "client"))
    assert ACCESS.encode() not in sealed and REFRESH.encode() not in sealed and b"guard-client" not in sealed


async def test_attack_tokens_moved_to_another_upstream_or_kept_for_another_url_do_not_open(
    state: StateDir, store_url: str | None
) -> None:
    vault = await TokenVault.open(state, FakeClock(), store=store_url)
    try:
        await vault.storage("tracker", URL).set_tokens(OAuthToken(access_token=ACCESS, expires_in=600))
        await vault.storage("other", "https://other.example/mcp").set_tokens(OAuthToken(access_token="x" * 20))

        async def move(tx: Tx) -> None:  # someone with the database copies tracker's sealed tokens onto `other`
            [(blob,)] = (await tx.execute("SELECT tokens FROM upstream_tokens WHERE upstream = ?", ("tracker",))).rows
            await tx.execute("UPDATE upstream_tokens SET tokens = ? WHERE upstream = ?", (blob, "other"))

        await vault._db.run(move)
        moved = await vault.storage("other", "https://other.example/mcp").get_tokens()
        other_url = await vault.storage("tracker", "https://evil.example/mcp").get_tokens()
        kept = await vault.storage("tracker", URL).get_tokens()
    finally:
        await vault.close()
    assert moved is None and other_url is None
    assert kept is not None and kept.access_token == ACCESS


async def test_a_refused_login_is_not_offered_again_until_a_new_one(state: StateDir, store_url: str | None) -> None:
    vault = await TokenVault.open(state, FakeClock(), store=store_url)
    try:
        storage = vault.storage("tracker", URL)
        await storage.set_tokens(OAuthToken(access_token=ACCESS, refresh_token=REFRESH, expires_in=600))
        await vault.note_login_required("tracker", "the authorization server refused to refresh the token")
        refused, noted = await storage.get_tokens(), await vault.state("tracker", URL)
        await storage.set_tokens(OAuthToken(access_token=ACCESS + "2", expires_in=600))
        renewed, after = await storage.get_tokens(), await vault.state("tracker", URL)
    finally:
        await vault.close()
    assert refused is None and not noted.logged_in and "refresh" in str(noted.note)
    assert renewed is not None and after.logged_in and after.note is None
