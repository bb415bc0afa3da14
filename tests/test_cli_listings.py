"""Every command of the command tree takes `--config`, `--state-dir`, `--json` and `--plain` (on its
group too), a `--config` that does not exist is one error, and every listing command prints JSON of the
shape docs/cli.md documents, found by walking the tree (a new listing command is covered without
being named here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import click
import mcp_types as types
import pytest
from click.testing import CliRunner, Result
from guard_kit import config_from, reason_of, running_guard
from mcp import Client
from mcp.server import Server

from guard_mcp._state import StateDir
from guard_mcp.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

# Commands that are not listings, each with why: they act, run until stopped, or print a document.
NOT_LISTINGS = {
    "audit anchor": "signs and prints the head (a document, JSON already)",
    "audit export": "writes the log as JSON lines or OCSF",
    "audit verify": "a verdict (JSON with --json), not a listing",
    "check": "connects to each upstream; a report (JSON with --json)",
    "demo": "runs the demo",
    "keys init": "makes keys",
    "keys rotate": "makes a key",
    "policy accept": "switches the policy",
    "policy verify": "a verdict on a bundle",
    "serve": "serves until stopped",
    "simulate": "runs the attacks",
    "store check": "a verdict on the schema versions (JSON with --json)",
    "store copy": "copies the database",
    "store migrate": "changes the schema",
    "tools accept": "accepts definitions",
    "tools review": "edits the config",
}
# Groups whose own invocation lists (`guard-mcp tools`).
LISTING_GROUPS = {"tools"}


def commands() -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(main)

    def walk(cmd: click.Command, path: list[str]) -> Iterator[tuple[str, click.Command]]:
        yield " ".join(path), cmd
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, f"`{' '.join([*path, name])}` does not load"
                yield from walk(sub, [*path, name])

    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        assert cmd is not None, f"`{name}` does not load"
        yield from walk(cmd, [name])


def listings() -> list[str]:
    """Commands that only read and take no argument: a listing, unless NOT_LISTINGS says why not."""
    found = []
    for path, cmd in commands():
        if isinstance(cmd, click.Group) and path not in LISTING_GROUPS:
            continue
        if path in NOT_LISTINGS or any(p.required for p in cmd.params):
            continue
        found.append(path)
    return found


def options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in getattr(p, "opts", [])}


def test_every_command_and_group_takes_config_state_dir_json_and_plain() -> None:
    for path, cmd in commands():
        if path == "demo":  # sealed: its own temporary state and the embedded config, whatever is given
            assert "--json" in options(cmd) and "--config" not in options(cmd)
            continue
        assert {"--config", "--state-dir", "--json", "--plain"} <= options(cmd), path


def documented() -> dict[str, tuple[str, list[str]]]:
    """docs/cli.md's table: command -> (`list` or `object`, the keys it documents)."""
    rows: dict[str, tuple[str, list[str]]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `guard-mcp ([a-z -]+)` \| (a list|an object)[^|]*\| ([^|]*) \|", line)
        if m:
            rows[m.group(1)] = ("list" if m.group(2) == "a list" else "object", re.findall(r"`([a-z_]+)`", m.group(3)))
    return rows


def test_docs_cli_documents_every_listing_command_and_no_other() -> None:
    assert sorted(documented()) == sorted(listings())


CONFIG = """
guard:
  approvals: {wait: 0.2s, expire: 2h, preauth_max: 1h}
upstreams:
  vault:
    command: ${PYTHON}   # served in-process to the seeding guard; started for real by `tools list`
    args: [-m, tests.upstreams.flaky]
    env: {PYTHONPATH: "ROOT"}
    tools:
      echo: {action: note.store, category: write, reversibility: none, blast_radius: single,
             sensitivity: confidential, resource: text, headline: "Store the note {text}",
             limits: [{window: 1h, calls: 5}]}
""".replace("ROOT", str(Path(__file__).resolve().parent.parent))


def _vault() -> Server[object]:
    async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        return types.ListToolsResult(
            tools=[types.Tool(name="echo", description="Echo the text back.", input_schema=schema)]
        )

    async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text="stored")])

    return Server("vault", on_list_tools=list_tools, on_call_tool=call_tool)


