"""`guard-mcp tools review`: walk through the action schemas `import` proposed, accept, edit or skip each.

The file is a person's: it is edited in place at the spans the YAML parser reports, so comments,
order and layout stay as they were. Accepting removes the `proposed: true` line; an edited field
gets the new value and the comment `set in review`. The result is loaded the way `serve` loads it
before it replaces the file, so a review never leaves a file the guard would refuse.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml
from rich.text import Text

from guard_mcp._errors import ConfigError
from guard_mcp.cli._common import Env, common_options

__all__ = ["Proposed", "accept_text", "find_proposals", "propose_text", "review"]

_EDITABLE = ("action", "category", "reversibility", "blast_radius", "sensitivity", "resource", "headline")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def _choices() -> dict[str, list[str]]:
    # Here, like the config below: `guard-mcp tools --help` loads no config models.
    from guard_mcp._models import BlastRadius, Category, Reversibility, Sensitivity

    return {
        "category": [c.value for c in Category],
        "reversibility": [r.value for r in Reversibility],
        "blast_radius": [b.value for b in BlastRadius],
        "sensitivity": [s.value for s in Sensitivity],
    }


@dataclass
class Proposed:
    """One tool entry marked `proposed: true`, with where its parts sit in the file's text."""

    upstream: str
    tool: str
    key: yaml.Node
    node: yaml.MappingNode
    flag: tuple[yaml.Node, yaml.Node]
    values: dict[str, yaml.Node] = field(default_factory=dict)

    @property
    def block(self) -> bool:
        return not self.node.flow_style


def _scalar_value(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node)) if isinstance(node, yaml.ScalarNode) else None


