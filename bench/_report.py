"""What the latency benchmarks share: the statistics of a target's samples, the versions and the
machine they ran with, and the table a person reads."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping
from importlib import metadata
from typing import Any

PACKAGES = ("mcp", "fastmcp", "guard-mcp")


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def latency(samples: list[float]) -> dict[str, Any]:
    """An available target's row: how many samples, and their median, p99, mean, min and max (ms)."""
    ordered = sorted(samples)
    return {
        "available": True,
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 4),
        "p99_ms": round(percentile(ordered, 99), 4),
        "mean_ms": round(statistics.fmean(ordered), 4),
        "min_ms": round(ordered[0], 4),
        "max_ms": round(ordered[-1], 4),
    }


def version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {pkg: version(pkg) for pkg in PACKAGES}


def cpus() -> int | None:
    return os.cpu_count()


def print_latencies(
    results: Mapping[str, Mapping[str, Any]], *, width: int, column: tuple[str, str] | None = None
) -> None:
    """One line a target: median, p99, mean and min in ms, or why it is not available; `column` adds
    (its heading, the row's key) at the end."""
    heading, key = column or ("", "")
    tail = f"   {heading}" if column else ""
    print(f"{'target':<{width}} {'median ms':>10} {'p99 ms':>9} {'mean ms':>9} {'min ms':>8}{tail}")
    for name, row in results.items():
        if row["available"]:
            tail = f"   {row[key]}" if column else ""
            print(
                f"{name:<{width}} {row['median_ms']:>10.3f} {row['p99_ms']:>9.3f} {row['mean_ms']:>9.3f} "
                f"{row['min_ms']:>8.3f}{tail}"
            )
        else:
            print(f"{name:<{width}} not available: {row['reason']}")
