"""The layers stated in guard_mcp/__init__.py, checked on the source (every import, also those
inside functions and under TYPE_CHECKING):

- the core never imports `guard_mcp.cli` or `guard_mcp.demo`;
- nothing outside a package imports that package's private modules: it goes through the facade.

KNOWN_DEBTS lists the imports that break them today, each a debt to pay off; an entry that is no
longer needed fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "guard_mcp"
OUTSIDE_THE_CORE = ("guard_mcp.cli", "guard_mcp.demo")

# importer -> the private modules of other packages it imports (or the cli/demo modules a core
# module imports). Each is a known debt, not a pattern to follow.
KNOWN_DEBTS: dict[str, frozenset[str]] = {
    # The console shares the approvals' database and a prompt helper past the approvals' facade.
    "guard_mcp._console._context": frozenset({"guard_mcp._approvals._prompt"}),
    "guard_mcp._console._store": frozenset({"guard_mcp._approvals._db"}),
    # The outbox reads the audit chain and the approvals' database past their facades.
    "guard_mcp._notify._outbox": frozenset(
        {"guard_mcp._approvals._db", "guard_mcp._audit._chain", "guard_mcp._audit._store"}
    ),
    # The replay store takes only the URL helpers, lazily, so that `import guard_mcp.verify` stays light;
    # the light part of the storage layer could be a facade of its own.
    "guard_mcp._replay": frozenset({"guard_mcp._store._url"}),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def packages() -> frozenset[str]:
    return frozenset(module_name(p) for p in PACKAGE.rglob("__init__.py"))


def imported(path: Path) -> set[str]:
    """Every guard_mcp module `path` imports, by its full name (`from P import _x` counts `P._x`)."""
    name = module_name(path)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name.startswith("_"))
    return {m for m in found if m == "guard_mcp" or m.startswith("guard_mcp.")}


def owner(module: str) -> str:
    """The package a module belongs to (itself, for a package's `__init__`)."""
    return module if module in packages() else module.rpartition(".")[0]


def is_core(module: str) -> bool:
    return not any(module == p or module.startswith(p + ".") for p in OUTSIDE_THE_CORE)


def breaks(importer: str, target: str) -> str | None:
    if is_core(importer) and not is_core(target):
        return "the core imports cli/demo"
    package, _, leaf = target.rpartition(".")
    if package in packages() and package != "guard_mcp" and leaf.startswith("_") and target not in packages():
        inside = importer == package or importer.startswith(package + ".")
        if not inside:
            return f"a private module of `{package}` imported from outside it (use the facade `{package}`)"
    return None


def violations() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for target in sorted(imported(path)):
            why = breaks(importer, target)
            if why is not None:
                found.setdefault(importer, {})[target] = why
    return found


def test_the_core_never_imports_the_commands_or_the_demo_and_packages_are_reached_through_their_facade() -> None:
    problems = [
        f"{importer} imports {target}: {why}"
        for importer, targets in violations().items()
        for target, why in targets.items()
        if target not in KNOWN_DEBTS.get(importer, frozenset())
    ]
    assert not problems, "\n".join(problems)


def test_every_known_debt_is_still_owed() -> None:
    found = violations()
    paid = [
        f"{importer} no longer imports {target}: remove it from KNOWN_DEBTS in tests/test_layers.py"
        for importer, targets in KNOWN_DEBTS.items()
        for target in sorted(targets)
        if target not in found.get(importer, {})
    ]
    assert not paid, "\n".join(paid)


def test_the_scan_sees_the_imports_it_checks() -> None:
    """A broken resolver would find no violations at all: these are real imports of today."""
    assert "guard_mcp._audit" in imported(PACKAGE / "_pipeline.py")
    assert "guard_mcp._audit._chain" in imported(PACKAGE / "_audit" / "_writer.py")  # inside: allowed
    assert breaks("guard_mcp._audit._writer", "guard_mcp._audit._chain") is None
    assert breaks("guard_mcp._limits", "guard_mcp._approvals._db") is not None
    assert breaks("guard_mcp._server", "guard_mcp.cli._common") is not None
    assert breaks("guard_mcp.cli._serve", "guard_mcp._server") is None
    assert "guard_mcp._approvals._db" in imported(PACKAGE / "_console" / "_store.py")


@pytest.mark.subprocess  # a fresh interpreter: what importing the config loads
def test_validating_a_config_loads_neither_the_schema_machinery_nor_the_verifier() -> None:
    # Loading upstreams.yaml must not pay for jsonschema, regex and the permit verifier, nor start
    # a process: only a constraint, when there is one, is vetted in a child process.
    code = (
        "import sys, guard_mcp._config as c\n"
        "c.GuardConfig.model_validate({'upstreams': {'shop': {'command': 'x'}}})\n"
        "print(sorted(m for m in ('guard_mcp._patterns', 'guard_mcp.verify', 'jsonschema', 'regex', 'subprocess')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_tests_import_their_kits_by_one_name() -> None:
    # pytest puts tests/ on sys.path, so a kit is `guard_kit`; `tests.guard_kit` would be a second copy
    # of the module (its own globals and classes: an isinstance across the two fails), and mypy would see one
    # file under two names.
    tests = ROOT / "tests"
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports `{node.module}`: import it as `{node.module.partition('.')[2]}`"
        for path in sorted(tests.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests.")
    ]
    assert not found, "\n".join(found)
