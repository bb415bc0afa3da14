"""The bytes the chain hashes are exactly RFC 8785 of the whole event, however they are built."""

from __future__ import annotations

import hmac
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from guard_mcp._audit._chain import EventEncoder, EventMac, canonical_event, event_mac
from guard_mcp._canonical import canonical_json

# Control characters, quotes, backslashes, non-BMP: everything the string encoding must get right.
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ['"', "\\", "\n\t\b\f\r", "\x00\x1f\x7f", "é😀", "\u2028"]
)
optional = st.none() | texts
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@given(
    seq=st.integers(1, 2**53 - 1),
    ts=st.integers(0, 2**53 - 1),
    type_=texts,
    request_id=optional,
    actor=optional,
    upstream=optional,
    tool=optional,
    data=st.dictionaries(texts, json_values, max_size=5),
)
def test_spliced_event_equals_canonical_json_of_the_event(
    seq: int,
    ts: int,
    type_: str,
    request_id: str | None,
    actor: str | None,
    upstream: str | None,
    tool: str | None,
    data: dict[str, Any],
) -> None:
    data_json = canonical_json(data).decode()
    whole = {
        "seq": seq,
        "ts": ts,
        "type": type_,
        "request_id": request_id,
        "actor": actor,
        "upstream": upstream,
        "tool": tool,
        "data": data,
    }
    expected = canonical_json(whole)
    assert canonical_event(seq, ts, type_, request_id, actor, upstream, tool, data_json) == expected
    # The caching encoder the writer and the verifier use agrees too, on first use and from its cache.
    enc = EventEncoder()
    for _ in range(2):
        assert enc.event(seq, ts, type_, request_id, actor, upstream, tool, data_json) == expected
    assert json.loads(expected)["data"] == json.loads(data_json)


@given(key=st.binary(min_size=0, max_size=150), message=st.binary(max_size=64))
def test_prepared_mac_equals_hmac_sha256(key: bytes, message: bytes) -> None:
    # Keys longer than a SHA-256 block are hashed first; shorter ones are zero-padded (RFC 2104).
    assert EventMac(key)(message) == hmac.digest(key, message, "sha256") == event_mac(key, message)
