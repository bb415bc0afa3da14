"""Where the audit log lives: its tables in `guard.db`, connections to them, and the deployment key.

Tables (other modules keep their own tables in the same file):

    audit_events       seq, ts, type, request_id, actor, upstream, tool, data, prev_hash, hash, mac
    audit_checkpoints  signed heads, see _checkpoint.py
    audit_signers      kid -> public JWK of every key that signed a checkpoint (MAC'd)
    audit_verified     the newest checkpoint that verified at start (MAC'd), where the next
                       start's incremental verification begins

The deployment HMAC key is `<state>/keys/audit.key` (32 random bytes, 0600). Whoever holds it can forge
events, so it never leaves the state directory unless an operator shares it on purpose.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from guard_mcp._errors import AuditError
from guard_mcp._state import StateDir, secret_key

__all__ = [
    "AUDIT_KEY_FILE",
    "SCHEMA",
    "connect_reader",
    "connect_writer",
    "ensure_audit_key",
    "load_audit_key",
]

AUDIT_KEY_FILE = "audit.key"

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    seq        INTEGER PRIMARY KEY,
    ts         INTEGER NOT NULL,
    type       TEXT NOT NULL,
    request_id TEXT,
    actor      TEXT,
    upstream   TEXT,
    tool       TEXT,
    data       TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    mac        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_request ON audit_events (request_id) WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq  INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    ts   INTEGER NOT NULL,
    kid  TEXT NOT NULL,
    jws  TEXT NOT NULL,
    mac  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_signers (
    kid TEXT PRIMARY KEY,
    jwk TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_verified (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL,
    mac  TEXT NOT NULL
);
"""

_BUSY_TIMEOUT_MS = 5000


def connect_writer(path: Path, *, synchronous: str) -> sqlite3.Connection:
    """The one connection that appends. Autocommit mode: transactions are explicit (BEGIN IMMEDIATE)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
        conn.executescript(SCHEMA)
    except sqlite3.Error as exc:
        raise AuditError(
            f"cannot open the audit log in `{path}`: {exc}; check the state directory and that the file is a "
            "guard-mcp database"
        ) from None
    return conn


def _open_reader(path: Path, how: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?{how}", uri=True, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("SELECT 1 FROM audit_events LIMIT 1").fetchall()
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection for the CLI and the verifier; works while a guard is running."""
    if not path.exists():
        raise AuditError(f"no audit log at `{path}`; pass the guard's `--state-dir`")
    try:
        try:
            conn = _open_reader(path, "mode=ro")
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc) and "unable to open" not in str(exc):
                raise
            # A read-only directory (an auditor's copy, a read-only mount): SQLite cannot make the WAL's
            # shared-memory file there. Nothing can be writing to it either, so read it as immutable.
            conn = _open_reader(path, "immutable=1")
    except sqlite3.OperationalError as exc:
        raise AuditError(f"cannot read the audit log in `{path}`: {exc}; pass the guard's `--state-dir`") from None
    except sqlite3.DatabaseError as exc:
        raise AuditError(
            f"the audit database `{path}` is damaged or truncated ({exc}); restore it from backup"
        ) from None
    return conn


def load_audit_key(state: StateDir) -> bytes | None:
    path = state.keys / AUDIT_KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"cannot read the audit key `{path}`: {exc.strerror}; check its permissions") from None
    if len(key) < 32:
        raise AuditError(f"audit key `{path}` is shorter than 32 bytes; restore it from backup")
    return key


def ensure_audit_key(state: StateDir) -> bytes:
    """The deployment key, created (0600) on first use, exclusively: a guard and an operator command
    starting on a new state directory at once must not each write a key and MAC with their own."""
    key = load_audit_key(state)
    if key is None:
        state.ensure()
        key = secret_key(state.keys / AUDIT_KEY_FILE, what="the audit key", damaged="restore it from backup")
    return key
