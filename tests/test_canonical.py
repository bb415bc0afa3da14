"""The fast canonical encoder must write exactly what RFC 8785's reference writes, or defer to it."""

from __future__ import annotations

import math
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from guard_mcp._canonical import canonical_json
from guard_mcp._errors import ConfigError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.text(alphabet=st.characters(max_codepoint=0x7F))
)
keys = st.text(max_size=8) | st.text(alphabet="abcAB_-\u00e9\U0001f600\ufb01", max_size=4)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5), max_leaves=30
)


def _assert_matches_the_reference(value: Any) -> None:  # as canonical_json takes: both decide what they refuse
    try:
        expected = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        with pytest.raises(ConfigError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@settings(max_examples=600, deadline=None)
@given(values)
def test_fast_path_writes_what_rfc8785_writes(value: object) -> None:
    _assert_matches_the_reference(value)


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        -0.0,
        1e16,
        1e21,
        1e-7,
        123456789012345680.0,
        0.1,
        2.5e-5,
        350.0,
        {"\U0001f600": 1, "\ufb01": 2},  # UTF-16 order differs from code point order here
        {"b": 1, "a": [True, None, 'x\u2028\u007f\x1f"\\']},
        "\ud800x",  # a lone surrogate
    ],
)
def test_edge_values_match_the_reference(value: object) -> None:
    _assert_matches_the_reference(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, 2**53, {1: "x"}, {"a": object()}])
def test_what_json_cannot_carry_canonically_is_refused(value: object) -> None:
    with pytest.raises(ConfigError):
        canonical_json(value)


def test_a_value_nested_thousands_deep_is_refused_not_a_recursion_error() -> None:
    value: object = 1
    for _ in range(5000):
        value = [value]
    with pytest.raises(ConfigError, match="nests too deeply"):
        canonical_json({"a": value})
