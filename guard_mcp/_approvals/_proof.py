"""Decision records: the guard's own proof that a decision was made, which a database writer cannot forge.

An approval row saying `approved`, or a grant row, is only a claim: anyone who can write `guard.db`
can write one. What makes it an authorisation is its record, an HMAC-SHA256 under the decision key
(`<state>/keys/decisions.key`, guard_mcp/_keys.py), which the database never holds. The record is
written in the same transaction as the decision and binds everything a consumer relies on:

- an approval's id, request id, tool, principal, session, payload hash, deadline, step-up flag and
  owner group, the effect, the approver, the factor that authenticated them and the decision time;
- a grant's id, session, tool or group, who granted it, the factor, its start and its expiry.

The factor says what stood behind the approver's name: `totp` (a named approver's code, checked in
the deciding transaction), `in-band` (a click in the agent's own client, attested only by that
client), `cli` (whoever can run `guard-mcp` on the state directory), `passkey` (a WebAuthn assertion
made in the console for this approval and payload), `console` (a signed-in console session, no fresh
factor). A step-up approval needs `totp` or `passkey`. A record proves a row is what the guard
wrote; it cannot prove a row is the newest one the guard wrote (a restored older copy of a row verifies): that needs evidence outside the database, such as the audit log.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from guard_mcp._canonical import canonical_json
from guard_mcp._errors import ApprovalError, ConfigError

__all__ = ["PASSKEY", "STEP_UP_FACTORS", "TOTP", "ApprovalUnverified", "Channel", "DecisionKey", "Fields"]

TOTP = "totp"  # the factor of a decision or grant made with a named approver's TOTP code
PASSKEY = "passkey"  # a fresh WebAuthn assertion bound to the approval and its payload (the console)
STEP_UP_FACTORS = frozenset({TOTP, PASSKEY})  # what a step-up approval must have been decided with


class Channel(StrEnum):
    """Where a decision without a TOTP code came from; recorded as its factor."""

    CLI = "cli"
    IN_BAND = "in-band"
    CONSOLE = "console"  # a signed-in console session, without a fresh second factor


_APPROVAL_FIELDS = (
    "id",
    "request_id",
    "tool",
    "principal",
    "session",
    "payload_hash",
    "deadline",
    "step_up",
    "owner",
    "state",
    "approver",
    "factor",
    "decided_at",
)
_GRANT_FIELDS = ("id", "session", "tool", "owner", "granted_by", "factor", "created", "expires")


class ApprovalUnverified(ApprovalError):
    """An approval or grant row claims what no decision record of this guard backs: deny, on record."""

    reason = "approval_unverified"

    def __init__(self, record_id: str, message: str) -> None:
        super().__init__(message)
        self.record_id = record_id


class Fields(Protocol):
    """A row by column name: a `sqlite3.Row`, or a dict of the values about to be written."""

    def __getitem__(self, key: str, /) -> Any: ...


class DecisionKey:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a decision key is 32 bytes")
        self._key = key

    def _mac(self, kind: str, fields: tuple[str, ...], row: Fields) -> str:
        body = {name: row[name] for name in fields}
        if "step_up" in body:  # an INTEGER column, a bool in memory: one form for both
            body["step_up"] = bool(body["step_up"])
        message = canonical_json({"record": kind, "v": 1, **body})
        return hmac.digest(self._key, message, "sha256").hex()

    def approval(self, row: Fields) -> str:
        """The record of a decision: `row` is the approval row as the decision leaves it."""
        return self._mac("approval decision", _APPROVAL_FIELDS, row)

    def grant(self, row: Fields) -> str:
        return self._mac("session grant", _GRANT_FIELDS, row)

    def approval_problem(self, row: Fields) -> str | None:
        """Why the row's decision is not the guard's, or None when its record matches it."""
        return _problem(row["decision_mac"], lambda: self.approval(row), "decision")

    def grant_problem(self, row: Fields) -> str | None:
        return _problem(row["grant_mac"], lambda: self.grant(row), "grant")


def _problem(stored: Any, expected: Callable[[], str], what: str) -> str | None:
    if not isinstance(stored, str) or not stored:
        return f"it has no {what} record written by this guard"
    try:
        mac = expected()
    except ConfigError:  # a column holds what the guard never writes there (a blob, a huge number)
        mac = ""
    if not hmac.compare_digest(stored.encode(), mac.encode()):
        return f"its {what} record does not match the row (the row was changed outside the guard)"
    return None
