"""The one canonical form every hash in guard-mcp is computed over: RFC 8785 (JCS).

`rfc8785` is the reference; it is pure Python and costs tens of microseconds a small object. For
the values that make up nearly every call (objects with ASCII keys, strings, safe integers,
booleans, null, and floats that print without an exponent) the standard library's C encoder with
sorted keys and no whitespace produces byte-for-byte the same text: JSON string escaping is the
same set in both, ASCII keys sort the same by code point as by UTF-16 unit, and integers print
alike. Anything outside that set (non-ASCII keys, integral or exponent floats, other types) goes
to `rfc8785`. `tests/test_canonical.py` holds the two equal on generated values.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

from guard_mcp._errors import ConfigError

__all__ = ["canonical_json", "payload_hash", "sha256_hex"]

_SAFE = 2**53 - 1
_encode = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False, check_circular=False
).encode


def _simple(value: Any, depth: int = 0) -> bool:
    """True when the stdlib encoder writes `value` exactly as RFC 8785 does."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(-_SAFE <= value <= _SAFE)
    if depth > 64:  # deep nesting: let the reference decide (and refuse what it refuses)
        return False
    if t is dict:
        return all(type(k) is str and k.isascii() and _simple(v, depth + 1) for k, v in value.items())
    if t is list or t is tuple:
        return all(_simple(v, depth + 1) for v in value)
    if t is float:
        text = repr(value)  # finite, not integral, no exponent: both print the shortest round-trip digits
        return "e" not in text and "n" not in text and not value.is_integer()
    return False


def canonical_json(value: Any) -> bytes:
    """Serialise `value` as RFC 8785 canonical JSON (UTF-8 bytes).

    Raises ConfigError for values JSON cannot carry canonically (NaN, infinities, integers
    beyond IEEE-754 range, non-string keys).
    """
    if _simple(value):
        try:
            return _encode(value).encode()
        except UnicodeEncodeError:
            pass  # a lone surrogate: the reference raises its own error for it
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ConfigError(f"value cannot be canonicalised as JSON: {exc}") from None
    except RecursionError:  # the reference recurses once per level
        raise ConfigError(
            "value nests too deeply to be canonicalised as JSON (hundreds of levels); flatten it"
        ) from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload_hash(arguments: Any) -> str:
    """`sha256:` + hex digest of the canonical JSON of a tool call's arguments."""
    return "sha256:" + sha256_hex(canonical_json(arguments))
