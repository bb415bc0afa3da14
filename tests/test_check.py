"""`guard-mcp check`: what loads but is probably a mistake is said, and fails with --strict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guard_mcp._config import load_config
from guard_mcp.cli._check import config_warnings

pytestmark = [pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parent.parent
ECHO = f"upstreams:\n  echo:\n    command: {sys.executable}\n    args: [-m, guard_mcp.demo.echo]\n"


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "guard_mcp.cli", "check", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_a_misspelt_tool_is_a_warning_with_a_did_you_mean_and_strict_fails(tmp_path: Path) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text(ECHO + "    tools:\n      ecko: {action: echo.echo, category: read}\n")
    plain = check(config)
    assert plain.returncode == 0, plain.stderr
    assert (
        "warning: upstream `echo` declares tool `ecko`, which it does not serve; did you mean `echo`?" in plain.stderr
    )
    assert "serves 1 tool(s) with no action schema (`echo`)" in plain.stderr
    strict = check(config, "--strict", "--json")
    assert strict.returncode == 1
    report = json.loads(strict.stdout)
    assert report["ok"] is False and len(report["warnings"]) == 2


def test_a_clean_config_passes_strict(tmp_path: Path) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text(ECHO + "    tools:\n      echo: {action: echo.echo, category: read}\n")
    done = check(config, "--strict")
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr


def test_an_upstream_that_never_answers_is_named_with_how_long_it_was_waited_for(tmp_path: Path) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text(
        f"upstreams:\n  silent:\n    command: {sys.executable}\n    args: [-c, 'import time; time.sleep(60)']\n"
    )
    done = check(config, "--timeout", "1")
    assert done.returncode == 1
    assert "connecting to 1 upstream(s), waiting up to 1s" in done.stderr
    assert "did not answer within 1s" in done.stdout
    report = json.loads(check(config, "--timeout", "1", "--json").stdout)
    assert report["upstreams"][0]["error"] == "did not answer within 1s"


def test_proposals_nobody_accepted_are_a_warning() -> None:
    cfg = load_config(
        text="upstreams:\n  fs:\n    command: x\n    tools:\n      read: {proposed: true}\n"
        "      write: {category: write}\n"
    )
    warnings = config_warnings(cfg, {"fs": ["read", "write"]})
    assert warnings == [
        "upstream `fs` has 1 proposed action schema(s) nobody accepted yet (`read`): they count as "
        "`unknown`; run `guard-mcp tools review`"
    ]


def test_an_upstreams_stderr_stays_out_of_the_table_and_its_last_line_is_quoted_without_its_secrets(
    tmp_path: Path,
) -> None:
    config = tmp_path / "upstreams.yaml"
    script = (
        "import sys; print('starting', file=sys.stderr); print('bad key sk-secret-123', file=sys.stderr); sys.exit(3)"
    )
    config.write_text(
        f"upstreams:\n  broken:\n    command: {sys.executable}\n    args: [-c, {json.dumps(script)}]\n"
        "    env: {API_KEY: sk-secret-123}\n"
    )
    done = check(config, "--timeout", "10", "--plain")
    assert done.returncode == 1
    assert "starting" not in done.stderr and "bad key" not in done.stderr  # not spilled onto the terminal
    row = done.stdout.splitlines()[-1].split("\t")
    assert row[0] == "broken" and row[2] == "failed"
    assert "its last line on stderr: bad key ***" in row[4]
    assert "sk-secret-123" not in done.stdout + done.stderr
