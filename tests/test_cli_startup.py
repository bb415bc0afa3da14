"""`guard-mcp --help` lists the commands without importing them, and says what each one says."""

from __future__ import annotations

import json
import subprocess
import sys

from guard_mcp.cli import _COMMANDS, _LazyGroup, _summary


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
