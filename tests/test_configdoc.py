"""docs/config.md is generated from the config models and must match them."""

from __future__ import annotations

from pathlib import Path

from guard_mcp._config import GuardConfig, GuardSection, StdioUpstream, ToolConfig
from guard_mcp.cli._configdoc import REGENERATE, render

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_docs_config_md_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"docs/config.md is out of date with guard_mcp/_config.py: run `{REGENERATE}` and commit the result"
    )


def test_every_key_of_every_model_is_in_the_reference() -> None:
    text = render()
    for model in (GuardConfig, GuardSection, StdioUpstream, ToolConfig):
        for name, field in model.model_fields.items():
            if not field.exclude:
                assert f"| `{name}` |" in text, name
    assert "| `wait` | duration | `45s` |" in text
    assert "| `synchronous` | `full` or `normal` | `full` |" in text
