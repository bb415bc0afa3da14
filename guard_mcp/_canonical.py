"""The one canonical form every hash in guard-mcp is computed over: RFC 8785 (JCS)."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from guard_mcp._errors import ConfigError

__all__ = ["canonical_json", "payload_hash", "sha256_hex"]


def canonical_json(value: Any) -> bytes:
    """Serialise `value` as RFC 8785 canonical JSON (UTF-8 bytes).

    Raises ConfigError for values JSON cannot carry canonically (NaN, infinities, integers
    beyond IEEE-754 range, non-string keys).
    """
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ConfigError(f"value cannot be canonicalised as JSON: {exc}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload_hash(arguments: Any) -> str:
    """`sha256:` + hex digest of the canonical JSON of a tool call's arguments."""
    return "sha256:" + sha256_hex(canonical_json(arguments))
