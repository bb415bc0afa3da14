"""The console's tables in the guard's database: sessions, WebAuthn challenges, enrolment links, passkeys.

Nothing here is a bearer secret at rest: a session cookie and an enrolment link are stored as their
SHA-256, so a copy of the database (a backup, a file attached to a ticket) signs nobody in. A
credential row holds the passkey's public key and its signature counter; the counter only moves
forward, in a compare-and-set, so two sign-ins with one cloned authenticator cannot both pass.

Every read of a session also checks that its approver is still enrolled (`approval_approvers`): an
approver removed with `guard-mcp approvers remove` is signed out everywhere at their next request.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from dataclasses import dataclass

from guard_mcp._approvals._db import _SCHEMA as _APPROVAL_SCHEMA
from guard_mcp._approvals._db import Database
from guard_mcp._approvals._db import _upgrade as _approval_upgrade
from guard_mcp._clock import Clock
from guard_mcp._state import StateDir

__all__ = ["ConsoleStore", "Credential", "Session", "digest"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash     TEXT PRIMARY KEY,
    approver    TEXT,
    csrf        TEXT NOT NULL,
    factor      TEXT,
    credential  TEXT,
    next        TEXT,
    created     REAL NOT NULL,
    seen        REAL NOT NULL,
    expires     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS console_challenges (
    session     TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    binding     TEXT NOT NULL,
    challenge   BLOB NOT NULL,
    expires     REAL NOT NULL,
    PRIMARY KEY (session, purpose, binding)
);
CREATE TABLE IF NOT EXISTS console_enrolments (
    token_hash  TEXT PRIMARY KEY,
    approver    TEXT NOT NULL,
    created     REAL NOT NULL,
    expires     REAL NOT NULL,
    used_at     REAL
);
CREATE TABLE IF NOT EXISTS console_credentials (
    id          TEXT PRIMARY KEY,
    approver    TEXT NOT NULL,
    user_handle TEXT NOT NULL,
    public_key  BLOB NOT NULL,
    sign_count  INTEGER NOT NULL,
    created     REAL NOT NULL,
    last_used   REAL
);
CREATE INDEX IF NOT EXISTS console_credentials_by_approver ON console_credentials (approver)
"""

ANONYMOUS_TTL = 600.0  # seconds a signed-out session (a sign-in page, its challenge) lives
CHALLENGE_TTL = 300.0  # seconds a WebAuthn challenge may be answered


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    key: str  # the stored hash of the cookie value
    approver: str | None
    groups: tuple[str, ...]
    csrf: str
    factor: str | None  # how the session was signed in: `passkey` or `totp`
    credential: str | None
    next: str | None  # where a signed-out visitor was going
    expires: float


@dataclass(frozen=True)
class Credential:
    id: str  # base64url credential id
    approver: str
    user_handle: str
    public_key: bytes
    sign_count: int


def _groups(raw: str | None) -> tuple[str, ...]:
    try:
        groups = json.loads(raw or "[]")
    except ValueError:
        return ()
    return tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else ()


