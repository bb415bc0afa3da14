"""The `guard-mcp` command line. Sub-commands live in one module each and load lazily, so
`guard-mcp approvals approve` in a second terminal starts fast."""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["main"]

# command name -> (module, attribute)
_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("guard_mcp.cli._serve", "serve"),
    "check": ("guard_mcp.cli._serve", "check"),
    "tools": ("guard_mcp.cli._tools", "tools"),
    "import": ("guard_mcp.cli._import", "import_"),
    "demo": ("guard_mcp.cli._demo", "demo"),
    "policy": ("guard_mcp.cli._policy", "policy"),
    "keys": ("guard_mcp.cli._keys", "keys"),
    "permits": ("guard_mcp.cli._keys", "permits"),
    "audit": ("guard_mcp.cli._audit", "audit"),
    "approvals": ("guard_mcp.cli._approvals", "approvals"),
    "approvers": ("guard_mcp.cli._approvals", "approvers"),
    "simulate": ("guard_mcp.cli._simulate", "simulate"),
    "limits": ("guard_mcp.cli._limits", "limits"),
    "login": ("guard_mcp.cli._login", "login"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in _COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        try:
            module = importlib.import_module(target[0])
        except ModuleNotFoundError as exc:
            if exc.name == target[0]:
                return None
            raise
        cmd: Any = getattr(module, target[1], None)
        return cmd if isinstance(cmd, click.Command) else None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="guard-mcp")
def main() -> None:
    """guard-mcp: an MCP server that decides, approves, permits and audits every tool call."""
