"""The hash chain and its MAC: exactly which bytes are hashed, and how.

    canonical event = RFC 8785 JSON of {seq, ts, type, request_id, actor, upstream, tool, data}
    hash            = SHA-256(prev_hash as 32 raw bytes || canonical event)      (hex in storage)
    mac             = HMAC-SHA256(deployment key, hash as 32 raw bytes)          (hex in storage)

The first event's prev_hash is 64 zeros. `data` is stored as its canonical JSON text (computed
once, by `canonical_json`, when the event is appended), so building the canonical event needs no
second canonicalisation: the fixed keys are spliced in sorted order around it. That keeps a
verify of a million events inside a few seconds; a property test pins the result to
`canonical_json` of the whole event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re

from guard_mcp._canonical import canonical_json

__all__ = ["GENESIS", "EventEncoder", "EventMac", "canonical_event", "chain_hash", "event_mac"]

GENESIS = "0" * 64

# Characters RFC 8785 escapes inside a string; anything else is copied as is (UTF-8).
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\\ud800-\udfff]')


def _encode_string(value: str) -> str:
    if _NEEDS_ESCAPE.search(value) is None:
        return '"' + value + '"'
    if re.search(r"[\ud800-\udfff]", value):
        # Lone surrogates have no UTF-8 form; let the reference implementation decide.
        return canonical_json(value).decode()
    # json.dumps escapes exactly the RFC 8785 set (\b \f \n \r \t, other controls as \u00xx).
    return json.dumps(value, ensure_ascii=False)


class EventEncoder:
    """Builds canonical events, caching the encoding of strings that repeat (types, actors, tools)."""

    def __init__(self, cache_size: int = 4096) -> None:
        self._cache: dict[str, str] = {}
        self._cache_size = cache_size

    def string(self, value: str | None) -> str:
        if value is None:
            return "null"
        enc = self._cache.get(value)
        if enc is None:
            enc = _encode_string(value)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[value] = enc
        return enc

    def event(
        self,
        seq: int,
        ts: int,
        type_: str,
        request_id: str | None,
        actor: str | None,
        upstream: str | None,
        tool: str | None,
        data_json: str,
    ) -> bytes:
        s = self.string
        return (
            f'{{"actor":{s(actor)},"data":{data_json},"request_id":{s(request_id)},"seq":{seq},"tool":{s(tool)},'
            f'"ts":{ts},"type":{s(type_)},"upstream":{s(upstream)}}}'
        ).encode()


def canonical_event(
    seq: int,
    ts: int,
    type_: str,
    request_id: str | None,
    actor: str | None,
    upstream: str | None,
    tool: str | None,
    data_json: str,
) -> bytes:
    return EventEncoder(0).event(seq, ts, type_, request_id, actor, upstream, tool, data_json)


def chain_hash(prev_hash: bytes, event: bytes) -> bytes:
    h = hashlib.sha256(prev_hash)
    h.update(event)
    return h.digest()


def event_mac(key: bytes, event_hash: bytes) -> bytes:
    return hmac.digest(key, event_hash, "sha256")


class EventMac:
    """HMAC-SHA256 under one key, with the padded key blocks hashed once (RFC 2104).

    Same result as `event_mac`, about three times faster per event: each MAC copies two prepared
    SHA-256 states instead of setting up an HMAC from the key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __call__(self, event_hash: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(event_hash)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()
