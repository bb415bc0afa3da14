"""The secrets in a new state directory are created once, whoever starts first.

A guard and `guard-mcp approvals approve` (or two guard instances) often start together on a new
state directory. Each one that wrote its own key would leave the other MAC'ing audit events or
sealing paused calls with a key that is then gone: the next writer calls the log forged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from guard_mcp._audit import _store as audit_store
from guard_mcp._clock import FakeClock
from guard_mcp._request_state import RequestStateSealer
from guard_mcp._state import StateDir

T = TypeVar("T")


def test_the_audit_key_another_process_made_first_is_the_one_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "state").ensure()
    theirs = bytes(range(32))
    looked: list[int] = []

    def not_there_yet(state: StateDir) -> bytes | None:  # ours looked; then theirs was written
        looked.append(1)
        (state.keys / audit_store.AUDIT_KEY_FILE).write_bytes(theirs)
        return None

    monkeypatch.setattr(audit_store, "load_audit_key", not_there_yet)
    assert audit_store.ensure_audit_key(state) == theirs
    assert looked and (state.keys / audit_store.AUDIT_KEY_FILE).read_bytes() == theirs


def _at_once(n: int, make: Callable[[], T]) -> list[T]:
    """`make()` in `n` threads released together."""
    barrier = threading.Barrier(n)
    made: list[T] = []

    def run() -> None:
        barrier.wait()
        made.append(make())

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return made


@pytest.mark.parametrize("round_", range(5))
def test_audit_keys_made_at_once_are_one_key(tmp_path: Path, round_: int) -> None:
    state = StateDir(tmp_path / "state").ensure()
    keys = _at_once(8, lambda: audit_store.ensure_audit_key(state))
    assert len(set(keys)) == 1
    assert keys[0] == (state.keys / audit_store.AUDIT_KEY_FILE).read_bytes()


@pytest.mark.parametrize("round_", range(5))
def test_request_state_sealers_made_at_once_open_each_others_state(tmp_path: Path, round_: int) -> None:
    state = StateDir(tmp_path / "state").ensure()
    clock = FakeClock()
    sealers = _at_once(8, lambda: RequestStateSealer(state, clock, 60))
    call: dict[str, Any] = {
        "tool": "shop__refund",
        "payload_hash": "h",
        "policy": "p",
        "principal": "local:ana",
        "session": None,
    }

    async def each_opens_the_next_ones() -> None:
        for i, sealer in enumerate(sealers):
            token = sealer.seal(approval_id=f"apr_{i}", deadline=clock.now() + 60, asked="form", **call)
            other = sealers[(i + 1) % len(sealers)]
            try:
                opened = await other.open(token, **call)
            finally:
                await other.close()
            assert opened.approval_id == f"apr_{i}"

    anyio.run(each_opens_the_next_ones)
