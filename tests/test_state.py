"""The state directory is refused when anyone but the guard's user could have written it.

Another local user who can write the directory, a parent of it or an entry in it could plant keys,
a precompiled policy module or `jwks.json`. Other users are played by uid 65534 (`nobody`), which
needs root to hand files to; elsewhere those tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import anyio
import pytest
from _audit_helpers import filled_log
from click.testing import CliRunner

from guard_mcp._clock import FakeClock
from guard_mcp._errors import StateError
from guard_mcp._state import StateDir, _private_group, resolve_state_dir
from guard_mcp.cli import main

pytestmark = pytest.mark.skipif(os.name != "posix", reason="owners and modes are POSIX")

NOBODY = 65534
as_root = pytest.mark.skipif(
    os.name == "posix" and os.geteuid() != 0, reason="giving a file to another user (uid 65534) needs root"
)


def refused(root: Path) -> str:
    with pytest.raises(StateError) as caught:
        StateDir(root).ensure()
    message = str(caught.value)
    assert "\n" not in message
    return message


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def give_away(*paths: Path) -> None:
    for path in paths:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


# ------------------------------------------------------------------------------- the directory


@as_root
def test_a_state_directory_another_user_made_is_refused(tmp_path: Path) -> None:
    # Another user made it first (world-writable, as under /tmp), hoping a guard adopts it.
    root = tmp_path / "guard-state"
    root.mkdir()
    os.chmod(root, 0o777)
    give_away(root)
    message = refused(root)
    assert f"`{root}`" in message and "belongs to uid 65534 (nobody)" in message and "--state-dir" in message
    assert list(root.iterdir()) == []  # nothing was made in it
    code, out = cli("keys", "init", "--state-dir", str(root))
    assert code == 2 and "belongs to uid 65534" in out and "Traceback" not in out
    assert list(root.iterdir()) == []


@as_root
def test_a_state_directory_another_user_owns_is_refused_even_when_private(tmp_path: Path) -> None:
    root = tmp_path / "state"
    StateDir(root).ensure()
    for path in (root, *root.rglob("*")):
        give_away(path)
    assert "belongs to uid 65534" in refused(root)


@pytest.mark.parametrize("mode", [0o777, 0o757, 0o703], ids=oct)
def test_a_state_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "state"
    root.mkdir()
    os.chmod(root, mode)
    message = refused(root)
    assert "writable by group or others" in message and f"{mode:04o}" in message and f"chmod 700 {root}" in message


@as_root
def test_a_state_directory_a_shared_group_can_write_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir()
    os.chown(root, 0, NOBODY)  # the group `nogroup`: not this user's private group
    os.chmod(root, 0o770)
    assert "writable by group or others" in refused(root)


def test_a_state_directory_others_can_only_read_is_kept_and_tightened(tmp_path: Path) -> None:
    # Made by a service manager (0755): readable is not writable; keys/ and the database become private.
    root = tmp_path / "state"
    (root / "keys").mkdir(parents=True)
    os.chmod(root, 0o755)
    os.chmod(root / "keys", 0o755)
    StateDir(root).ensure()
    assert stat.S_IMODE((root / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "guard.db").stat().st_mode) == 0o600


# --------------------------------------------------------------------------------- the parents


def test_a_parent_others_can_write_without_the_sticky_bit_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone could rename `state` away and put their own in its place
    message = refused(shared / "state")
    assert f"`{shared}`" in message and "without the sticky bit (mode 0777)" in message
    assert not (shared / "state").exists()


def test_a_sticky_parent_like_tmp_is_fine_when_the_directory_in_it_is_ours(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    state = StateDir(shared / "state").ensure()
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700


@as_root
def test_a_parent_another_user_owns_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    give_away(theirs)  # its owner can rename anything in it
    assert f"`{theirs}`, which belongs to uid 65534" in refused(theirs / "state")


@as_root
def test_a_parent_only_this_users_private_group_can_write_is_fine(tmp_path: Path) -> None:
    if not _private_group(0, 0):
        pytest.skip("root's group has other members on this machine, so it is not a private group")
    mine = tmp_path / "mine"
    mine.mkdir()
    os.chown(mine, 0, 0)
    os.chmod(mine, 0o775)  # a umask of 002 with a group of one
    StateDir(mine / "state").ensure()
    os.chown(mine, 0, NOBODY)  # the same mode with a group others are in
    assert "writable by group or others without the sticky bit" in refused(mine / "state")


def test_missing_parents_are_made_unwritable_by_others_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        StateDir(tmp_path / "a" / "b" / "state").ensure()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o755


# ------------------------------------------------------------------------------- the entries


def test_a_state_directory_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    real = StateDir(tmp_path / "real").ensure().root
    link = tmp_path / "link"
    link.symlink_to(real)
    assert resolve_state_dir(link).root == link  # not followed on the way in
    assert f"`{link}` is a symbolic link" in refused(link)
    code, out = cli("keys", "init", "--state-dir", str(link))
    assert code == 2 and "is a symbolic link" in out and str(real) in out


@pytest.mark.parametrize("name", ["keys", "cache", "guard.db", "jwks.json", "keys/audit.key", "cache/policy-x.cwasm"])
def test_an_entry_planted_as_a_symbolic_link_is_refused_and_never_followed(tmp_path: Path, name: str) -> None:
    root = StateDir(tmp_path / "state").ensure().root
    (root / "cache").mkdir()
    victim = tmp_path / "victim"
    if name in ("keys", "cache"):
        victim.mkdir()
    else:
        victim.write_text("someone else's file\n")
    os.chmod(victim, 0o644)
    planted = root / name
    if planted.is_dir():
        shutil.rmtree(planted)
    else:
        planted.unlink(missing_ok=True)
    planted.symlink_to(victim)
    assert f"`{planted}` is a symbolic link" in refused(root)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644  # not tightened through the link
    if victim.is_file():
        assert victim.read_text() == "someone else's file\n"


@as_root
@pytest.mark.parametrize("name", ["keys", "guard.db", "jwks.json", "keys/permit-gm-0.pem", "cache/policy-x.cwasm"])
def test_an_entry_another_user_owns_is_refused(tmp_path: Path, name: str) -> None:
    root = StateDir(tmp_path / "state").ensure().root
    (root / "cache").mkdir(mode=0o700)
    path = root / name
    if not path.exists():
        path.write_bytes(b"planted")
    give_away(path)
    message = refused(root)
    assert f"`{path}` belongs to uid 65534" in message and "chown" in message


@pytest.mark.parametrize(
    ("name", "mode"),
    [("keys", 0o777), ("cache", 0o733), ("policy-versions.json", 0o666), ("jwks.json", 0o646), ("guard.db", 0o666)],
    ids=lambda v: oct(v) if isinstance(v, int) else v,
)
def test_an_entry_others_can_write_is_refused(tmp_path: Path, name: str, mode: int) -> None:
    root = StateDir(tmp_path / "state").ensure().root
    path = root / name
    if name == "cache":
        path.mkdir()
    elif not path.exists():
        path.write_text("{}")
    os.chmod(path, mode)
    message = refused(root)
    assert f"`{path}` is writable by group or others (mode {mode:04o})" in message


# ------------------------------------------------------------------------------------ readers


@as_root
def test_an_auditors_copy_owned_by_another_user_verifies_but_no_guard_uses_it(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state").ensure()
    anyio.run(filled_log, state, FakeClock())
    copy = tmp_path / "copy"
    shutil.copytree(state.root, copy, symlinks=True)
    for path in (copy, *copy.rglob("*")):
        give_away(path)  # `cp -a` of the guard's directory, or the guard's own, read by root
    code, out = cli("audit", "verify", "--state-dir", str(copy))
    assert code == 0 and "intact" in out, out
    code, out = cli("audit", "tail", "--state-dir", str(copy))
    assert code == 0 and "call.result" in out, out
    code, out = cli("keys", "init", "--state-dir", str(copy))
    assert code == 2 and "belongs to uid 65534" in out
    assert "belongs to uid 65534" in refused(copy)


def test_an_auditors_copy_others_can_write_or_that_holds_a_link_is_not_read(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state").ensure()
    anyio.run(filled_log, state, FakeClock())
    os.chmod(state.root, 0o777)
    code, out = cli("audit", "verify", "--state-dir", str(state.root))
    assert code == 2 and "writable by group or others" in out  # a verdict anyone could have arranged
    os.chmod(state.root, 0o700)
    (state.root / "audit.head.json").unlink(missing_ok=True)
    (state.root / "audit.head.json").symlink_to(tmp_path / "elsewhere.json")
    code, out = cli("audit", "verify", "--state-dir", str(state.root))
    assert code == 2 and "is a symbolic link" in out
