"""The state directory: keys, the SQLite database, tool pins. One place, shared by every command.

It also owns who may have put what there. Everything the guard trusts lives in it: its signing and
MAC keys, the database, the compiled policy module, the `jwks.json` upstreams verify permits with.
Anyone else who can write the directory, a parent of it or an entry in it could replace those, so
the guard refuses such a directory rather than adopt it, and never follows a symbolic link there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from guard_mcp._errors import StateError

__all__ = ["StateDir", "resolve_state_dir", "secret_key", "writable_by_others", "write_private"]

ENV_HOME = "GUARD_MCP_HOME"
# The directories inside the state directory whose entries are checked as well.
_CHECKED_DIRS = ("keys", "cache")


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "guard.db"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def ensure(self) -> StateDir:
        """Create the directory (0700) if need be, refuse one that someone else could have written, and
        keep what is private private even in a directory that already existed with wider read permissions
        (made by hand, or by a service manager as 0755): the database (it holds arguments awaiting
        approval, the audit log) and its WAL files are 0600, `keys/` is 0700. `jwks.json` stays readable:
        upstreams on this machine verify with it.

        Refused (StateError): a directory, or an entry in it, `keys/` or `cache/`, that is a symbolic
        link or belongs to another user; the directory, a directory in it or a file directly in it that
        group or others can write; a parent that another user owns, or that group or others can write
        without the sticky bit (`/tmp` is fine)."""
        if os.name != "posix":  # no owners or modes to check
            self._make()
            return self
        euid = os.geteuid()
        self._refuse_a_link()
        _check_parents(self.root, trusted={0, euid})
        self._make(keys=False)
        _check_tree(self.root, owner=euid, whose="who runs the guard")
        self._make()  # `keys/` only now: in a directory found to be ours
        # Best effort: a read-only copy (an auditor's) must still open, and nothing can write there anyway.
        with contextlib.suppress(OSError):
            _tighten(self.keys, 0o700)
            db = self.database
            with contextlib.suppress(FileExistsError):  # SQLite gives its -wal and -shm files this mode too
                os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                _tighten(path, 0o600)
        return self

    def for_reading(self) -> StateDir:
        """The checks of `ensure()` for commands that only read the audit log, which may read a directory
        another user owns (an auditor's copy, a read-only mount, root reading the guard's): everything in
        it must belong to the directory's owner, and no one else may be able to write it. Nothing is
        created or changed; a directory that does not exist is left for the reader to report."""
        if os.name != "posix":
            return self
        self._refuse_a_link()
        try:
            owner = self.root.lstat().st_uid
        except FileNotFoundError:
            return self
        except OSError as exc:
            raise StateError(
                f"cannot read state directory `{self.root}`: {exc.strerror}; pass the guard's `--state-dir`"
            ) from None
        _check_parents(self.root, trusted={0, os.geteuid(), owner})
        _check_tree(self.root, owner=owner, whose="who owns the state directory")
        return self

    def _refuse_a_link(self) -> None:
        if self.root.is_symlink():
            raise StateError(
                f"state directory `{self.root}` is a symbolic link; the guard never follows one "
                f"there: pass the real directory (`{os.path.realpath(self.root)}`) as `--state-dir`"
            )

    def _make(self, *, keys: bool = True) -> None:
        try:
            _make_parents(self.root.parent)
            self.root.mkdir(exist_ok=True, mode=0o700)
            if keys:
                self.keys.mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(
                f"cannot create state directory `{self.root}`: {exc.strerror}; "
                "pass a writable `--state-dir` or set GUARD_MCP_HOME"
            ) from None


def _make_parents(path: Path) -> None:
    # Never group- or world-writable, whatever the umask: the check refuses a parent that is.
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o755)


def _who(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def writable_by_others(st: os.stat_result) -> bool:
    """Whether anyone but the owner (and root) can write: others, or a group that is not the owner's
    private group (one named after the owner with no other member, as a umask of 002 expects)."""
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _private_group(st.st_uid, st.st_gid)


def _private_group(uid: int, gid: int) -> bool:
    import grp
    import pwd

    try:
        user, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except KeyError:
        return False
    if user.pw_gid != gid or group.gr_name != user.pw_name or any(m != user.pw_name for m in group.gr_mem):
        return False
    return all(p.pw_uid == uid for p in pwd.getpwall() if p.pw_gid == gid)


def _check_parents(root: Path, *, trusted: set[int]) -> None:
    """Every directory above `root` (on the path as given and on its real path) must be owned by a
    trusted user and writable by no one else, unless sticky: another writer could rename the state
    directory away and put one of their own in its place."""
    given = Path(os.path.abspath(root)).parent
    real = Path(os.path.realpath(given))
    for parent in dict.fromkeys([given, *given.parents, real, *real.parents]):
        try:
            st = parent.lstat()
        except FileNotFoundError:
            continue  # created by `_make` (0755, ours) once everything above it has passed
        except OSError as exc:
            raise StateError(
                f"cannot inspect `{parent}` above the state directory `{root}`: {exc.strerror}; "
                "pass a `--state-dir` you can reach"
            ) from None
        if stat.S_ISLNK(st.st_mode):
            continue  # what matters is who can change the link: the directory it is in, checked too
        if st.st_uid not in trusted:
            problem = f"belongs to {_who(st.st_uid)}"
        elif writable_by_others(st) and not st.st_mode & stat.S_ISVTX:
            problem = f"is writable by group or others without the sticky bit (mode {stat.S_IMODE(st.st_mode):04o})"
        else:
            continue
        raise StateError(
            f"the state directory `{root}` is inside `{parent}`, which {problem}: another user could "
            "swap the state directory for their own; use a `--state-dir` in a directory only you "
            "or root can write"
        )


def _check_tree(root: Path, *, owner: int, whose: str) -> None:
    """The state directory, its entries and those of `keys/` and `cache/`: no symbolic link, all owned by
    `owner`; no directory there, and no file directly in the state directory, writable by others."""
    st = root.lstat()
    _check_entry(root, st, owner, whose, what="state directory")
    dirs = [root] + [root / name for name in _CHECKED_DIRS if (root / name).is_dir()]
    for directory in dirs:
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise StateError(f"cannot list `{directory}`: {exc.strerror}; check its permissions") from None
        for entry in entries:
            path = Path(entry.path)
            try:
                est = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since the listing (a temporary file another command renamed)
            if stat.S_ISLNK(est.st_mode):
                raise StateError(
                    f"`{path}` is a symbolic link; the guard never follows one in its state "
                    "directory (another user could point it at their own keys or code): replace it "
                    "with the real file or directory"
                )
            # A file directly in the state directory can be reached through a 0755 directory; one in
            # `keys/` (0700) or `cache/` (read-only code, checked by its MAC) cannot be written by others.
            check_mode = stat.S_ISDIR(est.st_mode) or directory == root
            _check_entry(path, est, owner, whose, check_mode=check_mode)


def _check_entry(
    path: Path, st: os.stat_result, owner: int, whose: str, *, what: str | None = None, check_mode: bool = True
) -> None:
    name = f"{what} `{path}`" if what else f"`{path}`"
    if st.st_uid != owner:
        raise StateError(
            f"{name} belongs to {_who(st.st_uid)}, not to {_who(owner)} {whose}: its "
            "owner could replace the keys, the database or the policy code; use a `--state-dir` of "
            "your own, or `chown` it back"
        )
    if check_mode and writable_by_others(st):
        fix = "chmod 700" if stat.S_ISDIR(st.st_mode) else "chmod go-w"
        raise StateError(
            f"{name} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): anyone "
            f"who can write it could replace what the guard trusts; check it, then run `{fix} {path}`"
        )


def _tighten(path: Path, mode: int) -> None:
    """Take group and other access off `path` if this user owns it (another's file is left as it is)."""
    if os.name != "posix":  # no such modes to tighten
        return
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if st.st_mode & 0o077 and st.st_uid == os.geteuid() and not stat.S_ISLNK(st.st_mode):
        os.chmod(path, mode)


def _normal(path: Path) -> Path:
    """`path` made absolute with its parents resolved, but not its last component: a state directory
    that is itself a symbolic link is refused, not silently followed."""
    path = Path(os.path.abspath(path.expanduser()))
    return Path(os.path.realpath(path.parent)) / path.name


def resolve_state_dir(explicit: str | os.PathLike[str] | None = None) -> StateDir:
    """`--state-dir`, else `GUARD_MCP_HOME`, else the platform's user data directory."""
    if explicit:
        return StateDir(_normal(Path(explicit)))
    env = os.environ.get(ENV_HOME)
    if env:
        return StateDir(_normal(Path(env)))
    return StateDir(_normal(Path(platformdirs.user_data_dir("guard-mcp", appauthor=False))))


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


def secret_key(path: Path, *, what: str, damaged: str) -> bytes:
    """A 256-bit secret kept in `path` (0600), created on first use; `what` names it in an error, and
    `damaged` says what to do when the file is not 32 bytes.

    Created exclusively (link() of a finished temporary file): two processes starting at once (a guard
    and `guard-mcp approvals approve`, two guard instances) must not each write a key and leave what the
    other sealed or MAC'd with its own unreadable.
    """
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = _create_secret(path)
    except OSError as exc:
        raise StateError(f"cannot read {what} `{path}`: {exc.strerror}; check its permissions") from None
    if len(key) != 32:
        raise StateError(f"{what} `{path}` is damaged; {damaged}")
    return key


def _create_secret(path: Path) -> bytes:
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:  # another process made it first: use theirs
        key = path.read_bytes()
    finally:
        tmp.unlink()
    return key
