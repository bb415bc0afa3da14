"""`guard-mcp tools review`: proposals accepted, edited or skipped, the file's comments kept."""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest
from click.testing import CliRunner, Result

from guard_mcp._config import load_config
from guard_mcp.cli import main
from guard_mcp.cli._import import convert_client_config

TOOLS = [
    types.Tool(
        name="read_text_file",
        description="Read a file.",
        annotations=types.ToolAnnotations(read_only_hint=True),
        input_schema={"type": "object", "properties": {"path": {"type": "string"}}},
    ),
    types.Tool(
        name="write_file",
        input_schema={"type": "object", "properties": {"path": {"type": "string"}}},
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True),
    ),
    types.Tool(name="get-env", input_schema={"type": "object"}),
]


def imported(tmp_path: Path) -> Path:
    client = tmp_path / "claude.json"
    client.write_text('{"mcpServers": {"fs": {"command": "fs-mcp"}}}')
    result = convert_client_config(client)
    result.listed = {"fs": TOOLS}
    out = tmp_path / "upstreams.yaml"
    out.write_text(result.render())
    return out


def review(config: Path, *args: str, answers: str = "") -> Result:
    return CliRunner().invoke(main, ["tools", "review", "--config", str(config), *args], input=answers)


def test_accept_all_turns_every_proposal_into_a_schema_and_keeps_the_comments(tmp_path: Path) -> None:
    config = imported(tmp_path)
    before = config.read_text()
    result = review(config, "--accept-all")
    assert result.exit_code == 0, result.output
    assert "3 accepted" in result.stdout
    after = config.read_text()
    assert "proposed: true" not in after
    assert [line for line in before.splitlines() if not line.strip().startswith("proposed:")] == after.splitlines()
    cfg = load_config(config)
    assert cfg.action_schema("fs", "read_text_file").declared
    assert cfg.action_schema("fs", "write_file").category.value == "destructive"


def test_one_by_one_skip_edit_and_accept(tmp_path: Path) -> None:
    config = imported(tmp_path)
    # read_text_file: skip; write_file: edit (category write, keep reversibility, blast many, keep sensitivity,
    # resource none, keep headline); get-env: accept
    answers = "s\ne\n\nwrite\n\nmany\n\n-\n\na\n"
    result = review(config, answers=answers)
    assert result.exit_code == 0, result.output
    assert "1 accepted, 1 edited, 1 skipped" in result.stdout and "1 still proposed" in result.stdout
    cfg = load_config(config)
    tools = cfg.upstreams["fs"].tools
    assert tools["read_text_file"].proposed and not cfg.action_schema("fs", "read_text_file").declared
    write = tools["write_file"]
    assert not write.proposed
    assert (write.category.value, write.reversibility.value, write.blast_radius.value, write.resource) == (
        "write",
        "none",
        "many",
        None,
    )
    assert "# set in review" in config.read_text()
    assert not tools["get-env"].proposed
    # a second review finds the one left
    again = review(config, "--accept-all")
    assert "1 accepted" in again.stdout
    assert not load_config(config).upstreams["fs"].tools["read_text_file"].proposed


def test_an_edit_the_guard_would_refuse_writes_nothing(tmp_path: Path) -> None:
    config = imported(tmp_path)
    before = config.read_text()
    result = review(config, answers="e\nNot An Action\n\n\n\n\n\n\nq\n")
    assert result.exit_code == 2
    assert "would not load, nothing written" in result.stderr and "Not An Action" in result.stderr
    assert config.read_text() == before


def test_an_edit_sets_the_headline_and_one_that_is_not_a_template_writes_nothing(tmp_path: Path) -> None:
    config = imported(tmp_path)
    proposed = load_config(config).upstreams["fs"].tools["write_file"].headline
    assert proposed == "Write file {path}"  # what import proposed from the tool's name and its `path`
    # read_text_file: skip; write_file: edit only the headline; get-env: accept
    result = review(config, answers="s\ne\n\n\n\n\n\n\nSave {path} on the share\na\n")
    assert result.exit_code == 0, result.output
    assert load_config(config).upstreams["fs"].tools["write_file"].headline == "Save {path} on the share"
    before = config.read_text()
    broken = review(config, answers="e\n\n\n\n\n\n\nRead {path\nq\n")
    assert broken.exit_code == 2 and "would not load, nothing written" in broken.stderr
    assert "unpaired `{`" in broken.stderr and config.read_text() == before


