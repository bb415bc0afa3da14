from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from guard_mcp._naming import VALID_NAME, namespace_tools


def test_plain_names_are_namespaced() -> None:
    assert namespace_tools("shop", ["refund", "lookup_order"]) == {
        "shop__refund": "refund",
        "shop__lookup_order": "lookup_order",
    }


def test_hostile_names_are_made_safe_and_cannot_take_an_honest_name() -> None:
    names = namespace_tools("shop", ["refund", "refund\n", "ref und", "refund;rm -rf /", "", "a" * 200, "ümlaut"])
    assert len(names) == 7
    assert names["shop__refund"] == "refund"
    for exposed in names:
        assert VALID_NAME.match(exposed), exposed


def test_mapping_is_independent_of_listing_order() -> None:
    tools = ["x.y", "x_y", "x y", "x-y", "X_Y", "x__y"]
    first = namespace_tools("up", tools)
    shuffled = tools[:]
    random.Random(7).shuffle(shuffled)
    assert namespace_tools("up", shuffled) == first


@given(st.lists(st.text(max_size=150), max_size=20))
def test_any_tool_list_maps_injectively_to_valid_names(tools: list[str]) -> None:
    names = namespace_tools("upstream-1", tools)
    assert set(names.values()) == set(tools)
    assert all(VALID_NAME.match(n) for n in names)
