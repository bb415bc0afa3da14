"""`guard-mcp simulate`: every built-in attack scenario holds against a real guard process."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from guard_mcp.cli import main
from guard_mcp.demo import SCENARIOS, run_scenarios

pytestmark = pytest.mark.subprocess


@pytest.mark.anyio
async def test_every_scenario_holds() -> None:
    results = await run_scenarios(concurrency=2)
    assert [r.number for r in results] == sorted(SCENARIOS)
    failed = [f"{r.number} {r.title}: {r.guard_did} / {r.evidence} ({r.state_dir})" for r in results if not r.held]
    assert failed == []
    assert all(r.guard_did and r.evidence for r in results)


def test_cli_rejects_an_unknown_scenario() -> None:
    result = CliRunner().invoke(main, ["simulate", "--scenario", "99"])
    assert result.exit_code == 2
    assert "no scenario 99" in result.output


def test_cli_json_for_one_scenario() -> None:
    import json

    result = CliRunner().invoke(main, ["simulate", "--scenario", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert [s["number"] for s in report["scenarios"]] == [4]
    assert report["scenarios"][0]["held"] is True
