"""The one AES-GCM sealer: a sealed value opens only under its key, for its owner, unaltered."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard_mcp._errors import StateError
from guard_mcp._sealing import Sealer


def _sealer(path: Path) -> Sealer:
    return Sealer(path, what="the test key", damaged="delete it")


def test_a_sealed_value_opens_for_its_owner_and_reveals_nothing(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path / "keys" / "t.key")
    sealed = sealer.seal(b"owner:ana", b"the secret")
    assert b"the secret" not in sealed
    assert sealer.open(b"owner:ana", sealed) == b"the secret"
    assert sealer.seal(b"owner:ana", b"the secret") != sealed  # a fresh nonce each time


def test_a_value_moved_to_another_owner_does_not_open(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path / "t.key")
    stolen = sealer.seal(b"owner:ana", b"ana's secret")
    assert sealer.open(b"owner:mallory", stolen) is None


def test_an_altered_or_cut_value_does_not_open(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path / "t.key")
    sealed = sealer.seal(b"owner", b"secret")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert sealer.open(b"owner", flipped) is None
    assert sealer.open(b"owner", sealed[:11]) is None
    assert sealer.open(b"owner", b"") is None


def test_a_value_from_another_key_does_not_open(tmp_path: Path) -> None:
    theirs = _sealer(tmp_path / "theirs.key").seal(b"owner", b"secret")
    assert _sealer(tmp_path / "ours.key").open(b"owner", theirs) is None


def test_two_sealers_on_one_key_file_share_the_key(tmp_path: Path) -> None:
    sealed = _sealer(tmp_path / "t.key").seal(b"owner", b"secret")
    assert _sealer(tmp_path / "t.key").open(b"owner", sealed) == b"secret"


def test_the_key_is_made_on_first_use_not_when_the_sealer_is(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    sealer = _sealer(path)
    assert not path.exists()
    sealer.load()
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_bytes()) == 32


def test_a_damaged_key_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "t.key"
    path.write_bytes(b"short")
    with pytest.raises(StateError, match=r"the test key `.*t\.key` is damaged; delete it"):
        _sealer(path).seal(b"owner", b"secret")
    assert path.read_bytes() == b"short"
