"""The stripping every piece of upstream text goes through before a client shows it."""

from __future__ import annotations

import pytest

from guard_mcp._catalog import clean_text


@pytest.mark.parametrize("hidden", ["\x1b", "\u200b", "\u202e", "\u2066", "\u2028", "\u2029", "\u2060", "\u061c",
                                    "\ufeff", "\r"])
def test_invisible_and_reordering_characters_are_removed(hidden: str) -> None:
    assert clean_text(f"pay{hidden} now", 100) == "pay now"


def test_tabs_and_newlines_stay_and_long_text_is_cut_visibly() -> None:
    assert clean_text("a\tb\nc", 100) == "a\tb\nc"
    assert clean_text("x" * 20, 5) == "xxxxx [… truncated by guard-mcp]"
    assert clean_text(None, 5) == ""
