"""The tamper-evident audit log: append (pipeline), verify, query and export (CLI).

Layout: `_events` (what goes in and comes out), `_chain` (the hashed bytes), `_checkpoint` (signed
heads), `_store` (tables, connections, deployment key), `_writer` (the group-commit thread),
`_head` (the head a writer left, and the events of other writers it follows from there),
`_log` (`AuditLog`, the async face), `_reconcile` (permits a stopped guard left open), `_redact`,
`_verify`, `_query` and `_export` (read side), `_anchor` (signed heads kept elsewhere, checked by verify).
"""

from __future__ import annotations

from guard_mcp._audit._anchor import anchor_for, read_anchor
from guard_mcp._audit._checkpoint import public_key_from_jwk
from guard_mcp._audit._events import EVENT_TYPES, AuditEvent, EventIn
from guard_mcp._audit._export import export_jsonl, verify_export
from guard_mcp._audit._log import HEAD_FILE, AuditLog, seal_head
from guard_mcp._audit._ocsf import export_ocsf, is_ocsf, verify_ocsf
from guard_mcp._audit._query import (
    ApprovalSummary,
    CallSummary,
    approval_story,
    event_at,
    event_intact,
    follow,
    search,
    stats,
    story,
    summarize,
    summarize_approval,
    tail,
)
from guard_mcp._audit._reconcile import RunLock, unresolved_permits
from guard_mcp._audit._store import connect_reader, ensure_audit_key, load_audit_key
from guard_mcp._audit._verify import VerifyReport, read_head_file, trusted_keys, verify_log

__all__ = [
    "EVENT_TYPES",
    "HEAD_FILE",
    "ApprovalSummary",
    "AuditEvent",
    "AuditLog",
    "CallSummary",
    "EventIn",
    "RunLock",
    "VerifyReport",
    "anchor_for",
    "approval_story",
    "connect_reader",
    "ensure_audit_key",
    "event_at",
    "event_intact",
    "export_jsonl",
    "export_ocsf",
    "follow",
    "is_ocsf",
    "load_audit_key",
    "public_key_from_jwk",
    "read_anchor",
    "read_head_file",
    "seal_head",
    "search",
    "stats",
    "story",
    "summarize",
    "summarize_approval",
    "tail",
    "trusted_keys",
    "unresolved_permits",
    "verify_export",
    "verify_log",
    "verify_ocsf",
]
