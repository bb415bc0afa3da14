"""Namespaced tool names: `{upstream}__{tool}`, valid for the strictest clients (`^[a-zA-Z0-9_-]{1,64}$`).

An upstream controls its tool names, so a name is hostile until shown otherwise: characters outside
the safe set, a length that would be cut, or a name built to collide with another are all mapped
to a safe name with a short digest of the original, deterministically (the same tool list always
yields the same names, whatever order the upstream lists them in).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

__all__ = ["MAX_NAME", "SEPARATOR", "VALID_NAME", "namespace_tools"]

MAX_NAME = 64
SEPARATOR = "__"
VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")


def _digest(original: str) -> str:
    return hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def namespace_tools(upstream: str, tools: Iterable[str]) -> dict[str, str]:
    """Map each exposed name to the upstream's original tool name."""
    out: dict[str, str] = {}
    # Clean names first, so a hostile name cannot take the plain name an honest tool would get.
    ordered = sorted(set(tools), key=lambda t: (_UNSAFE.search(t) is not None or not t, t))
    for original in ordered:
        safe = _UNSAFE.sub("_", original).strip("_") or "tool"
        name = f"{upstream}{SEPARATOR}{safe}"
        if safe != original or len(name) > MAX_NAME or name in out:
            keep = MAX_NAME - len(upstream) - len(SEPARATOR) - 9
            name = f"{upstream}{SEPARATOR}{safe[:keep]}_{_digest(original)}"
        n = 1
        while name in out:  # a digest collision: practically never, still deterministic
            name = f"{name[: MAX_NAME - 3]}_{n:02d}"
            n += 1
        out[name] = original
    return out
