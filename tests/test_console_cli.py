"""`guard-mcp approvers` and the console: enrolment links, groups without re-enrolment, removal."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from guard_mcp._clock import SystemClock
from guard_mcp._console import ConsoleStore
from guard_mcp._console._store import Credential
from guard_mcp._state import StateDir
from guard_mcp.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "upstreams.yaml"
    path.write_text("guard: {console: {port: 9911}}\nupstreams: {}\n")
    return path


def cli(config: Path, state: StateDir, *args: str) -> Result:
    return CliRunner().invoke(
        main, [*args, "--config", str(config), "--state-dir", str(state.root), "--json"], catch_exceptions=False
    )


def _console(state: StateDir, work: object) -> object:
    async def main() -> object:
        store = await ConsoleStore.open(state, SystemClock())
        try:
            return await work(store)  # type: ignore[operator]
        finally:
            await store.close()

    return anyio.run(main)


def test_approvers_add_prints_a_one_time_link_to_the_running_console(config: Path, state: StateDir) -> None:
    first = json.loads(cli(config, state, "approvers", "add", "ana", "--group", "finance").output)
    assert first["enrolment_link"].startswith("http://localhost:9911/console/enrol/")  # no console ran yet
    (state.root / "console.url").write_text("http://localhost:41234/console\n")
    again = json.loads(cli(config, state, "approvers", "link", "ana").output)
    assert again["enrolment_link"].startswith("http://localhost:41234/console/enrol/")
    token = again["enrolment_link"].rsplit("/", 1)[1]
    assert _console(state, lambda s: s.enrolment(token)) == "ana"
    assert token.encode() not in state.database.read_bytes()
    unknown = cli(config, state, "approvers", "link", "bob")
    assert unknown.exit_code != 0 and "not enrolled" in unknown.output


def test_changing_groups_keeps_the_passkeys_and_removing_deletes_them(config: Path, state: StateDir) -> None:
    link = json.loads(cli(config, state, "approvers", "add", "ana", "--group", "finance").output)["enrolment_link"]
    token = link.rsplit("/", 1)[1]
    assert _console(state, lambda s: s.enrol(token, Credential("cred-1", "ana", "00", b"key", 0)))
    changed = json.loads(cli(config, state, "approvers", "groups", "ana", "--group", "sales", "--group", "ops").output)
    assert changed["groups"] == ["ops", "sales"]
    assert [c.id for c in _console(state, lambda s: s.credentials_of("ana"))] == ["cred-1"]  # type: ignore[attr-defined]
    assert cli(config, state, "approvers", "remove", "ana").exit_code == 0
    assert _console(state, lambda s: s.credentials_of("ana")) == []
