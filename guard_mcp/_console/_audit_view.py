"""The audit view: calls (searchable), one request's whole timeline, and the chain's status.

Every page shows whether the log verifies and its newest signed checkpoint. Walking the chain costs
time in proportion to its length, so the status is the last full verification, redone in a worker
thread when the log has grown or `STATUS_TTL` passed (and at once with "verify now"); a page never
claims "intact" for a log it has not walked.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from guard_mcp._audit import HEAD_FILE, VerifyReport, connect_reader, load_audit_key, search, story, verify_log
from guard_mcp._console._security import check_csrf
from guard_mcp._errors import GuardError
from guard_mcp._keys import KeyStore

if TYPE_CHECKING:
    from guard_mcp._console._context import Console

__all__ = ["audit_page", "chain_status", "refresh_chain_status", "timeline", "verify_now"]

STATUS_TTL = 5.0  # seconds a verification result is shown before it is redone
MAX_CALLS = 200


@dataclass(frozen=True)
class ChainStatus:
    ok: bool
    text: str
    checked_at: float
    head_seq: int | None
    checkpoint_seq: int | None
    checkpoint_ts: float | None


_status: dict[str, ChainStatus] = {}


def chain_status(console: Console) -> ChainStatus | None:
    return _status.get(str(console.state.root))


def _head(conn: sqlite3.Connection) -> tuple[int | None, int | None, float | None]:
    seq = conn.execute("SELECT MAX(seq) FROM audit_events").fetchone()[0]
    cp = conn.execute("SELECT seq, ts FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
    return seq, (None if cp is None else cp[0]), (None if cp is None else cp[1] / 1000)


def _no_log_yet(console: Console) -> bool:
    """A state directory no guard has served yet: no events table, and no signed head kept outside."""
    if (console.state.root / HEAD_FILE).exists():
        return False
    try:
        conn = connect_reader(console.state.database)
    except GuardError:
        return True
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_events'").fetchone() is None
    finally:
        conn.close()


def _verify(console: Console) -> ChainStatus:
    state = console.state
    now = console.clock.now()
    if _no_log_yet(console):
        return ChainStatus(True, "empty: no guard has recorded anything here yet", now, None, None, None)
    try:
        keys = KeyStore(state.keys, console.clock)
        public = keys.public_keys(include_retired=True) if keys.exists() else {}
        report: VerifyReport = verify_log(
            state.database, hmac_key=load_audit_key(state), public_keys=public, head_file=state.root / HEAD_FILE
        )
        conn = connect_reader(state.database)
        try:
            head, cp_seq, cp_ts = _head(conn)
        finally:
            conn.close()
    except (GuardError, sqlite3.Error) as exc:
        return ChainStatus(False, f"BROKEN: cannot read the audit log: {exc}", now, None, None, None)
    if report.ok:
        return ChainStatus(True, f"intact: {report.message}", now, head, cp_seq, cp_ts)
    at = f" at seq {report.bad_seq}" if report.bad_seq is not None else ""
    return ChainStatus(False, f"BROKEN{at} ({report.problem}): {report.message}", now, head, cp_seq, cp_ts)


def _head_seq(console: Console) -> int | None:
    try:
        conn = connect_reader(console.state.database)
    except GuardError:
        return None
    try:
        return _head(conn)[0]
    except sqlite3.Error:
        return None
    finally:
        conn.close()


async def refresh_chain_status(console: Console, *, force: bool = False) -> ChainStatus:
    """Re-verify when asked, when the log grew, or when the last result is older than STATUS_TTL."""
    current = chain_status(console)
    if not force and current is not None and console.clock.now() - current.checked_at < STATUS_TTL:
        head = await anyio.to_thread.run_sync(_head_seq, console)
        if head == current.head_seq:
            return current
    status = await anyio.to_thread.run_sync(_verify, console)
    _status[str(console.state.root)] = status
    return status


def _read(console: Console, fn: Any, *args: Any, **kwargs: Any) -> Any:
    conn = connect_reader(console.state.database)
    try:
        return fn(conn, *args, **kwargs)
    finally:
        conn.close()


async def audit_page(console: Console, request: Request) -> Response:
    from guard_mcp._console._views import _signed_in

    session = await _signed_in(console, request)
    if isinstance(session, Response):
        return session
    query = (request.query_params.get("q") or "").strip()[:200]
    decision = request.query_params.get("decision")
    decision = decision if decision in ("allow", "deny", "approve") else None
    try:
        found = await anyio.to_thread.run_sync(lambda: _read(console, search, decision=decision))
    except GuardError:
        found = []
    if query:
        needle = query.lower()
        found = [
            c
            for c in found
            if needle
            in " ".join(str(v) for v in (c.request_id, c.tool, c.upstream, c.actor, c.reason, c.outcome) if v).lower()
        ]
    calls = list(reversed(found))[:MAX_CALLS]
    return await console.render("audit.html", request, session, calls=calls, q=query, decision=decision or "")


async def timeline(console: Console, request: Request) -> Response:
    from guard_mcp._console._views import _signed_in

    session = await _signed_in(console, request)
    if isinstance(session, Response):
        return session
    request_id = request.path_params["request_id"][:200]
    events = await anyio.to_thread.run_sync(lambda: _read(console, story, request_id))
    return await console.render("timeline.html", request, session, request_id=request_id, events=events)


async def verify_now(console: Console, request: Request) -> Response:
    from guard_mcp._console._auth import _form
    from guard_mcp._console._views import _signed_in

    session = await _signed_in(console, request)
    if isinstance(session, Response):
        return session
    form = await _form(request)
    if not check_csrf(request, session.csrf, form.get("csrf")):
        return await console.message(
            request, session, "Refused", "This form is out of date; reload the page.", status=403
        )
    await refresh_chain_status(console, force=True)
    return await audit_page(console, request)
