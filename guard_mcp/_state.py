"""The state directory: keys, the SQLite database, tool pins. One place, shared by every command."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from guard_mcp._errors import StateError

__all__ = ["StateDir", "resolve_state_dir", "write_private"]

ENV_HOME = "GUARD_MCP_HOME"


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "guard.db"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    def ensure(self) -> StateDir:
        """Create the directory (0700) if need be, and keep what is private private even in a directory
        that already existed with wider permissions (made by hand, or by a service manager as 0755):
        the database (it holds arguments awaiting approval, the audit log) and its WAL files are 0600,
        `keys/` is 0700. `jwks.json` stays readable: upstreams on this machine verify with it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.keys.mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(
                f"cannot create state directory `{self.root}`: {exc.strerror}; "
                "pass a writable `--state-dir` or set GUARD_MCP_HOME"
            ) from None
        # Best effort: a read-only copy (an auditor's) must still open, and nothing can write there anyway.
        with contextlib.suppress(OSError):
            _tighten(self.keys, 0o700)
            db = self.database
            with contextlib.suppress(FileExistsError):  # SQLite gives its -wal and -shm files this mode too
                os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                _tighten(path, 0o600)
        return self


def _tighten(path: Path, mode: int) -> None:
    """Take group and other access off `path` if this user owns it (another's file is left as it is)."""
    if os.name != "posix":  # no such modes to tighten
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, mode)


def resolve_state_dir(explicit: str | os.PathLike[str] | None = None) -> StateDir:
    """`--state-dir`, else `GUARD_MCP_HOME`, else the platform's user data directory."""
    if explicit:
        return StateDir(Path(explicit).expanduser().resolve())
    env = os.environ.get(ENV_HOME)
    if env:
        return StateDir(Path(env).expanduser().resolve())
    return StateDir(Path(platformdirs.user_data_dir("guard-mcp", appauthor=False)))


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600), atomically."""
    # A temporary name of its own: two processes saving the same file at once must not share one.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
