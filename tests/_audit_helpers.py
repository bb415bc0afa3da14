"""Shared set-up for the audit tests: a key store, an opened log, and an attacker's toolkit."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from guard_mcp._audit import AuditLog, EventIn
from guard_mcp._audit._chain import canonical_event, chain_hash, event_mac
from guard_mcp._clock import FakeClock
from guard_mcp._config import AuditConfig
from guard_mcp._keys import KeyStore
from guard_mcp._state import StateDir


def key_store(state: StateDir, clock: FakeClock) -> KeyStore:
    keys = KeyStore(state.keys, clock)
    keys.ensure()
    return keys


async def open_log(state: StateDir, clock: FakeClock, keys: KeyStore | None = None, **config: object) -> AuditLog:
    keys = keys or key_store(state, clock)
    return await AuditLog.open(state, clock=clock, keys=keys, config=AuditConfig.model_validate(config))


def call_story(request_id: str, *, tool: str = "refund", effect: str = "allow", actor: str = "alice") -> list[EventIn]:
    """The events one auto-allowed call writes."""
    event = partial(EventIn, request_id=request_id, actor=actor, upstream="shop", tool=tool)
    return [
        event("call.received", data={"arguments": {"customer_id": "c-1", "amount": 42}}),
        event("call.decided", data={"effect": effect, "reason": "within_limit", "policy": "shop@1"}),
        event("permit.issued", data={"jti": f"j-{request_id}", "exp": 1_800_000_300}),
    ]


async def filled_log(state: StateDir, clock: FakeClock, calls: int = 10, **config: object) -> KeyStore:
    """A closed log with `calls` auto-allowed calls (4 events each) and a final checkpoint."""
    keys = key_store(state, clock)
    log = await open_log(state, clock, keys, **config)
    for i in range(calls):
        await log.append_many(call_story(f"r{i}"))
        clock.advance(0.5)
        await log.append(EventIn("call.result", f"r{i}", "alice", "shop", "refund", {"ok": True}))
    await log.close()
    return keys


def connect(state: StateDir) -> sqlite3.Connection:
    """A raw connection to the guard's database, as an attacker or another module would hold one."""
    return sqlite3.connect(state.database, isolation_level=None)


@contextmanager
def db(state: StateDir) -> Iterator[sqlite3.Connection]:
    conn = connect(state)
    try:
        yield conn
    finally:
        conn.close()


COLUMNS = "seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac"


def rechain(conn: sqlite3.Connection, from_seq: int, mac_key: bytes) -> None:
    """What an attacker who knows the algorithm (but maybe not the key) does after an edit:
    recompute every hash from `from_seq` on, and MAC with whatever key they have."""
    prev_hex = conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (from_seq - 1,)).fetchone()
    prev = bytes.fromhex(prev_hex[0]) if prev_hex else bytes(32)
    rows = conn.execute(f"SELECT {COLUMNS} FROM audit_events WHERE seq >= ? ORDER BY seq", (from_seq,)).fetchall()
    for seq, ts, type_, rid, actor, upstream, tool, data, *_ in rows:
        digest = chain_hash(prev, canonical_event(seq, ts, type_, rid, actor, upstream, tool, data))
        conn.execute(
            "UPDATE audit_events SET prev_hash = ?, hash = ?, mac = ? WHERE seq = ?",
            (prev.hex(), digest.hex(), event_mac(mac_key, digest).hex(), seq),
        )
        prev = digest


def head_file(state: StateDir) -> Path:
    return state.root / "audit.head.json"
