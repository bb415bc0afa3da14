"""AES-GCM sealing of secrets at rest, under a 256-bit key file created once, exclusively (`secret_key`).

A sealed value is a fresh 96-bit nonce followed by the ciphertext and its tag. The caller's associated
data binds each value to its owner (an approver's name; an upstream and its resource URL), so a value
moved onto another row does not open. The key is read, or created, on first use, not when the sealer
is made (`load` reads it at once, for a holder that must fail at start on a damaged key).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from guard_mcp._state import secret_key

__all__ = ["Sealer"]

_NONCE = 12  # bytes: the AES-GCM nonce size the construction is specified for


class Sealer:
    """Seal and open values under the key in `key_path`; `what` names the key and `damaged` says what to
    do in the error when the file is not a key."""

    def __init__(self, key_path: Path, *, what: str, damaged: str) -> None:
        self._path = key_path
        self._what = what
        self._damaged = damaged
        self._aead: AESGCM | None = None

    def load(self) -> None:
        """Read the key now, creating it if there is none yet; raises StateError when it is damaged."""
        self._key()

    def _key(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(secret_key(self._path, what=self._what, damaged=self._damaged))
        return self._aead

    def seal(self, aad: bytes, data: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._key().encrypt(nonce, data, aad)

    def open(self, aad: bytes, sealed: bytes) -> bytes | None:
        """The value, or None when it does not open: sealed under another key or for another owner,
        altered, or cut short."""
        try:
            return self._key().decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)
        except (InvalidTag, ValueError):
            return None