class ConsoleStore:
    def __init__(self, db: Database, clock: Clock, *, session_ttl: float, idle_ttl: float) -> None:
        self._db = db
        self.clock = clock
        self.session_ttl = session_ttl
        self.idle_ttl = idle_ttl

    @classmethod
    async def open(
        cls, state: StateDir, clock: Clock, *, session_ttl: float = 1800.0, idle_ttl: float = 600.0
    ) -> ConsoleStore:
        state.ensure()
        # The approvers' table is joined on every session read: opened (and upgraded) with it, whoever opens first.
        db = await Database.open(
            state.database, schema=_APPROVAL_SCHEMA + ";" + _SCHEMA, upgrade=_approval_upgrade, label="console"
        )
        return cls(db, clock, session_ttl=session_ttl, idle_ttl=idle_ttl)

    async def close(self) -> None:
        await self._db.close()

    # -- sessions ------------------------------------------------------------------------------------

    async def new_session(self, *, next_path: str | None = None) -> tuple[str, Session]:
        """A signed-out session: it carries the CSRF token of the sign-in form and its challenge."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self.clock.now()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM console_sessions WHERE expires <= ?", (now,))
            conn.execute("DELETE FROM console_challenges WHERE expires <= ?", (now,))
            conn.execute(
                "INSERT INTO console_sessions (id_hash, approver, csrf, next, created, seen, expires) "
                "VALUES (?, NULL, ?, ?, ?, ?, ?)",
                (digest(token), csrf, next_path, now, now, now + ANONYMOUS_TTL),
            )

        await self._db.write(work)
        return token, Session(digest(token), None, (), csrf, None, None, next_path, now + ANONYMOUS_TTL)

    async def session(self, token: str) -> Session | None:
        """The live session for a cookie value, touched; None when unknown, ended, expired or idle."""
        if not token or len(token) > 128:
            return None
        key = digest(token)
        now = self.clock.now()
        idle = self.idle_ttl

        def work(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                "SELECT s.*, a.groups AS groups, a.name AS enrolled FROM console_sessions s "
                "LEFT JOIN approval_approvers a ON a.name = s.approver WHERE s.id_hash = ?",
                (key,),
            ).fetchone()
            if row is None:
                return None
            signed_in = row["approver"] is not None
            if (
                now >= row["expires"]
                or (signed_in and now >= row["seen"] + idle)
                or (signed_in and row["enrolled"] is None)
            ):
                conn.execute("DELETE FROM console_sessions WHERE id_hash = ?", (key,))
                return None
            conn.execute("UPDATE console_sessions SET seen = ? WHERE id_hash = ?", (now, key))
            return Session(
                key,
                row["approver"],
                _groups(row["groups"]),
                row["csrf"],
                row["factor"],
                row["credential"],
                row["next"],
                row["expires"],
            )

        return await self._db.write(work)

    async def sign_in(
        self, old: Session | None, approver: str, *, factor: str, credential: str | None = None
    ) -> tuple[str, Session]:
        """Replace the signed-out session with a new one for `approver`: a new cookie value and a new
        CSRF token (session fixation: an id planted before sign-in is worth nothing after it)."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self.clock.now()
        expires = now + self.session_ttl

        def work(conn: sqlite3.Connection) -> tuple[str, ...]:
            if old is not None:
                conn.execute("DELETE FROM console_sessions WHERE id_hash = ?", (old.key,))
                conn.execute("DELETE FROM console_challenges WHERE session = ?", (old.key,))
            conn.execute(
                "INSERT INTO console_sessions (id_hash, approver, csrf, factor, credential, created, seen, "
                "expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (digest(token), approver, csrf, factor, credential, now, now, expires),
            )
            row = conn.execute("SELECT groups FROM approval_approvers WHERE name = ?", (approver,)).fetchone()
            return _groups(None if row is None else row["groups"])

        groups = await self._db.write(work)
        return token, Session(digest(token), approver, groups, csrf, factor, credential, None, expires)

    async def end(self, session: Session) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM console_sessions WHERE id_hash = ?", (session.key,))
            conn.execute("DELETE FROM console_challenges WHERE session = ?", (session.key,))

        await self._db.write(work)

    # -- challenges ----------------------------------------------------------------------------------

    async def put_challenge(self, session: Session, purpose: str, binding: str, challenge: bytes) -> None:
        expires = self.clock.now() + CHALLENGE_TTL
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO console_challenges (session, purpose, binding, challenge, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (session.key, purpose, binding, challenge, expires),
            )
        )

    async def take_challenge(self, session: Session, purpose: str, binding: str) -> bytes | None:
        """The challenge issued to this session for this purpose and binding, once; None if none is live."""
        now = self.clock.now()
        row = await self._db.write(
            lambda conn: conn.execute(
                "DELETE FROM console_challenges WHERE session = ? AND purpose = ? AND binding = ? RETURNING *",
                (session.key, purpose, binding),
            ).fetchone()
        )
        if row is None or now >= row["expires"]:
            return None
        return bytes(row["challenge"])

    # -- enrolment links -----------------------------------------------------------------------------

    async def issue_enrolment(self, approver: str, ttl: float) -> str | None:
        """A one-time enrolment token for an enrolled approver (None if there is no such approver)."""
        token = secrets.token_urlsafe(32)
        now = self.clock.now()

        def work(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM approval_approvers WHERE name = ?", (approver,)).fetchone() is None:
                return False
            conn.execute("DELETE FROM console_enrolments WHERE expires <= ?", (now,))
            conn.execute(
                "INSERT INTO console_enrolments (token_hash, approver, created, expires) VALUES (?, ?, ?, ?)",
                (digest(token), approver, now, now + ttl),
            )
            return True

        return token if await self._db.write(work) else None

    async def enrolment(self, token: str) -> str | None:
        """The approver an unused, unexpired enrolment token is for."""
        if not token or len(token) > 128:
            return None
        now = self.clock.now()
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT e.approver FROM console_enrolments e JOIN approval_approvers a ON a.name = e.approver "
                "WHERE e.token_hash = ? AND e.used_at IS NULL AND e.expires > ?",
                (digest(token), now),
            ).fetchone()
        )
        return None if row is None else str(row["approver"])

    async def enrol(self, token: str, credential: Credential) -> bool:
        """Spend the token and store the passkey, in one transaction: True once, False ever after."""
        now = self.clock.now()

        def work(conn: sqlite3.Connection) -> bool:
            spent = conn.execute(
                "UPDATE console_enrolments SET used_at = ? WHERE token_hash = ? AND approver = ? AND used_at IS NULL "
                "AND expires > ?",
                (now, digest(token), credential.approver, now),
            ).rowcount
            if spent != 1:
                return False
            conn.execute(
                "INSERT INTO console_credentials (id, approver, user_handle, public_key, sign_count, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    credential.id,
                    credential.approver,
                    credential.user_handle,
                    credential.public_key,
                    credential.sign_count,
                    now,
                ),
            )
            return True

        try:
            return await self._db.write(work)
        except Exception:  # a credential id already on file (the same authenticator twice) enrols nothing
            return False

    # -- credentials ---------------------------------------------------------------------------------

    async def credential(self, credential_id: str) -> Credential | None:
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT c.* FROM console_credentials c JOIN approval_approvers a ON a.name = c.approver WHERE c.id = ?",
                (credential_id,),
            ).fetchone()
        )
        return None if row is None else _credential(row)

    async def credentials_of(self, approver: str) -> list[Credential]:
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT * FROM console_credentials WHERE approver = ? ORDER BY created", (approver,)
            ).fetchall()
        )
        return [_credential(r) for r in rows]

    async def advance_counter(self, credential: Credential, new_count: int) -> bool:
        """Record a verified assertion's counter, if nobody recorded a later one meanwhile."""
        now = self.clock.now()
        changed = await self._db.write(
            lambda conn: (
                conn.execute(
                    "UPDATE console_credentials SET sign_count = ?, last_used = ? WHERE id = ? AND sign_count = ?",
                    (new_count, now, credential.id, credential.sign_count),
                ).rowcount
            )
        )
        return bool(changed == 1)

    async def forget(self, approver: str) -> None:
        """Remove an approver's passkeys, sessions and open enrolment links (they were removed)."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM console_credentials WHERE approver = ?", (approver,))
            conn.execute("DELETE FROM console_enrolments WHERE approver = ?", (approver,))
            keys = [r[0] for r in conn.execute("SELECT id_hash FROM console_sessions WHERE approver = ?", (approver,))]
            conn.executemany("DELETE FROM console_challenges WHERE session = ?", [(k,) for k in keys])
            conn.execute("DELETE FROM console_sessions WHERE approver = ?", (approver,))

        await self._db.write(work)


def _credential(row: sqlite3.Row) -> Credential:
    return Credential(row["id"], row["approver"], row["user_handle"], bytes(row["public_key"]), int(row["sign_count"]))
