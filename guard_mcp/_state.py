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
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.keys.mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(
                f"cannot create state directory `{self.root}`: {exc.strerror}; "
                "pass a writable `--state-dir` or set GUARD_MCP_HOME"
            ) from None
        return self


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
