"""Permits whose outcome the log never got: found at start, written down as `call.unresolved`.

The request, decision and permit of a call are durable before the upstream is called; its result
is recorded after the upstream answers. A guard that crashed (or was killed) in between leaves a
permit with no outcome, and the upstream may have acted on it. A call cancelled while the
upstream holds its permit records its own `call.unresolved` (reason `cancelled`); for a crash, the
next start appends one `call.unresolved` (reason `guard_stopped`) per such permit, so the gap is
in the log rather than in nobody's knowledge.

Several guards may serve from one state directory (two clients each starting one). A permit
without an outcome is only unresolved when no guard is running that could still record it, so
every running guard holds a shared lock on `serve.lock`, and a start looks only when it can take
that lock exclusively (then keeps it shared). The look covers the permits after the
`reconciled_through` that the last looking start wrote into its `guard.start` event.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from guard_mcp._audit._events import EventIn
from guard_mcp._audit._store import connect_reader

try:
    import fcntl
except ImportError:  # not POSIX: no lock, no look (a permit's missing outcome stays implicit)
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock", "unresolved_permits"]

_HAS_OUTCOME = (
    "SELECT 1 FROM audit_events WHERE request_id = ? AND seq > ? "
    "AND type IN ('call.result', 'call.error', 'call.unresolved') LIMIT 1"
)


class RunLock:
    """A running guard's share of `serve.lock`; `sole` is True when no other guard was running."""

    def __init__(self, path: Path) -> None:
        self.sole = False
        self._fd: int | None = None
        if fcntl is None:
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.sole = True
            except BlockingIOError:
                fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while another start is looking
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def share(self) -> None:
        """Let other guards start (after the look)."""
        if self._fd is not None and self.sole:  # a descriptor is only held where fcntl exists
            fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def unresolved_permits(database: Path) -> tuple[list[EventIn], int]:
    """`call.unresolved` events for permits with no outcome (oldest first), and the newest seq looked at.

    Only for a start that holds `serve.lock` exclusively: any guard that issued them is gone.
    """
    conn = connect_reader(database)
    try:
        return _unresolved(conn)
    finally:
        conn.close()


def _reconciled_through(conn: sqlite3.Connection) -> int:
    # Walks back over guard.start events only (few), newest first.
    for (data,) in conn.execute("SELECT data FROM audit_events WHERE type = 'guard.start' ORDER BY seq DESC"):
        through = _field(data, "reconciled_through")
        if isinstance(through, int) and not isinstance(through, bool):
            return through
    return 0


def _field(data: Any, name: str) -> Any:
    try:
        doc = json.loads(data)
    except (TypeError, ValueError):
        return None
    return doc.get(name) if isinstance(doc, dict) else None


def _unresolved(conn: sqlite3.Connection) -> tuple[list[EventIn], int]:
    head = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0] or 0
    since = _reconciled_through(conn)
    found = []
    permits = conn.execute(
        "SELECT seq, request_id, actor, upstream, tool, data FROM audit_events "
        "WHERE seq > ? AND seq <= ? AND type = 'permit.issued' ORDER BY seq",
        (since, head),
    ).fetchall()
    for seq, request_id, actor, upstream, tool, data in permits:
        if request_id is None or conn.execute(_HAS_OUTCOME, (request_id, seq)).fetchone() is not None:
            continue
        jti = _field(data, "jti")
        found.append(
            EventIn(
                "call.unresolved",
                request_id=request_id,
                actor=actor,
                upstream=upstream,
                tool=tool,
                data={"reason": "guard_stopped", "jti": jti if isinstance(jti, str) else None, "permit_seq": seq},
            )
        )
    return found, head
