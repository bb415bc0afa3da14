"""Named approvers, their groups, and their TOTP second factor (enrolment, verification, replay).

TOTP secrets are secrets, so they are not stored in the clear. Each is sealed with AES-GCM under a
256-bit key kept in `<state>/keys/approvers.key` (0600, next to the permit signing keys), with the
approver's name as associated data, and the sealed bytes live in the database. A copy of the
database alone (a backup, a file attached to a ticket) does not reveal anyone's second factor, and a
sealed secret moved onto another approver's row does not open.

Guessing: after MAX_FAILURES wrong codes in a row an approver is locked for LOCKOUT seconds. That
lets someone lock a real approver out for a while, which is the better failure than letting them guess.

Replay protection: each approver row remembers the newest TOTP time step it accepted, and a code is
accepted only for a later step, updated in the same transaction as the decision it authorises. A code
therefore works once, and two processes cannot both spend it.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyotp

from guard_mcp._approvals._db import Database
from guard_mcp._approvals._prompt import escape_text
from guard_mcp._clock import Clock
from guard_mcp._errors import ApprovalError, StateError
from guard_mcp._sealing import Sealer
from guard_mcp._store.pgsync import lock

__all__ = ["NAME", "Approver", "Approvers", "SecretSealer", "check_code", "check_member"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_CODE = re.compile(r"[0-9]{6}")
STEP = 30  # seconds per TOTP code (RFC 6238 default; what authenticator apps expect)
# Three codes in a million are valid at any moment, so unlimited guessing would find one within
# minutes; a short lock after a few wrong codes makes that take months.
MAX_FAILURES = 5
LOCKOUT = 300.0
ISSUER = "guard-mcp"


@dataclass(frozen=True)
class Approver:
    name: str
    groups: tuple[str, ...]
    created: float


def check_name(value: str, what: str) -> str:
    if not NAME.fullmatch(value):
        raise ApprovalError(
            f"{what} `{escape_text(value[:80])}` is not a valid name: use 1-64 letters, digits, `.`, `_`, `@` or `-`"
        )
    return value


class SecretSealer:
    """TOTP secrets sealed under the approver key, each bound to its approver's name."""

    def __init__(self, key_path: Path) -> None:
        self._sealer = Sealer(key_path, what="the approver key", damaged="restore it from backup or re-enrol approvers")

    def seal(self, name: str, secret: str) -> bytes:
        return self._sealer.seal(_aad(name), secret.encode())

    def open(self, name: str, sealed: bytes) -> str:
        secret = self._sealer.open(_aad(name), sealed)
        if secret is None:
            raise ApprovalError(
                f"the second factor of approver `{name}` cannot be read; re-enrol them with "
                f"`guard-mcp approvers remove {name}` and `guard-mcp approvers add {name} --group G`"
            )
        return secret.decode()


def _aad(name: str) -> bytes:
    return f"guard-mcp approver totp:{name}".encode()


def _groups(row: sqlite3.Row) -> tuple[str, ...]:
    try:
        groups = json.loads(row["groups"])
    except (TypeError, ValueError):
        groups = None
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise StateError(
            f"approver `{escape_text(str(row['name'])[:64])}` has damaged groups in the database; "
            "restore it from backup, or remove and re-enrol the approver"
        )
    return tuple(groups)


def check_member(conn: sqlite3.Connection, *, name: str, groups: Iterable[str]) -> str | None:
    """None when `name` is enrolled in one of `groups`, else the error (for a factor verified elsewhere:
    the console's passkey, inside the decision's own transaction, so a removal in between counts)."""
    return _member(conn, name, groups)[1]


