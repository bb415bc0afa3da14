"""Hostile text made safe to show: control, format, private-use and line/paragraph separator characters
as `\\uXXXX` codes, so a value cannot end early, fake a line, or reorder text with bidirectional overrides.

Its own module, with nothing heavy beside it: every command's error line and table cell goes through it.
"""

from __future__ import annotations

import unicodedata

__all__ = ["code_of", "escape_text", "is_unsafe", "show_codes"]

# Unicode categories a terminal or chat client may render invisibly or as layout.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}


def is_unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES or (ch.isspace() and ch != " ")


def code_of(ch: str) -> str:
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape_text(text: str) -> str:
    """`text` with every control, format, private-use and line/paragraph separator as `\\uXXXX`."""
    return show_codes(text.replace("\\", "\\\\"))  # backslashes first: the codes' own are not doubled


def show_codes(text: str) -> str:
    """`text` with the characters `escape_text` codes as `\\uXXXX`, its backslashes left as they are (for
    messages that quote paths and patterns, where a doubled backslash would misquote them)."""
    return "".join(code_of(ch) if is_unsafe(ch) else ch for ch in text)
