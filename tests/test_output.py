"""Output that fits: tables fold instead of cutting words, plain lines when piped, options on groups,
and `guard-mcp sessions`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from guard_kit import ECHO_CONFIG, RecordingUpstream, config_from, running_guard
from mcp import Client
from rich.console import Console

from guard_mcp._state import StateDir
from guard_mcp.cli import main
from guard_mcp.cli._common import Env, print_table

LONG = "everything__trigger-long-running-operation"


def terminal(width: int = 80) -> tuple[Env, io.StringIO]:
    out = io.StringIO()
    env = Env(
        config_path=None, state_dir=None, console=Console(file=out, width=width, force_terminal=True, color_system=None)
    )
    return env, out


def test_a_table_at_80_columns_folds_long_names_instead_of_cutting_them() -> None:
    env, out = terminal(80)
    rows = [[LONG, "everything", "everything.trigger_long_running_operation", "destructive", "MEDIUM 65", "served"]]
    print_table(env, ["tool", "upstream", "action", "category", "tier", "status"], rows)
    text = out.getvalue()
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.count("│") > 2)
    assert LONG in cells.replace(" ", "")


def test_piped_output_is_one_tab_separated_line_per_row_with_control_characters_shown_as_codes() -> None:
    out = io.StringIO()
    env = Env(config_path=None, state_dir=None, console=Console(file=out, force_terminal=False))
    assert env.plain
    runner = CliRunner()
    with runner.isolation() as (stdout, _, _):
        print_table(env, ["a", "b"], [[LONG, "x\ty\nz\x1b[2J"]])
        printed = stdout.getvalue().decode()
    assert printed.splitlines() == ["a\tb", f"{LONG}\tx y z\\u001b[2J"]


def test_tools_takes_config_state_dir_and_json_on_the_group_itself(tmp_path: Path) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text("upstreams: {}\n")
    state = tmp_path / "state"
    for args in (
        ["tools", "--config", str(config), "--state-dir", str(state), "--json"],
        ["tools", "--config", str(config), "--state-dir", str(state), "list", "--json"],
        ["tools", "list", "--config", str(config), "--state-dir", str(state), "--json"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
        assert json.loads(result.stdout) == {"tools": [], "unavailable": {}}
    assert (state / "guard.db").exists()  # the group's --state-dir reached `list`
    plain = CliRunner().invoke(main, ["tools", "--config", str(config), "--state-dir", str(state)])
    assert plain.stdout.splitlines() == ["tool\tupstream\taction\tcategory\ttier\tstatus"]


@pytest.mark.subprocess
def test_tools_list_keeps_an_upstreams_stderr_off_the_terminal(tmp_path: Path) -> None:
    # many servers greet on stderr ("... running on stdio"): it landed in the middle of the table
    import os
    import subprocess
    import sys

    chatty = (
        "import sys; print('CHATTER running on stdio', file=sys.stderr, flush=True); "
        "from guard_mcp.demo.echo import main; main()"
    )
    config = tmp_path / "upstreams.yaml"
    config.write_text(
        f"upstreams:\n  echo:\n    command: {json.dumps(sys.executable)}\n    args: [-c, {json.dumps(chatty)}]\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "guard_mcp.cli",
            "tools",
            "list",
            "--config",
            str(config),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "echo__echo" in done.stdout
    assert "CHATTER" not in done.stdout + done.stderr


@pytest.mark.anyio
async def test_sessions_lists_each_client_session_with_its_principal_and_client_name(state: StateDir) -> None:
    async with running_guard(
        config_from(ECHO_CONFIG, state), state, inprocess={"echo": RecordingUpstream().server}
    ) as guard:
        for _ in range(2):
            async with Client(guard.server, mode="legacy") as client:
                await client.call_tool("echo__echo", {"text": "a"})
                await client.call_tool("echo__echo", {"text": "b"})
    result = CliRunner().invoke(main, ["sessions", "--state-dir", str(state.root), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 2 and {r["session"][:4] for r in rows} == {"ses_"}
    assert {r["calls"] for r in rows} == {2}
    assert {r["principal"] for r in rows} == {guard.config.guard.principal}
    assert all(r["client"] for r in rows)
    plain = CliRunner().invoke(main, ["sessions", "--state-dir", str(state.root)])
    lines = plain.stdout.splitlines()
    assert lines[0].split("\t") == ["session", "principal", "client", "first call", "last call", "calls"]
    assert {line.split("\t")[0] for line in lines[1:]} == {r["session"] for r in rows}


def test_sessions_in_an_unused_state_directory_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sessions", "--state-dir", str(tmp_path / "new")])
    assert result.exit_code == 0
    assert "no client sessions yet" in result.stdout and "no guard has used" in result.stderr


def test_policy_and_import_take_the_common_options_on_the_group_too(tmp_path: Path) -> None:
    client = tmp_path / "claude.json"
    client.write_text('{"mcpServers": {"fs": {"command": "fs-mcp"}}}')
    target = tmp_path / "chosen.yaml"
    result = CliRunner().invoke(main, ["import", "--config", str(target), "claude-config", str(client), "--no-connect"])
    assert result.exit_code == 0, result.output
    assert target.exists()
    source = tmp_path / "p.policy.yaml"
    source.write_text("policy: p\nversion: 1\nrules: []\n")
    explained = CliRunner().invoke(
        main, ["policy", "--state-dir", str(tmp_path / "st"), "--json", "explain", str(source), "--action", "a.b"]
    )
    assert explained.exit_code == 0, explained.output
    assert json.loads(explained.stdout)["decision"]["effect"] == "deny"
