"""The public surface: what `guard_mcp` and `guard_mcp.verify` export, pinned. A change here is a
change for everyone who imports the package: make it on purpose, and say so in its commit message."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import typing
from enum import Enum

import pytest
from pydantic import BaseModel

import guard_mcp
import guard_mcp.verify
from guard_mcp._errors import GuardError

GUARD_MCP = [
    "ActionBundle",
    "ActionSchema",
    "Actor",
    "ApprovalError",
    "AuditError",
    "AuditIntegrityError",
    "BlastRadius",
    "Category",
    "ConfigError",
    "Decision",
    "Effect",
    "GuardError",
    "PermitError",
    "PolicyError",
    "PolicyRefused",
    "Reversibility",
    "Risk",
    "Sensitivity",
    "StateError",
    "Tier",
    "TraceEntry",
    "UpstreamError",
]

VERIFY = [
    "MAX_LEEWAY",
    "MAX_PERMIT_BYTES",
    "MAX_PERMIT_TTL",
    "PERMIT_META_KEY",
    "PERMIT_TYP",
    "REASONS",
    "REFUSAL_META_KEY",
    "REPLAY_MEMORY",
    "MemoryReplayStore",
    "PermitVerifier",
    "PostgresReplayStore",
    "ReplayStore",
    "SqliteReplayStore",
    "VerifyResult",
    "requires_permit",
]


def test_guard_mcp_exports_exactly_its_public_names() -> None:
    assert guard_mcp.__all__ == GUARD_MCP
    for name in GUARD_MCP:
        assert getattr(guard_mcp, name) is not None
    with pytest.raises(AttributeError, match="module `guard_mcp` has no attribute `Nope`"):
        _ = guard_mcp.Nope


def test_guard_mcp_verify_exports_exactly_its_public_names() -> None:
    assert guard_mcp.verify.__all__ == VERIFY
    for name in VERIFY:
        assert hasattr(guard_mcp.verify, name), name


def _named_types(annotation: object) -> typing.Iterator[type]:
    """The classes an annotation names (`tuple[TraceEntry, ...]`, `Risk | None` → TraceEntry, Risk)."""
    if isinstance(annotation, type) and annotation.__module__ == "guard_mcp._models":
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _named_types(arg)


def test_every_type_a_public_model_field_has_is_exported_too() -> None:
    exported = {getattr(guard_mcp, name) for name in GUARD_MCP}
    models = [t for t in exported if isinstance(t, type) and issubclass(t, BaseModel)]
    assert models  # the contracts are there to look at
    missing = {
        f"{model.__name__}.{field}: {t.__name__}"
        for model in models
        for field, info in model.model_fields.items()
        for t in _named_types(info.annotation)
        if t not in exported
    }
    assert not missing, f"export these from guard_mcp as well: {sorted(missing)}"
    assert {t for t in exported if isinstance(t, type) and issubclass(t, Enum)} >= {
        guard_mcp.Category,
        guard_mcp.Reversibility,
        guard_mcp.BlastRadius,
        guard_mcp.Sensitivity,
        guard_mcp.Tier,
        guard_mcp.Effect,
    }


def test_every_error_the_package_defines_is_in_the_error_tree() -> None:
    # Underscored exceptions are control flow caught inside their own module; the demo shop is an
    # upstream, not the guard, and has an error of its own.
    outside = set()
    for info in pkgutil.walk_packages(guard_mcp.__path__, "guard_mcp."):
        if info.name.endswith(".__main__"):  # runs the command line when imported
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
                and not issubclass(value, GuardError)
                and info.name != "guard_mcp.demo._shopdb"
            ):
                outside.add(f"{info.name}.{name}")
    assert not outside, f"make these subclasses of a GuardError branch (guard_mcp/_errors.py): {sorted(outside)}"


@pytest.mark.subprocess  # a fresh interpreter: what importing the package loads
def test_importing_guard_mcp_loads_the_errors_and_not_the_contracts() -> None:
    code = (
        "import sys, guard_mcp\n"
        "print(sorted(m for m in ('pydantic', 'guard_mcp._models') if m in sys.modules))\n"
        "guard_mcp.ActionSchema\n"
        "print('guard_mcp._models' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout + out.stderr