def _member(conn: sqlite3.Connection, name: str, groups: Iterable[str]) -> tuple[sqlite3.Row, None] | tuple[None, str]:
    """The approver's row when `name` is enrolled in one of `groups`, else the error."""
    row = conn.execute("SELECT * FROM approval_approvers WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None, f"approver `{name}` is not enrolled; enrol them with `guard-mcp approvers add {name} --group G`"
    wanted = [g for g in groups if g]
    if not set(wanted) & set(_groups(row)):
        need = " or ".join(f"`{g}`" for g in wanted) or "any group"
        return None, f"approver `{name}` is not in group {need}; ask an approver of that group"
    return row, None


def check_code(
    conn: sqlite3.Connection, sealer: SecretSealer, *, name: str, groups: Iterable[str], code: str, now: float
) -> str | None:
    """Verify `code` for approver `name` in one of `groups` and spend it; inside a write transaction.

    Returns an error message instead of raising, so the caller decides whether its transaction commits.
    The approver's row is read, then updated: instances sharing PostgreSQL do that one at a time.
    """
    lock(conn, f"approver:{name}")
    row, not_member = _member(conn, name, groups)
    if row is None:
        return not_member
    if now < row["locked_until"]:
        wait = math.ceil(row["locked_until"] - now)
        return f"approver `{name}` is locked for {wait}s after {MAX_FAILURES} wrong codes; wait, then use a fresh code"
    error, step = _match(sealer, name, row, code, now)
    if error is not None:
        failures = row["failures"] + 1
        locked_until = now + LOCKOUT if failures >= MAX_FAILURES else 0.0
        conn.execute(
            "UPDATE approval_approvers SET failures = ?, locked_until = ? WHERE name = ?",
            (0 if locked_until else failures, locked_until, name),
        )
        return error
    conn.execute("UPDATE approval_approvers SET last_step = ?, failures = 0 WHERE name = ?", (step, name))
    return None


def _match(sealer: SecretSealer, name: str, row: sqlite3.Row, code: str, now: float) -> tuple[str | None, int]:
    if not _CODE.fullmatch(code):
        return "a TOTP code must be the 6 digits the authenticator app shows; enter the current one", -1
    totp = pyotp.TOTP(sealer.open(name, row["secret"]), interval=STEP)
    current = int(now // STEP)
    matched: int | None = None
    # One step either side absorbs clock drift between the guard and the phone.
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            matched = step
    if matched is None:
        return f"TOTP code for approver `{name}` is wrong or too old; enter the code the app shows now", -1
    if matched <= row["last_step"]:
        return f"TOTP code for approver `{name}` was already used; wait for the next code and retry", -1
    return None, matched


class Approvers:
    """Enrol, list, verify and remove approvers; shares the approval store's database."""

    def __init__(self, db: Database, sealer: SecretSealer, clock: Clock) -> None:
        self._db = db
        self._sealer = sealer
        self._clock = clock

    @property
    def sealer(self) -> SecretSealer:
        return self._sealer

    async def enrol(self, name: str, group: str | Sequence[str]) -> tuple[str, str]:
        """Enrol `name` in `group` (or several); return (base32 TOTP secret, otpauth:// provisioning URI)."""
        check_name(name, "approver")
        groups = sorted({check_name(g, "group") for g in ([group] if isinstance(group, str) else group)})
        if not groups:
            raise ApprovalError(f"approver `{name}` needs at least one group; pass `--group G`")
        secret = pyotp.random_base32(32)
        sealed = self._sealer.seal(name, secret)

        def work(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "INSERT INTO approval_approvers (name, groups, secret, created) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO NOTHING",
                    (name, json.dumps(groups), sealed, self._clock.now()),
                ).rowcount
                == 1
            )

        if not await self._db.write(work):
            raise ApprovalError(
                f"approver `{name}` is already enrolled; run `guard-mcp approvers remove {name}` first to replace "
                "their second factor"
            )
        uri = pyotp.TOTP(secret, interval=STEP).provisioning_uri(name=name, issuer_name=ISSUER)
        return secret, uri

    async def verify(self, name: str, group: str, code: str) -> None:
        """Check and spend a TOTP code of `name` for `group`; raise ApprovalError if it does not verify."""
        now = self._clock.now()
        error = await self._db.write(
            lambda conn: check_code(conn, self._sealer, name=name, groups=[group], code=code, now=now)
        )
        if error is not None:
            raise ApprovalError(error)

    async def get(self, name: str) -> Approver | None:
        row = await self._db.read(
            lambda conn: conn.execute("SELECT * FROM approval_approvers WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else Approver(row["name"], _groups(row), row["created"])

    async def set_groups(self, name: str, group: Sequence[str]) -> Approver:
        """Change an approver's groups; their TOTP secret and passkeys stay as they are."""
        groups = sorted({check_name(g, "group") for g in group})
        if not groups:
            raise ApprovalError(f"approver `{name}` needs at least one group; pass `--group G`")
        count = await self._db.write(
            lambda conn: (
                conn.execute(
                    "UPDATE approval_approvers SET groups = ? WHERE name = ?", (json.dumps(groups), name)
                ).rowcount
            )
        )
        approver = await self.get(name) if count == 1 else None
        if approver is None:
            raise ApprovalError(f"approver `{name}` is not enrolled; see `guard-mcp approvers list`")
        return approver

    async def remove(self, name: str) -> None:
        count = await self._db.write(
            lambda conn: conn.execute("DELETE FROM approval_approvers WHERE name = ?", (name,)).rowcount
        )
        if count != 1:
            raise ApprovalError(f"approver `{name}` is not enrolled; see `guard-mcp approvers list`")

    async def list(self) -> list[Approver]:
        rows = await self._db.read(
            lambda conn: conn.execute("SELECT * FROM approval_approvers ORDER BY name").fetchall()
        )
        return [Approver(r["name"], _groups(r), r["created"]) for r in rows]
