"""The demo: a shop upstream, a scripted agent and human (`guard-mcp demo`), and attacks against a real
guard (`guard-mcp simulate`). Nothing in the core imports it; commands reach it through these names,
each loaded on first use (the demo and the simulation start processes and import the MCP client).
"""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guard_mcp.demo._runner import run_demo
    from guard_mcp.demo._simulate import SCENARIOS, ScenarioResult, run_scenarios

__all__ = ["SCENARIOS", "ScenarioResult", "embedded_config_path", "run_demo", "run_scenarios"]

_LAZY = {
    "run_demo": "guard_mcp.demo._runner",
    "SCENARIOS": "guard_mcp.demo._simulate",
    "ScenarioResult": "guard_mcp.demo._simulate",
    "run_scenarios": "guard_mcp.demo._simulate",
}


def embedded_config_path() -> Path:
    """The demo upstreams.yaml shipped inside the package."""
    return Path(str(resources.files("guard_mcp.demo").joinpath("upstreams.yaml")))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module `guard_mcp.demo` has no attribute `{name}`")
