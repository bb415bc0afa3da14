"""Signing and verifying bundles: the detached signature, signer key ids, the rollback ledger.

The signature lives next to the bundle (`BUNDLE.sig`): a compact JWS, ES256, whose header names
the signer's `kid` (the RFC 7638 thumbprint of its public key, so no key registry is needed) and
whose payload is `{"policy": NAME, "version": N, "sha256": HEX, "size": BYTES}` of the bundle.

`verify_bundle` is the only way a bundle's bytes reach the evaluator. It reads the file once,
refuses anything it cannot vouch for (`PolicyRefused.reason` says which check failed), and the
bytes it returns are the bytes it checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from guard_mcp._canonical import canonical_json
from guard_mcp._errors import PolicyError, PolicyRefused, StateError
from guard_mcp._jwk import b64url_encode
from guard_mcp._policy._source import BUNDLE_FORMAT
from guard_mcp._state import StateDir, write_private

__all__ = [
    "MAX_BUNDLE_BYTES",
    "SIGNATURE_SUFFIX",
    "BundleInfo",
    "VerifiedBundle",
    "VersionLedger",
    "inspect_bundle",
    "key_id",
    "load_private_key",
    "load_trusted_keys",
    "read_bundle",
    "sign_bundle",
    "signature_path",
    "verify_bundle",
]

MAX_BUNDLE_BYTES = 4 * 1024 * 1024
_MAX_SIGNATURE_BYTES = 4096
SIGNATURE_SUFFIX = ".sig"
_JWS_TYPE = "guard-mcp-policy+jws"


def signature_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + SIGNATURE_SUFFIX)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of a P-256 public key."""
    numbers = public_key.public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": b64url_encode(numbers.y.to_bytes(32, "big")),
    }
    digest = hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()
    return b64url_encode(digest)


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise PolicyError(f"signing key `{path}` does not exist; run `guard-mcp keys init --policy-signer`") from None
    except (OSError, ValueError, TypeError) as exc:
        raise PolicyError(f"signing key `{path}` is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PolicyError(f"signing key `{path}` is not an EC P-256 key; policy bundles are signed with ES256")
    return key


def _load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise PolicyError(f"trusted policy key `{path}` does not exist; fix `guard.trusted_policy_keys`") from None
    except (OSError, ValueError, TypeError) as exc:
        raise PolicyError(f"trusted policy key `{path}` is not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise PolicyError(f"trusted policy key `{path}` is not an EC P-256 key; policy bundles are signed with ES256")
    return key


def load_trusted_keys(paths: list[Path]) -> dict[str, ec.EllipticCurvePublicKey]:
    """kid -> key for every configured public key file."""
    return {key_id(k): k for k in (_load_public_key(p) for p in paths)}


@dataclass(frozen=True)
class BundleInfo:
    name: str
    version: int
    rules: int


def inspect_bundle(data: bytes, *, where: str = "bundle") -> BundleInfo:
    """The bundle's name, version and rule count; PolicyRefused(`malformed`) if it has no such shape."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PolicyRefused(
            f"{where} is not JSON; compile it with `guard-mcp policy compile`", reason="malformed"
        ) from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != BUNDLE_FORMAT
        or not isinstance(doc.get("policy"), str)
        or isinstance(doc.get("version"), bool)
        or not isinstance(doc.get("version"), int)
        or not isinstance(doc.get("rules"), list)
    ):
        raise PolicyRefused(
            f"{where} is not a format-{BUNDLE_FORMAT} policy bundle; recompile it with `guard-mcp policy compile`",
            reason="malformed",
        )
    return BundleInfo(doc["policy"], doc["version"], len(doc["rules"]))


def _claims(data: bytes, info: BundleInfo) -> dict[str, Any]:
    return {"policy": info.name, "version": info.version, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def sign_bundle(data: bytes, private_key: ec.EllipticCurvePrivateKey) -> str:
    """A compact detached-style JWS over the bundle's digest (see the module docstring)."""
    info = inspect_bundle(data)
    headers = {"kid": key_id(private_key.public_key()), "typ": _JWS_TYPE}
    return jwt.PyJWS().encode(canonical_json(_claims(data, info)), private_key, algorithm="ES256", headers=headers)


def read_bundle(path: Path, *, limit: int = MAX_BUNDLE_BYTES) -> bytes:
    """Read at most `limit` bytes; a larger file is refused before it is read into memory."""
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise PolicyRefused(
                    f"policy bundle `{path}` is {size} bytes, over the {limit}-byte limit; "
                    "split the policy or remove unused rules",
                    reason="too_large",
                )
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise PolicyRefused(
            f"policy bundle `{path}` does not exist; check `guard.policy` or compile and sign one",
            reason="missing_bundle",
        ) from None
    except OSError as exc:
        raise PolicyRefused(f"cannot read policy bundle `{path}`: {exc.strerror}", reason="missing_bundle") from None
    if len(data) > limit:  # grew while we looked
        raise PolicyRefused(f"policy bundle `{path}` is over the {limit}-byte limit", reason="too_large")
    return data


@dataclass(frozen=True)
class VerifiedBundle:
    data: bytes
    sha256: str
    name: str
    version: int
    rules: int
    kid: str

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


_SERVING = "@serving"  # not a policy name (names start with a letter)


class VersionLedger:
    """The highest version of each policy this guard accepted, so an older signed bundle cannot
    be replayed (rollback), and the digest it had, so one version cannot mean two policies.

    It also holds the name of the policy this guard serves: a bundle of another name (any other
    policy the same key ever signed, say a permissive one for a test environment) is refused
    until an operator switches to it deliberately (`guard-mcp policy accept`).
    """

    def __init__(self, state: StateDir) -> None:
        self.path = state.root / "policy-versions.json"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Fail closed: a ledger we cannot read could hide a rollback.
            raise PolicyRefused(
                f"policy version ledger `{self.path}` is unreadable ({exc}); restore it or remove it "
                "deliberately to reset rollback protection",
                reason="ledger_unreadable",
            ) from None
        if not isinstance(data, dict):
            raise PolicyRefused(
                f"policy version ledger `{self.path}` is not a JSON object; restore it", reason="ledger_unreadable"
            )
        return data

    def accepted(self, name: str) -> tuple[int, str] | None:
        entry = self._read().get(name)
        if entry is None:
            return None
        version = entry.get("version") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if isinstance(version, bool) or not isinstance(version, int) or not isinstance(digest, str):
            raise PolicyRefused(
                f"policy version ledger `{self.path}` has a malformed entry for `{name}`; restore the file",
                reason="ledger_unreadable",
            )
        return version, digest

    def serving(self) -> str | None:
        data = self._read()
        name = data.get(_SERVING)
        if isinstance(name, str):
            return name
        # A ledger written before the served name was recorded: the one policy it lists is the one served.
        names = [k for k in data if k != _SERVING]
        return names[0] if len(names) == 1 else None

    def check(self, bundle: VerifiedBundle, *, switching: bool = False) -> None:
        """Refuse a rollback, a reused version, and (unless `switching`) a policy of another name."""
        serving = self.serving()
        if serving is not None and serving != bundle.name and not switching:
            raise PolicyRefused(
                f"the bundle is policy `{bundle.name}` but this guard serves `{serving}`; to switch "
                f"policies on purpose run `guard-mcp policy accept` with this bundle",
                reason="policy_switched",
            )
        last = self.accepted(bundle.name)
        if last is None:
            return
        version, digest = last
        if bundle.version < version:
            raise PolicyRefused(
                f"policy `{bundle.name}` version {bundle.version} is older than version {version} "
                "this guard already accepted (rollback); sign a newer version",
                reason="rollback",
            )
        if bundle.version == version and bundle.sha256 != digest:
            raise PolicyRefused(
                f"policy `{bundle.name}` version {version} was accepted before with different "
                "content; raise `version` whenever the policy changes",
                reason="version_reused",
            )

    def record(self, bundle: VerifiedBundle) -> None:
        data = self._read()
        data[_SERVING] = bundle.name
        last = data.get(bundle.name)
        if not (isinstance(last, dict) and isinstance(last.get("version"), int) and last["version"] > bundle.version):
            data[bundle.name] = {"version": bundle.version, "sha256": bundle.sha256}
        try:
            write_private(self.path, json.dumps(data, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise StateError(f"cannot write policy version ledger `{self.path}`: {exc.strerror}") from None


def _refuse(message: str, reason: str) -> PolicyRefused:
    return PolicyRefused(message, reason=reason)


def verify_bundle(
    path: Path,
    trusted: dict[str, ec.EllipticCurvePublicKey],
    *,
    ledger: VersionLedger | None = None,
    switching: bool = False,
    limit: int = MAX_BUNDLE_BYTES,
) -> VerifiedBundle:
    """Read `path` and its signature and check everything the guard checks before loading."""
    if not trusted:
        raise _refuse(
            f"policy `{path}` is configured but `guard.trusted_policy_keys` is empty; list the signer's "
            "public key there",
            "no_trusted_keys",
        )
    data = read_bundle(path, limit=limit)
    sig_path = signature_path(path)
    try:
        token = sig_path.read_bytes()[: _MAX_SIGNATURE_BYTES + 1]
    except FileNotFoundError:
        raise _refuse(
            f"policy bundle `{path}` has no signature `{sig_path.name}`; sign it with `guard-mcp policy sign`",
            "missing_signature",
        ) from None
    except OSError as exc:
        raise _refuse(f"cannot read signature `{sig_path}`: {exc.strerror}", "missing_signature") from None
    try:
        if len(token) > _MAX_SIGNATURE_BYTES:
            raise jwt.InvalidTokenError("too long")
        header = jwt.get_unverified_header(token.strip())
    except jwt.PyJWTError:
        raise _refuse(f"signature `{sig_path}` is not a compact JWS; sign the bundle again", "bad_signature") from None
    kid = header.get("kid")
    if header.get("alg") != "ES256" or not isinstance(kid, str):
        raise _refuse(f"signature `{sig_path}` must be ES256 with a `kid`; sign the bundle again", "bad_signature")
    key = trusted.get(kid)
    if key is None:
        raise _refuse(
            f"policy bundle `{path}` is signed by key `{kid}`, which is not in `guard.trusted_policy_keys`; "
            "add that signer's public key or sign with a trusted key",
            "unknown_key",
        )
    try:
        payload = jwt.PyJWS().decode_complete(token.strip(), key=key, algorithms=["ES256"])["payload"]
        claims = json.loads(payload)
    except (jwt.PyJWTError, ValueError):
        raise _refuse(
            f"signature `{sig_path}` does not verify with key `{kid}`; the signature was altered", "bad_signature"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if not isinstance(claims, dict) or claims.get("sha256") != digest or claims.get("size") != len(data):
        raise _refuse(
            f"policy bundle `{path}` does not match its signature (SHA-256 differs): the bundle was "
            "changed after signing; sign it again",
            "digest_mismatch",
        )
    info = inspect_bundle(data, where=f"policy bundle `{path}`")
    if claims.get("policy") != info.name or claims.get("version") != info.version:
        raise _refuse(
            f"policy bundle `{path}` names `{info.name}@{info.version}` but its signature names "
            f"`{claims.get('policy')}@{claims.get('version')}`; sign it again",
            "digest_mismatch",
        )
    verified = VerifiedBundle(data=data, sha256=digest, name=info.name, version=info.version, rules=info.rules, kid=kid)
    if ledger is not None:
        ledger.check(verified, switching=switching)
    return verified
