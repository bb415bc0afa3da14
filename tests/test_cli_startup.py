"""`guard-mcp --help` lists the commands without importing them, and says what each one says; each operator
command loads only what it runs with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import click
import pytest
from _audit_helpers import filled_log

from guard_mcp._clock import FakeClock
from guard_mcp._state import StateDir
from guard_mcp.cli import _COMMANDS, _LazyGroup, _summary

ROOT = Path(__file__).resolve().parent.parent


def test_the_command_list_says_what_each_command_says_of_itself() -> None:
    for name in _COMMANDS:
        cmd = _LazyGroup._load(name)
        assert cmd is not None, name
        for limit in (45, 200):
            assert _summary(name).get_short_help_str(limit) == cmd.get_short_help_str(limit), name


def test_help_imports_no_command_module() -> None:
    probe = (
        "import sys\n"
        "from guard_mcp.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n' + __import__('json').dumps(sorted(m for m in sys.modules if m.startswith('guard_mcp.cli.') "
        "or m in ('pydantic', 'mcp'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "serve" in out and "approvals" in out
    assert json.loads(out.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------------------------------ what each command loads
#
# Each command runs in a fresh interpreter, as an operator's `guard-mcp ...` does, and reports every module it
# imported; a heavy module that a command has no use for is a regression in how fast it starts (an import
# moved back to the top of a module), whatever the machine's speed. No timing is measured here:
# bench/startup_bench.py does that.

# What no operator command below serves or decides with: the MCP SDK, the policy engine, the web stack.
NEVER = (
    "mcp",
    "mcp_types",
    "starlette",
    "uvicorn",
    "wasmtime",
    "guard_mcp._server",
    "guard_mcp._pipeline",
    "guard_mcp._catalog",
    "guard_mcp._upstreams",
    "guard_mcp._policy",
)
# A command that reads no config and no approval loads no config models, contracts or pydantic, and an audit
# reader no writer (the event loop, its commit thread).
NO_CONFIG = (
    *NEVER,
    "pydantic",
    "guard_mcp._config",
    "guard_mcp._models",
    "guard_mcp._approvals",
    "jsonschema",
    "asyncio",
    "guard_mcp._audit._log",
)
# Only what signs or checks a JWS needs PyJWT and the X.509 half of cryptography that it loads.
NO_JWT = (*NO_CONFIG, "jwt", "cryptography.x509")

_PROBE = """
import json, sys
from guard_mcp.cli import main
first = {name: "import guard_mcp.cli" for name in sys.modules}
for args in json.loads(sys.argv[1]):
    try:
        main(args, prog_name="guard-mcp")
    except SystemExit as exc:
        if exc.code not in (0, None):
            sys.exit(f"`guard-mcp {' '.join(args)}` exited {exc.code}")
    for name in sys.modules:
        first.setdefault(name, "guard-mcp " + " ".join(args))
with open(sys.argv[2], "w") as out:
    json.dump(first, out)
"""


def _loaded(tmp_path: Path, *commands: list[str]) -> tuple[dict[str, str], str]:
    """Run `commands` one after the other in one new interpreter: every module then loaded, with the first
    command that loaded it, and what they printed."""
    report = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if k != "GUARD_MCP_HOME"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(commands), str(report)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )  # cwd: no ./upstreams.yaml
    assert proc.returncode == 0, proc.stderr
    return json.loads(report.read_text()), proc.stdout


def _heavy(loaded: dict[str, str], forbidden: tuple[str, ...]) -> dict[str, str]:
    """Each forbidden module (or package) that was loaded, with the command that loaded it."""
    found = {}
    for f in forbidden:
        names = sorted(n for n in loaded if n == f or n.startswith(f + "."))
        if names:
            found[f] = loaded[names[0]]
    return found


def _every_help() -> list[list[str]]:
    """`--help` of the command line, of every command and of every sub-command under it."""
    found: list[list[str]] = [["--help"]]

    def walk(path: list[str], cmd: click.Command) -> None:
        found.append([*path, "--help"])
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                walk([*path, name], sub)

    for name in sorted(_COMMANDS):
        cmd = _LazyGroup._load(name)
        assert cmd is not None, name
        walk([name], cmd)
    return found


@pytest.fixture
def filled(state: StateDir, clock: FakeClock) -> StateDir:
    """A guard's state directory: its signing key, and an audit log of 10 calls with signed checkpoints."""
    anyio.run(filled_log, state, clock)
    return state


def test_no_help_loads_what_its_command_runs_with(tmp_path: Path) -> None:
    helps = _every_help()
    assert len(helps) > 40 and ["audit", "verify", "--help"] in helps and ["approvals", "list", "--help"] in helps
    loaded, out = _loaded(tmp_path, *helps)
    assert "Usage: guard-mcp approvals list" in out
    assert _heavy(loaded, NO_JWT) == {}


def test_audit_tail_reads_the_log_without_the_writer_the_config_or_pyjwt(tmp_path: Path, filled: StateDir) -> None:
    loaded, out = _loaded(tmp_path, ["audit", "tail", "--state-dir", str(filled.root), "--plain"])
    assert "call.result" in out
    assert _heavy(loaded, NO_JWT) == {}


def test_audit_verify_checks_every_checkpoint_without_the_writer_or_the_config(
    tmp_path: Path, filled: StateDir
) -> None:
    loaded, out = _loaded(tmp_path, ["audit", "verify", "--state-dir", str(filled.root)])
    assert "intact" in out and "signed checkpoint" in out
    assert "jwt" in loaded  # the checkpoints' signatures were checked
    assert _heavy(loaded, NO_CONFIG) == {}


@pytest.mark.parametrize("command", [["keys", "list"], ["limits"], ["approvals", "list"]])
def test_commands_that_read_the_config_load_no_mcp_policy_engine_or_pyjwt(
    tmp_path: Path, filled: StateDir, command: list[str]
) -> None:
    loaded, out = _loaded(tmp_path, [*command, "--state-dir", str(filled.root), "--plain"])
    assert out.strip()
    assert "guard_mcp._config" in loaded  # the embedded demo's config was read
    assert _heavy(loaded, (*NEVER, "jwt", "cryptography.x509")) == {}
