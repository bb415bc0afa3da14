"""Durations as operators write them: `90`, `90s`, `5m`, `2h`, `1d`, `250ms`.

Its own module, apart from the config models: `guard-mcp audit tail --since 2h` reads one without pydantic.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`90`, `90s`, `5m`, `2h`, `1d`, `250ms` → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like `60s`, `5m` or `2h`")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"`{value}` is not a duration; write it like `60s`, `5m` or `2h`")
    if not math.isfinite(seconds):
        raise ValueError(f"`{value}` is not a finite duration; write it like `60s`, `5m` or `2h`")
    if seconds <= 0:
        raise ValueError(f"`{value}` must be longer than zero")
    return seconds
