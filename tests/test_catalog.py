"""The stripping every piece of upstream text goes through before a client shows it."""

from __future__ import annotations

import pytest

from guard_mcp._catalog import clean_text


@pytest.mark.parametrize("hidden", ["\x1b", "\u200b", "\u202e", "\u2066", "\u2028", "\u2029", "\u2060", "\u061c",
                                    "\ufeff", "\r"])
def test_invisible_and_reordering_characters_are_removed(hidden: str) -> None:
    assert clean_text(f"pay{hidden} now", 100) == "pay now"


@pytest.mark.parametrize("c1", ["\x9b", "\x85", "\x90", "\x9d", "\x80", "\x9f"])
def test_attack_an_8_bit_control_in_upstream_text_cannot_rewrite_the_line_a_terminal_shows(c1: str) -> None:
    # CSI (\x9b) moves the cursor and erases in terminals that honour 8-bit controls, so `\x9b1G\x9b2K` would
    # wipe the "`shop` asks:" label off a relayed prompt; NEL (\x85) breaks the line. ESC is removed already.
    assert clean_text(f"pay{c1}1G{c1}2K now", 100) == "pay1G2K now"


def test_tabs_and_newlines_stay_and_long_text_is_cut_visibly() -> None:
    assert clean_text("a\tb\nc", 100) == "a\tb\nc"
    assert clean_text("x" * 20, 5) == "xxxxx [… truncated by guard-mcp]"
    assert clean_text(None, 5) == ""