def test_quit_writes_nothing_and_no_proposals_is_said(tmp_path: Path) -> None:
    config = imported(tmp_path)
    before = config.read_text()
    assert review(config, answers="q\n").exit_code == 0
    assert config.read_text() == before
    plain = tmp_path / "plain.yaml"
    plain.write_text("upstreams:\n  fs:\n    command: fs-mcp\n    tools:\n      t: {category: read}\n")
    result = review(plain)
    assert result.exit_code == 0 and "no proposed action schemas" in result.stdout


def test_attack_review_does_not_write_through_a_symlink(tmp_path: Path) -> None:
    config = imported(tmp_path)
    link = tmp_path / "link.yaml"
    link.symlink_to(config)
    before = config.read_text()
    result = review(link, "--accept-all")
    assert result.exit_code == 2 and "symbolic link" in result.stderr
    assert config.read_text() == before and link.is_symlink()


def test_json_reports_counts_and_needs_accept_all(tmp_path: Path) -> None:
    config = imported(tmp_path)
    refused = review(config, "--json")
    assert refused.exit_code == 2 and "--accept-all" in refused.stderr
    import json

    done = review(config, "--json", "--accept-all")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "config": str(config),
        "accepted": 3,
        "edited": 0,
        "skipped": 0,
        "proposed_left": 0,
    }


def test_review_without_a_config_file_here_is_the_one_missing_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no upstreams.yaml here, and no --config
    result = CliRunner().invoke(main, ["tools", "review", "--accept-all"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: config file `upstreams.yaml` does not exist: pass `--config FILE`, "
        "or run `guard-mcp demo` for the embedded example"
    )


HAND_WRITTEN = """\
# my guard
guard:
  environment: development
upstreams:
  fs:                      # added by hand, no tools yet
    command: fs-mcp
    env:
      ROOT: /data
  mail:
    command: mail-mcp
    tools: {}
  notes:
    command: notes-mcp
    tools:
      read_text_file: {action: notes.read, category: read, reversibility: full}
  # a comment between upstreams stays
  other:
    command: other-mcp
"""


def test_propose_adds_a_proposal_for_every_tool_without_a_schema_and_leaves_the_rest_as_written() -> None:
    from guard_mcp.cli._review import apply_edits, find_proposals, propose_text

    edits, count = propose_text(HAND_WRITTEN, {"fs": TOOLS, "mail": TOOLS[:1], "notes": TOOLS[:2], "gone": TOOLS})
    assert count == 3 + 1 + 1  # notes already declares read_text_file; `gone` is not in the file
    after = apply_edits(HAND_WRITTEN, edits)
    cfg = load_config(text=after)
    assert {(p.upstream, p.tool) for p in find_proposals(after)} == {
        ("fs", "read_text_file"),
        ("fs", "write_file"),
        ("fs", "get-env"),
        ("mail", "read_text_file"),
        ("notes", "write_file"),
    }
    assert cfg.upstreams["fs"].env == {"ROOT": "/data"}  # type: ignore[union-attr]
    assert cfg.action_schema("notes", "read_text_file").declared  # the hand-written one, untouched
    assert not cfg.action_schema("fs", "write_file").declared  # proposed: unknown until accepted
    for line in (
        "# my guard",
        "  fs:                      # added by hand, no tools yet",
        "  # a comment between upstreams stays",
        "      read_text_file: {action: notes.read, category: read, reversibility: full}",
    ):
        assert line in after.splitlines()
    assert "tools: {}" not in after
    # proposing again finds nothing left to propose
    assert propose_text(after, {"fs": TOOLS, "mail": TOOLS[:1], "notes": TOOLS[:2]})[1] == 0


def test_review_propose_starts_a_server_added_by_hand_and_its_tools_can_then_be_accepted(tmp_path: Path) -> None:
    import sys

    config = tmp_path / "upstreams.yaml"
    config.write_text(f"""\
upstreams:
  echo:
    command: {sys.executable}
    args: [-m, guard_mcp.demo.echo]
""")
    plain = review(config, "--state-dir", str(tmp_path / "state"))
    assert plain.exit_code == 0 and "`guard-mcp tools review --propose` proposes them first" in plain.stdout
    result = review(config, "--propose", "--accept-all", "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 0, result.output
    assert "proposed an action schema for 1 tool(s)" in result.stdout and "1 accepted" in result.stdout
    schema = load_config(config).action_schema("echo", "echo")
    assert schema.declared and schema.category.value == "read"