def find_proposals(text: str) -> list[Proposed]:
    """Every `upstreams.NAME.tools.TOOL` mapping whose `proposed` is true, in file order."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    found: list[Proposed] = []
    if not isinstance(root, yaml.MappingNode):
        return found
    for key, servers in root.value:
        if key.value not in ("upstreams", "mcpServers") or not isinstance(servers, yaml.MappingNode):
            continue
        for up_key, upstream in servers.value:
            if not isinstance(upstream, yaml.MappingNode):
                continue
            for t_key, tools in upstream.value:
                if t_key.value != "tools" or not isinstance(tools, yaml.MappingNode):
                    continue
                for tool_key, entry in tools.value:
                    if not isinstance(entry, yaml.MappingNode):
                        continue
                    pairs = {k.value: (k, v) for k, v in entry.value if isinstance(k, yaml.ScalarNode)}
                    flag = pairs.get("proposed")
                    if flag is None or _scalar_value(flag[1]) is not True:
                        continue
                    found.append(
                        Proposed(
                            str(up_key.value),
                            str(tool_key.value),
                            tool_key,
                            entry,
                            flag,
                            {k: v for k, (_, v) in pairs.items() if k in _EDITABLE},
                        )
                    )
    return found


def _line_span(text: str, start: int, end: int) -> tuple[int, int]:
    """From the start of the line holding `start` to past the newline ending the line holding `end`."""
    begin = text.rfind("\n", 0, start) + 1
    stop = text.find("\n", end)
    return begin, len(text) if stop < 0 else stop + 1


def _render(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar whatever it holds


def accept_text(
    text: str, proposal: Proposed, changes: dict[str, str | None] | None = None
) -> list[tuple[int, int, str]]:
    """The edits (start, end, replacement) that accept `proposal`, with `changes` to its fields
    (None: remove the field). Raises ConfigError where the layout cannot be edited in place."""
    edits: list[tuple[int, int, str]] = []
    key, value = proposal.flag
    if proposal.block:
        edits.append((*_line_span(text, key.start_mark.index, value.end_mark.index), ""))
    else:
        edits.append((value.start_mark.index, value.end_mark.index, "false"))
    for name, new in (changes or {}).items():
        node = proposal.values.get(name)
        if node is not None and not isinstance(node, yaml.ScalarNode):
            raise ConfigError(f"`{proposal.tool}`: `{name}` is not a plain value; edit the file by hand")
        if not proposal.block:
            raise ConfigError(f"`{proposal.tool}` is written on one line; edit it in the file by hand")
        if node is not None and new is None:
            k = next(k for k, v in proposal.node.value if v is node)
            edits.append((*_line_span(text, k.start_mark.index, node.end_mark.index), ""))
        elif node is not None and new is not None:
            line_end = text.find("\n", node.end_mark.index)
            line_end = len(text) if line_end < 0 else line_end
            edits.append((node.start_mark.index, line_end, f"{_render(new)}  # set in review"))
        elif new is not None:  # a field the proposal did not have: a new line after its last one
            last_key, last = proposal.node.value[-1]
            _, after = _line_span(text, last_key.start_mark.index, last.end_mark.index)
            indent = " " * key.start_mark.column
            edits.append((after, after, f"{indent}{name}: {_render(new)}  # set in review\n"))
    return edits


def apply_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _loads(text: str, where: str) -> None:
    """Load the result the way `serve` will (a `${VAR}` unset here does not count against it)."""
    from guard_mcp._config import load_config

    referenced = set(_VAR.findall(text)) - set(os.environ)
    try:
        load_config(text=text, environ={**os.environ, **{v: "" for v in referenced}})
    except ConfigError as exc:
        raise ConfigError(f"the reviewed `{where}` would not load, nothing written: {exc}") from None


def _entry_text(text: str, proposal: Proposed) -> str:
    """The entry as written, with the description comment above it when there is one."""
    start, end = _line_span(text, proposal.key.start_mark.index, proposal.node.end_mark.index - 1)
    above_start = text.rfind("\n", 0, max(start - 1, 0)) + 1
    above = text[above_start:start] if start else ""
    return (above if above.strip().startswith("#") else "") + text[start:end].rstrip("\n")


def _last_scalar_end(node: yaml.Node) -> int:
    """Where the text of a block node's last value ends (a block collection's own end mark points at
    whatever follows it, possibly on a later line)."""
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return int(node.end_mark.index)


def _shifted(lines: list[str], by: int) -> str:
    return "".join(" " * max(0, len(x) - len(x.lstrip(" ")) + by) + x.lstrip(" ") for x in lines)


def propose_text(text: str, listed: dict[str, list[Any]]) -> tuple[list[tuple[int, int, str]], int]:
    """The edits that add a proposed action schema (`proposed: true`, as `import` writes them) for each
    listed tool its upstream declares nothing for, and how many. Raises ConfigError where the layout
    cannot be edited in place."""
    from guard_mcp.cli._import import _render_tools

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    servers = (
        next((v for k, v in root.value if k.value == "upstreams"), None) if isinstance(root, yaml.MappingNode) else None
    )
    edits: list[tuple[int, int, str]] = []
    count = 0
    if not isinstance(servers, yaml.MappingNode):
        return edits, count
    for up_key, upstream in servers.value:
        tools = listed.get(str(up_key.value))
        if not tools or not isinstance(upstream, yaml.MappingNode):
            continue
        if upstream.flow_style:
            raise ConfigError(f"upstream `{up_key.value}` is written on one line; write it as a block to add proposals")
        declared = next((v for k, v in upstream.value if k.value == "tools"), None)
        names = {str(k.value) for k, _ in declared.value} if isinstance(declared, yaml.MappingNode) else set()
        missing = [t for t in tools if t.name not in names]
        if not missing:
            continue
        block = _render_tools(str(up_key.value), missing)  # `    tools:` then its entries at 6 spaces
        _, after = _line_span(text, _last_scalar_end(upstream), _last_scalar_end(upstream))
        if declared is None or (isinstance(declared, yaml.MappingNode) and not declared.value):
            if declared is not None:  # `tools: {}`: the line gives way to the block
                tools_key = next(k for k, v in upstream.value if v is declared)
                start, end = _line_span(text, tools_key.start_mark.index, declared.end_mark.index)
                edits.append((start, end, ""))
                after = end if after <= end else after
            edits.append((after, after, _shifted(block, up_key.start_mark.column + 2 - 4)))
        elif isinstance(declared, yaml.MappingNode) and not declared.flow_style:
            first_tool = declared.value[0][0]
            _, after = _line_span(text, _last_scalar_end(declared), _last_scalar_end(declared))
            edits.append((after, after, _shifted(block[1:], first_tool.start_mark.column - 6)))
        else:
            raise ConfigError(
                f"`upstreams.{up_key.value}.tools` is written on one line; write it as a block to add proposals"
            )
        count += len(missing)
    return edits, count


def _propose(env: Env, path: Path, text: str) -> str:
    """Start each upstream once and write a proposal for every served tool without an action schema."""
    from guard_mcp._config import load_config
    from guard_mcp._state import write_private
    from guard_mcp.cli._probe import probe_upstreams

    config = load_config(path, builtins={"GUARD_STATE_DIR": str(env.state().root)})
    listed = {p.name: p.tools for p in probe_upstreams(config, 30.0, state=env.state()) if p.state == "ready"}
    edits, count = propose_text(text, listed)
    if not count:
        return text
    new_text = apply_edits(text, edits)
    _loads(new_text, str(path))
    try:
        write_private(path, new_text.encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write `{path}`: {exc.strerror}") from None
    if not env.as_json:
        env.console.print(f"proposed an action schema for {count} tool(s) without one", highlight=False, markup=False)
    return new_text


def _edit(env: Env, proposal: Proposed, current: dict[str, Any]) -> dict[str, str | None]:
    changes: dict[str, str | None] = {}
    choices = _choices()
    for name in _EDITABLE:
        now = current.get(name)
        if name in choices:
            picked = click.prompt(f"  {name}", type=click.Choice(choices[name]), default=now or None, show_choices=True)
        elif name in ("resource", "headline"):
            what = "an argument name" if name == "resource" else "how its approvals read, `{argument}` for a value"
            picked = click.prompt(f"  {name} ({what}, `-` for none)", default=now or "-")
            picked = None if picked == "-" else picked
        else:
            picked = click.prompt(f"  {name}", default=now)
        if picked != now:
            changes[name] = picked
    return changes


@click.command()
@click.option("--accept-all", is_flag=True, help="Accept every proposal as written, without asking.")
@click.option(
    "--propose",
    is_flag=True,
    help="First start each server once and propose a schema for every tool that has none "
    "(a server added to upstreams.yaml by hand).",
)
@common_options
def review(env: Env, accept_all: bool, propose: bool) -> None:
    """Review the action schemas `guard-mcp import` proposed: accept, edit or skip each one.

    A proposed tool is served as `unknown` (every call asks) until it is accepted here.
    """
    if env.as_json and not accept_all:
        raise ConfigError("`--json` needs `--accept-all`: a review one by one asks questions on the terminal")
    from guard_mcp._config import DEFAULT_CONFIG, read_config_text

    path = Path(env.config_path or DEFAULT_CONFIG)
    if path.is_symlink():
        raise ConfigError(f"`{path}` is a symbolic link; review the file it points to by its own path")
    text = read_config_text(path)
    _loads(text, str(path))  # a file the guard refuses is fixed first; its error names the line
    if propose:
        text = _propose(env, path, text)
    proposals = find_proposals(text)
    console = env.console
    if not proposals:
        hint = (
            ""
            if propose
            else ("; for tools of a server added by hand, `guard-mcp tools review --propose` proposes them first")
        )
        console.print(f"no proposed action schemas in `{path}`{hint}", highlight=False, markup=False, soft_wrap=True)
        return
    edits: list[tuple[int, int, str]] = []
    counts = {"accepted": 0, "edited": 0, "skipped": 0}
    for i, proposal in enumerate(proposals):
        current = {k: _scalar_value(v) for k, v in proposal.values.items()}
        if not accept_all:
            console.rule(Text(f"{i + 1}/{len(proposals)}  {proposal.upstream} / {proposal.tool}"))
            console.print(Text(_entry_text(text, proposal)), highlight=False)
            choice = click.prompt(
                "accept, edit, skip or quit", type=click.Choice(["a", "e", "s", "q"]), show_choices=True
            )
        else:
            choice = "a"
        if choice == "q":
            break
        if choice == "s":
            counts["skipped"] += 1
            continue
        changes = _edit(env, proposal, current) if choice == "e" else {}
        edits.extend(accept_text(text, proposal, changes))
        counts["edited" if changes else "accepted"] += 1
    done = counts["accepted"] + counts["edited"]
    if done:
        from guard_mcp._state import write_private

        new_text = apply_edits(text, edits)
        _loads(new_text, str(path))
        try:
            write_private(path, new_text.encode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot write `{path}`: {exc.strerror}") from None
    left = len(proposals) - done
    if env.as_json:
        from guard_mcp.cli._common import print_json

        print_json({"config": str(path), **counts, "proposed_left": left})
        return
    console.print(
        f"{counts['accepted']} accepted, {counts['edited']} edited, {counts['skipped']} skipped"
        + (f"; wrote `{path}` (the guard serves them from its next start)" if done else "")
        + (f"; {left} still proposed (served as `unknown`)" if left else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
