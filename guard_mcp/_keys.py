"""The guard's ES256 signing keys (permits, audit checkpoints), kept in `<state>/keys/`.

Each key is `permit-<kid>.pem` (private, 0600). `keyring.json` records, per kid, when it was made
and when it stopped signing, so a rotated key stays published until its last permit has expired.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from guard_mcp._clock import Clock, SystemClock
from guard_mcp._errors import PermitError
from guard_mcp._state import write_private

__all__ = ["KeyStore", "SigningKey", "generate_key_pair"]


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey


def generate_key_pair() -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    """A fresh P-256 key: (key, private PEM, public PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, private_pem, public_pem


class KeyStore:
    def __init__(self, root: Path, clock: Clock | None = None) -> None:
        self.root = root
        self.clock = clock or SystemClock()
        self._ring_path = root / "keyring.json"
        self._cache: dict[str, ec.EllipticCurvePrivateKey] = {}

    # -- keyring ---------------------------------------------------------------------------------

    def _ring(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._ring_path.read_text())
        except FileNotFoundError:
            return {"current": None, "keys": {}}
        except (OSError, ValueError) as exc:
            raise PermitError(f"keyring `{self._ring_path}` is unreadable: {exc}; restore it from backup") from None
        return data

    def _save(self, ring: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self._ring_path, json.dumps(ring, indent=2, sort_keys=True).encode())

    def _new_key(self, ring: dict[str, Any]) -> str:
        kid = "gm-" + secrets.token_hex(6)
        _, private_pem, _ = generate_key_pair()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.root / f"permit-{kid}.pem", private_pem)
        ring["keys"][kid] = {"created": int(self.clock.now()), "retired": None, "publish_until": None}
        ring["current"] = kid
        return kid

    def exists(self) -> bool:
        return self._ring().get("current") is not None

    def ensure(self) -> str:
        """Create the first key if there is none; return the current kid."""
        ring = self._ring()
        if ring.get("current"):
            return str(ring["current"])
        kid = self._new_key(ring)
        self._save(ring)
        return kid

    def rotate(self, max_permit_ttl: float) -> tuple[str, str | None]:
        """Make a new signing key; the old one stays published until its last permit expired."""
        ring = self._ring()
        old = ring.get("current")
        now = int(self.clock.now())
        if old:
            ring["keys"][old]["retired"] = now
            ring["keys"][old]["publish_until"] = now + int(max_permit_ttl) + 60
        new = self._new_key(ring)
        self._save(ring)
        return new, old

    # -- use -------------------------------------------------------------------------------------

    def _load(self, kid: str) -> ec.EllipticCurvePrivateKey:
        key = self._cache.get(kid)
        if key is None:
            path = self.root / f"permit-{kid}.pem"
            try:
                loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except FileNotFoundError:
                raise PermitError(f"signing key `{path}` is missing; run `guard-mcp keys init`") from None
            except ValueError as exc:
                raise PermitError(f"signing key `{path}` is not a valid PEM key: {exc}") from None
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise PermitError(f"signing key `{path}` is not an EC P-256 key; run `guard-mcp keys rotate`")
            key = self._cache[kid] = loaded
        return key

    def current(self) -> SigningKey:
        ring = self._ring()
        kid = ring.get("current")
        if not kid:
            raise PermitError(f"no signing key in `{self.root}`; run `guard-mcp keys init`")
        return SigningKey(str(kid), self._load(str(kid)))

    def public_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        """Every key still published (current, and retired ones whose permits may be alive)."""
        ring = self._ring()
        now = self.clock.now()
        out: dict[str, ec.EllipticCurvePublicKey] = {}
        for kid, meta in ring["keys"].items():
            until = meta.get("publish_until")
            if until is None or until >= now:
                out[kid] = self._load(kid).public_key()
        return out
