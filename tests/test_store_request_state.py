"""A sealed `requestState` is used once, on both backends; on PostgreSQL once across guard instances, so a
2026-07-28 retry that lands on another instance succeeds once and is refused the second time."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

from guard_mcp._clock import FakeClock
from guard_mcp._request_state import RequestStateError, RequestStateSealer, SealedState
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

CALL = {"tool": "mail__echo", "payload_hash": "h1", "policy": "p@1", "principal": "agent", "session": None}


def seal(sealer: RequestStateSealer, clock: FakeClock) -> str:
    return sealer.seal(approval_id="apr_1", deadline=clock.now() + 600, asked="form", **CALL)  # type: ignore[arg-type]


async def use(sealer: RequestStateSealer, token: str) -> SealedState | str:
    try:
        return await sealer.open(token, **CALL)  # type: ignore[arg-type]
    except RequestStateError as exc:
        return exc.reason


def instance(
    root: Path, name: str, clock: FakeClock, store: str | None, key_from: StateDir | None = None
) -> RequestStateSealer:
    state = StateDir(root / name).ensure()
    if key_from is not None:  # the instances of one fleet share the sealing key
        shutil.copy(key_from.keys / "request-state.key", state.keys / "request-state.key")
    return RequestStateSealer(state, clock, ttl=300, store=store)


async def test_a_request_state_is_used_once(store_url: str | None, state: StateDir, clock: FakeClock) -> None:
    sealer = RequestStateSealer(state, clock, ttl=300, store=store_url)
    try:
        token = seal(sealer, clock)
        first = await use(sealer, token)
        assert isinstance(first, SealedState) and first.approval_id == "apr_1"
        assert await use(sealer, token) == "request_state_replayed"
        assert isinstance(await use(sealer, seal(sealer, clock)), SealedState)  # another seal is another nonce
    finally:
        await sealer.close()


async def test_a_retry_sealed_by_one_instance_succeeds_once_on_another(
    tmp_path: Path, clock: FakeClock, pg_url: str
) -> None:
    a = instance(tmp_path, "a", clock, pg_url)
    b = instance(tmp_path, "b", clock, pg_url, key_from=StateDir(tmp_path / "a"))
    try:
        for _ in range(5):
            token = seal(a, clock)
            results: list[SealedState | str] = []

            async def attempt(
                sealer: RequestStateSealer, token: str = token, out: list[SealedState | str] = results
            ) -> None:
                out.append(await use(sealer, token))

            async with anyio.create_task_group() as tg:  # the client retries on both at once
                for sealer in (a, b, a, b):
                    tg.start_soon(attempt, sealer)
            assert sum(isinstance(r, SealedState) for r in results) == 1
            assert [r for r in results if not isinstance(r, SealedState)] == ["request_state_replayed"] * 3
    finally:
        await a.close()
        await b.close()


async def test_a_store_that_cannot_be_reached_refuses_the_retry(state: StateDir, clock: FakeClock) -> None:
    sealer = RequestStateSealer(state, clock, ttl=300, store="postgresql://guard:pw-s3cret@127.0.0.1:1/guard")
    try:
        with pytest.raises(RequestStateError) as caught:
            await sealer.open(seal(sealer, clock), **CALL)  # type: ignore[arg-type]
        assert caught.value.reason == "store_unavailable"
        assert "pw-s3cret" not in str(caught.value) and "\n" not in str(caught.value)
    finally:
        await sealer.close()
