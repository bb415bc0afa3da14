"""The guard's ES256 signing keys (permits, audit checkpoints), kept in `<state>/keys/`, and the
decision key (`decision_key`) that MACs approval decisions and session grants.

Each key is `permit-<kid>.pem` (private, 0600). `keyring.json` records, per kid, when it was made,
when it stopped signing and the environment it signs for, so a rotated key stays published until
its last permit has expired and a key made for `sandbox` is never published as `production`'s.

The keyring is re-read only when the file changes: `current()` is on the path of every permit, and
`guard-mcp keys rotate` in another terminal must still take effect without a restart.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from guard_mcp._clock import Clock, SystemClock
from guard_mcp._errors import PermitError
from guard_mcp._jwk import jwk_from_public_key
from guard_mcp._state import secret_key, write_private

__all__ = ["DECISION_KEY_FILE", "KeyStore", "SigningKey", "decision_key", "generate_key_pair"]


# A retired key stays published this long past the longest permit it may have signed, for clocks
# that run a little behind the guard's.
PUBLISH_MARGIN = 60


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    environment: str | None = None


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


DECISION_KEY_FILE = "decisions.key"


def decision_key(keys_dir: Path) -> bytes:
    """The 256-bit key of `keys_dir/decisions.key` (0600), created on first use.

    It MACs every approval decision and session grant (guard_mcp/_approvals/_proof.py): the database
    holds the records, never this key, so a row a database writer inserts or edits does not verify.
    """
    return secret_key(
        keys_dir / DECISION_KEY_FILE,
        what="the decision key",
        damaged="restore it from backup (without it, decided approvals and grants no longer verify)",
    )


_KID = re.compile(r"gm-[0-9a-f]{1,32}")


def _ring_problem(data: dict[str, Any]) -> str | None:
    """What makes a parsed keyring unusable, or None. Checked once per change of the file."""
    keys = data["keys"]
    current = data.get("current")
    if current is not None and current not in keys:
        return f"the current key `{str(current)[:40]}` is not in it"
    for kid, meta in keys.items():
        if not _KID.fullmatch(kid) or not isinstance(meta, dict):
            return f"an entry `{kid[:40]}` is not a key"
        for field in ("created", "seq", "retired", "publish_until"):
            value = meta.get(field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            ):
                return f"key `{kid}` has a `{field}` that is not a number"
        if meta.get("env") is not None and not isinstance(meta["env"], str):
            return f"key `{kid}` has an `env` that is not a name"
    return None


def _newest_first(item: tuple[str, dict[str, Any]]) -> tuple[int, int]:
    meta = item[1]
    return -int(meta.get("created", 0)), -int(meta.get("seq", 0))


class KeyStore:
    """The key ring in `root`. `environment`, when given, is recorded on the keys this store makes
    and claims a key made without one; `jwks()` publishes each key with its environment."""

    def __init__(self, root: Path, clock: Clock | None = None, *, environment: str | None = None) -> None:
        self.root = root
        self.clock = clock or SystemClock()
        self.environment = environment
        self._ring_path = root / "keyring.json"
        self._cache: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._ring_stamp: tuple[int, int, int] | None = None
        self._ring_cached: dict[str, Any] | None = None

    # -- keyring ---------------------------------------------------------------------------------

    def _ring(self) -> dict[str, Any]:
        """The keyring as last written (shared: callers that change it work on `_ring_copy()`)."""
        try:
            st = self._ring_path.stat()
        except FileNotFoundError:
            return {"current": None, "keys": {}}
        except OSError as exc:
            raise PermitError(f"keyring `{self._ring_path}` is unreadable: {exc}; restore it from backup") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._ring_cached is not None and stamp == self._ring_stamp:
            return self._ring_cached
        try:
            data = json.loads(self._ring_path.read_text())
        except FileNotFoundError:
            return {"current": None, "keys": {}}
        except (OSError, ValueError) as exc:
            raise PermitError(f"keyring `{self._ring_path}` is unreadable: {exc}; restore it from backup") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
            raise PermitError(f"keyring `{self._ring_path}` has no `keys` table; restore it from backup")
        problem = _ring_problem(data)
        if problem is not None:
            raise PermitError(f"keyring `{self._ring_path}` is damaged ({problem}); restore it from backup")
        self._ring_cached, self._ring_stamp = data, stamp
        return data

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the keyring's lock for a read-modify-write: two `keys rotate` (or a rotate and a guard
        starting) at once must not both read the old ring and each drop the other's new key."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if fcntl is None:  # no advisory locks here; one operator at a time
            yield
            return
        with open(self.root / ".keyring.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self._ring_cached, self._ring_stamp = None, None  # read what the last holder wrote
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _ring_copy(self) -> dict[str, Any]:
        return copy.deepcopy(self._ring())

    def _save(self, ring: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self._ring_path, json.dumps(ring, indent=2, sort_keys=True).encode())
        self._ring_cached, self._ring_stamp = None, None

    def _new_key(self, ring: dict[str, Any], environment: str | None) -> str:
        kid = "gm-" + secrets.token_hex(6)
        _, private_pem, _ = generate_key_pair()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.root / f"permit-{kid}.pem", private_pem)
        ring["keys"][kid] = {
            "created": int(self.clock.now()),
            "retired": None,
            "publish_until": None,
            "env": environment,
            "seq": len(ring["keys"]) + 1,  # creation order; `created` has only second resolution
        }
        ring["current"] = kid
        return kid

    def exists(self) -> bool:
        return self._ring().get("current") is not None

    def ensure(self) -> str:
        """Create the first key if there is none; return the current kid.

        A current key made without an environment is claimed for this store's environment. One
        made for another environment is refused: run `guard-mcp keys rotate` to make one.
        """
        with self._changing():
            return self._ensure()

    def _ensure(self) -> str:
        ring = self._ring_copy()
        kid = ring.get("current")
        if not kid:
            kid = self._new_key(ring, self.environment)
            self._save(ring)
            return str(kid)
        meta = ring["keys"][kid]
        if self.environment is not None:
            if meta.get("env") is None:
                meta["env"] = self.environment
                self._save(ring)
            elif meta["env"] != self.environment:
                raise PermitError(
                    f"signing key `{kid}` belongs to environment `{meta['env']}`, not `{self.environment}`; "
                    "run `guard-mcp keys rotate` to make a key for this environment"
                )
        return str(kid)

    def rotate(self, max_permit_ttl: float, *, publish_to: Path | None = None) -> tuple[str, str | None]:
        """Make a new signing key; the old one stays published until its last permit expired.

        With `publish_to`, the JWKS there lists the new key before the key starts signing, so an
        upstream reading that file never meets a permit whose key it has not seen.
        """
        with self._changing():
            return self._rotate(max_permit_ttl, publish_to)

    def _rotate(self, max_permit_ttl: float, publish_to: Path | None) -> tuple[str, str | None]:
        ring = self._ring_copy()
        old = ring.get("current")
        env = self.environment
        if old and env is None:
            env = ring["keys"][old].get("env")
        new = self._new_key(ring, env)
        if publish_to is not None:
            ring["current"] = old  # published, not yet signing
            self._save(ring)
            self.write_public_jwks(publish_to)
            ring["current"] = new
        now = int(self.clock.now())
        if old:
            ring["keys"][old]["retired"] = now
            ring["keys"][old]["publish_until"] = now + int(max_permit_ttl) + PUBLISH_MARGIN
        self._save(ring)
        if publish_to is not None:
            self.write_public_jwks(publish_to)
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
            except OSError as exc:
                raise PermitError(f"cannot read signing key `{path}`: {exc.strerror}; check its permissions") from None
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
        meta = ring["keys"].get(kid) or {}
        return SigningKey(str(kid), self._load(str(kid)), meta.get("env"))

    def _published(self, include_retired: bool) -> list[tuple[str, dict[str, Any]]]:
        now = self.clock.now()
        out = []
        for kid, meta in self._ring()["keys"].items():
            until = meta.get("publish_until")
            if include_retired or until is None or until >= now:
                out.append((kid, meta))
        return out

    def public_keys(self, *, include_retired: bool = False) -> dict[str, ec.EllipticCurvePublicKey]:
        """Every key still published (current, and retired ones whose permits may be alive).

        `include_retired` adds keys no longer published, for checking old signatures (the audit
        log's checkpoints) long after their permits expired.
        """
        return {kid: self._load(kid).public_key() for kid, _ in self._published(include_retired)}

    def describe(self) -> list[dict[str, Any]]:
        """Every permit signing key, newest first: `kid`, `state` (`signing`; `published`: retired, its
        permits may still be alive; `retired`), `created`, `retired`, `publish_until`, `environment`."""
        ring, now = self._ring(), self.clock.now()
        out = []
        for kid, meta in sorted(ring["keys"].items(), key=_newest_first):
            until = meta.get("publish_until")
            state = (
                "signing" if kid == ring.get("current") else "published" if until is None or until >= now else "retired"
            )
            out.append(
                {
                    "kid": kid,
                    "state": state,
                    "created": meta.get("created"),
                    "retired": meta.get("retired"),
                    "publish_until": until,
                    "environment": meta.get("env") or self.environment,
                }
            )
        return out

    def jwks(self, environment: str | None = None) -> dict[str, Any]:
        """The JWKS upstreams verify permits with: every key still published, each bound to its
        environment (the key's own, else `environment`, else this store's)."""
        keys = []
        for kid, meta in sorted(self._published(False), key=_newest_first):
            env = meta.get("env") or environment or self.environment
            keys.append(jwk_from_public_key(self._load(kid).public_key(), kid=kid, environment=env))
        return {"keys": keys}

    def refresh_public_jwks(self, path: Path, environment: str | None = None) -> bool:
        """Rewrite `path` if the keys it lists are not the ones published now: a retired key's
        publication ended, or another process rotated. True when it wrote."""
        want = self.jwks(environment)
        try:
            if json.loads(path.read_bytes()) == want:
                return False
        except (OSError, ValueError):
            pass  # missing or damaged: write it
        self.write_public_jwks(path, environment)
        return True

    def write_public_jwks(self, path: Path, environment: str | None = None) -> None:
        """Write `jwks()` to `path` atomically (0644: it is public), for upstreams on this machine."""
        data = json.dumps(self.jwks(environment), indent=2, sort_keys=True).encode()
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            raise PermitError(f"cannot write JWKS `{path}`: {exc.strerror}; check the directory is writable") from None
