"""The tamper-evident audit log: append (pipeline), verify, query and export (CLI).

Layout: `_events` (what goes in and comes out), `_chain` (the hashed bytes), `_checkpoint` (signed
heads), `_store` (tables, connections, deployment key), `_writer` (the group-commit thread),
`_head` (the head a writer left, and the events of other writers it follows from there),
`_log` (`AuditLog`, the async face), `_reconcile` (permits a stopped guard left open), `_redact`,
`_verify`, `_query` and `_export` (read side), `_anchor` (signed heads kept elsewhere, checked by verify).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guard_mcp._audit._events import EVENT_TYPES, AuditEvent, EventIn
from guard_mcp._audit._reconcile import RunLock, unresolved_permits
from guard_mcp._audit._store import ensure_audit_key, load_audit_key
from guard_mcp._audit._verify import VerifyReport, verify_log

if TYPE_CHECKING:
    from guard_mcp._audit._log import AuditLog

__all__ = [
    "EVENT_TYPES",
    "AuditEvent",
    "AuditLog",
    "EventIn",
    "RunLock",
    "VerifyReport",
    "ensure_audit_key",
    "load_audit_key",
    "unresolved_permits",
    "verify_log",
]


def __getattr__(name: str) -> Any:
    # The writer (asyncio, its commit thread, the config's audit section) loads on first use: the
    # commands that only read the log (`guard-mcp audit tail`, `audit verify`) never need it.
    if name == "AuditLog":
        from guard_mcp._audit._log import AuditLog

        return AuditLog
    raise AttributeError(f"module `guard_mcp._audit` has no attribute `{name}`")
