from __future__ import annotations

import sqlite3
import stat
from urllib.parse import parse_qs, urlparse

import pytest
from _approvals_support import backend_url, code_at, on_both_backends, open_store, tamper

from guard_mcp._approvals._approvers import LOCKOUT, MAX_FAILURES, STEP
from guard_mcp._clock import FakeClock
from guard_mcp._errors import ApprovalError
from guard_mcp._state import StateDir

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures(on_both_backends.__name__)]


async def test_enrol_returns_a_scannable_secret_and_lists_without_it(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        secret, uri = await store.approvers.enrol("bob", ["finance", "ops"])
        parsed = urlparse(uri)
        assert parsed.scheme == "otpauth" and parsed.netloc == "totp"
        assert parse_qs(parsed.query)["secret"] == [secret]
        assert parse_qs(parsed.query)["issuer"] == ["guard-mcp"]
        [bob] = await store.approvers.list()
        assert bob.name == "bob" and bob.groups == ("finance", "ops")
        assert secret not in repr(bob)


async def test_totp_secrets_are_sealed_at_rest(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("bob", "finance")
    assert secret.encode() not in state.database.read_bytes()
    wal = state.database.with_name(state.database.name + "-wal")
    if wal.exists():
        assert secret.encode() not in wal.read_bytes()
    key = state.keys / "approvers.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_a_sealed_secret_moved_to_another_approver_does_not_open(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        bob_secret, _ = await store.approvers.enrol("bob", "finance")
        await store.approvers.enrol("mallory", "finance")
    tamper(
        state,
        "UPDATE approval_approvers SET secret = (SELECT secret FROM approval_approvers WHERE name = 'bob') "
        "WHERE name = 'mallory'",
    )
    async with open_store(state, clock) as store:
        with pytest.raises(ApprovalError, match="cannot be read"):
            await store.approvers.verify("mallory", "finance", code_at(bob_secret, clock.now()))


async def test_verify_accepts_a_fresh_code_once(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("bob", "finance")
        code = code_at(secret, clock.now())
        await store.approvers.verify("bob", "finance", code)
        with pytest.raises(ApprovalError, match="already used"):
            await store.approvers.verify("bob", "finance", code)
        clock.advance(30)
        await store.approvers.verify("bob", "finance", code_at(secret, clock.now()))


async def test_verify_tolerates_one_step_of_drift_and_no_more(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("bob", "finance")
        with pytest.raises(ApprovalError, match="wrong or too old"):
            await store.approvers.verify("bob", "finance", code_at(secret, clock.now(), -2))
        await store.approvers.verify("bob", "finance", code_at(secret, clock.now(), +1))


@pytest.mark.parametrize(
    "code", ["", "12345", "1234567", "abcdef", "12 345", "\uff11\uff12\uff13\uff14\uff15\uff16", "123456\n"]
)
async def test_malformed_codes_are_refused(state: StateDir, clock: FakeClock, code: str) -> None:
    async with open_store(state, clock) as store:
        await store.approvers.enrol("bob", "finance")
        with pytest.raises(ApprovalError, match="6 digits"):
            await store.approvers.verify("bob", "finance", code)


async def test_wrong_group_unknown_approver_and_removal(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("bob", "finance")
        with pytest.raises(ApprovalError, match="not in group `hr`"):
            await store.approvers.verify("bob", "hr", code_at(secret, clock.now()))
        with pytest.raises(ApprovalError, match="already enrolled"):
            await store.approvers.enrol("bob", "finance")
        await store.approvers.remove("bob")
        with pytest.raises(ApprovalError, match="not enrolled"):
            await store.approvers.verify("bob", "finance", code_at(secret, clock.now()))
        with pytest.raises(ApprovalError, match="not enrolled"):
            await store.approvers.remove("bob")
        assert await store.approvers.list() == []


@pytest.mark.parametrize("name", ["", "bob smith", "bob\n", "-bob", "b" * 65, "bob;drop"])
async def test_bad_names_are_refused(state: StateDir, clock: FakeClock, name: str) -> None:
    async with open_store(state, clock) as store:
        with pytest.raises(ApprovalError, match="not a valid name"):
            await store.approvers.enrol(name, "finance")
        with pytest.raises(ApprovalError, match="not a valid name"):
            await store.approvers.enrol("bob", name)


def _wrong(secret: str, now: float) -> str:
    window = {code_at(secret, now, k) for k in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(10)) if c not in window)


async def test_guessing_codes_locks_the_approver_for_a_while(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store, open_store(state, clock) as other_process:
        secret, _ = await store.approvers.enrol("bob", "finance")
        for attempt in range(MAX_FAILURES):
            target = store if attempt % 2 else other_process  # the count is shared, not per process
            with pytest.raises(ApprovalError, match="wrong"):
                await target.approvers.verify("bob", "finance", _wrong(secret, clock.now()))
        with pytest.raises(ApprovalError, match="locked"):
            await store.approvers.verify("bob", "finance", code_at(secret, clock.now()))
        clock.advance(LOCKOUT)
        await store.approvers.verify("bob", "finance", code_at(secret, clock.now()))


async def test_a_right_code_resets_the_count_of_wrong_ones(state: StateDir, clock: FakeClock) -> None:
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("bob", "finance")
        for _ in range(2):
            for _ in range(MAX_FAILURES - 1):
                with pytest.raises(ApprovalError, match="wrong"):
                    await store.approvers.verify("bob", "finance", _wrong(secret, clock.now()))
            await store.approvers.verify("bob", "finance", code_at(secret, clock.now()))
            clock.advance(STEP)


async def test_a_database_from_before_the_lockout_columns_is_upgraded(state: StateDir, clock: FakeClock) -> None:
    if backend_url() is not None:
        pytest.skip("no PostgreSQL database holds approval tables from before the lockout columns")
    with sqlite3.connect(state.database) as conn:
        conn.execute(
            "CREATE TABLE approval_approvers (name TEXT PRIMARY KEY, groups TEXT NOT NULL, secret BLOB NOT NULL, "
            "created REAL NOT NULL, last_step INTEGER NOT NULL DEFAULT -1)"
        )
    async with open_store(state, clock) as store:
        secret, _ = await store.approvers.enrol("bob", "finance")
        await store.approvers.verify("bob", "finance", code_at(secret, clock.now()))