def cli(seeded: tuple[Path, StateDir], *args: str) -> Result:
    config, state = seeded
    return CliRunner().invoke(
        main,
        [*args, "--config", str(config), "--state-dir", str(state.root)],
        catch_exceptions=False,
        env={"COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StateDir]:
    """A state directory with something in every list: a call waiting for approval, an approver, a
    session grant, the tool's pin and its usage limit."""
    root = tmp_path_factory.mktemp("listings")
    state = StateDir(root / "state").ensure()
    config = root / "upstreams.yaml"
    config.write_text(CONFIG)

    async def call() -> None:
        async with running_guard(config_from(CONFIG, state), state, inprocess={"vault": _vault()}) as guard:
            async with Client(guard.server, mode="legacy") as client:  # a handshake: a session
                assert reason_of(await client.call_tool("vault__echo", {"text": "hi"})) == "pending_approval"

    anyio.run(call)
    assert cli((config, state), "approvers", "add", "ada", "--group", "approvers").exit_code == 0
    [session] = json.loads(cli((config, state), "sessions", "--json").stdout)
    granted = cli((config, state), "approvals", "grant", session["session"], "--group", "approvers", "--for", "10m")
    assert granted.exit_code == 0, granted.output
    return config, state


@pytest.mark.parametrize("path", listings())
def test_every_listing_prints_json_of_its_documented_shape(seeded: tuple[Path, StateDir], path: str) -> None:
    result = cli(seeded, *path.split(), "--json")
    assert result.exit_code == 0, result.output
    value: Any = json.loads(result.stdout)  # nothing but JSON on stdout
    kind, keys = documented()[path]
    if kind == "list":
        assert isinstance(value, list) and value, f"{path}: the seeded state should list something"
        for item in value:
            assert set(keys) <= set(item), f"{path}: documented {sorted(set(keys) - set(item))} missing"
    else:
        assert isinstance(value, dict) and set(keys) <= set(value), f"{path}: {sorted(set(keys) - set(value))}"


# Listings that print a document rather than a table: JSON (a JWKS) and a diff of definitions.
DOCUMENTS = {"keys jwks", "tools diff"}


@pytest.mark.parametrize("path", [p for p in listings() if p not in DOCUMENTS])
def test_every_listing_is_tab_separated_when_piped(seeded: tuple[Path, StateDir], path: str) -> None:
    result = cli(seeded, *path.split())  # CliRunner's stdout is not a terminal: as when piped
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and all("\t" in line for line in lines), f"{path} drew a table into a pipe:\n{result.output}"
    assert not any(ch in result.output for ch in "│┃━─┏┗"), path


@pytest.mark.parametrize(
    ("group", "sub"),
    [
        ("audit", ["tail"]),
        ("approvals", ["list"]),
        ("approvers", ["list"]),
        ("keys", ["jwks"]),
        ("permits", ["inspect", "x.y.z"]),
        ("tools", ["list"]),
        ("policy", ["verify"]),
    ],
)
def test_a_config_file_that_does_not_exist_is_one_error_on_every_group(
    tmp_path: Path, group: str, sub: list[str]
) -> None:
    # `audit tail --config typo.yaml` ran on without it: the file was given for a reason
    missing = tmp_path / "nope.yaml"
    for args in ([group, "--config", str(missing), *sub], [group, *sub, "--config", str(missing)]):
        result = CliRunner().invoke(main, [*args, "--state-dir", str(tmp_path / "s")])
        assert result.exit_code == 2, (args, result.output)
        assert result.output.strip() == (
            f"error: config file `{missing}` does not exist: pass `--config FILE`, "
            "or run `guard-mcp demo` for the embedded example"
        ), args


def test_a_groups_config_and_state_dir_count_for_its_sub_command(seeded: tuple[Path, StateDir]) -> None:
    config, state = seeded
    for group, sub in (("approvals", "list"), ("approvers", "list"), ("audit", "tail"), ("keys", "jwks")):
        on_group = CliRunner().invoke(
            main,
            [group, "--config", str(config), "--state-dir", str(state.root), "--json", sub],
            catch_exceptions=False,
        )
        assert on_group.exit_code == 0, on_group.output
        given, direct = json.loads(on_group.stdout), json.loads(cli(seeded, group, sub, "--json").stdout)
        assert given and [_id(v) for v in given] == [_id(v) for v in direct], group


def _id(value: Any) -> Any:
    return value.get("id") or value.get("name") or value.get("seq") if isinstance(value, dict) else value


@pytest.mark.parametrize("path", [p for p in listings() if p not in DOCUMENTS])
def test_every_listing_fits_an_80_column_terminal_without_cutting_a_word(
    seeded: tuple[Path, StateDir], path: str
) -> None:
    config, state = seeded
    result = CliRunner().invoke(
        main,
        [*path.split(), "--config", str(config), "--state-dir", str(state.root)],
        catch_exceptions=False,
        env={"COLUMNS": "80", "FORCE_COLOR": "1"},
    )
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    if path != "audit tail":  # whose one-line detail is a summary of at most 100 characters (`audit show SEQ`)
        assert "…" not in text, f"{path} cut a cell short:\n{text}"
    assert all(len(line) <= 80 for line in text.splitlines()), path
    if path == "approvals list":  # the owner had no room left (`ow`, then nothing)
        assert "approvers" in text
    if path == "audit search":  # seven columns folded each id and date into pieces
        assert re.search(r"req_[0-9a-f]{16}", text) and "┃" not in text
