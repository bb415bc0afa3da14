"""The tamper-evident audit log: append (pipeline), verify, query and export (CLI).

Layout: `_events` (what goes in and comes out), `_chain` (the hashed bytes), `_checkpoint` (signed
heads), `_store` (tables, connections, deployment key), `_writer` (the group-commit thread),
`_head` (the head a writer left, and the events of other writers it follows from there),
`_log` (`AuditLog`, the async face), `_reconcile` (permits a stopped guard left open), `_redact`,
`_verify`, `_query` and `_export` (read side), `_anchor` (signed heads kept elsewhere, checked by verify).
"""

from __future__ import annotations

from guard_mcp._audit._events import EVENT_TYPES, AuditEvent, EventIn
from guard_mcp._audit._log import AuditLog
from guard_mcp._audit._reconcile import RunLock, unresolved_permits
from guard_mcp._audit._store import connect_reader, ensure_audit_key, load_audit_key
from guard_mcp._audit._verify import VerifyReport, verify_log

__all__ = [
    "EVENT_TYPES",
    "AuditEvent",
    "AuditLog",
    "EventIn",
    "RunLock",
    "VerifyReport",
    "connect_reader",
    "ensure_audit_key",
    "load_audit_key",
    "unresolved_permits",
    "verify_log",
]
