"""The user's browser for `guard-mcp login` run as a command in the tests: `BROWSER="python
tests/oauth_browser.py %s"` makes Python's `webbrowser` start it with the authorization URL, and it signs
in and consents on the provider's pages as `alice` (tests/oauth_kit.py `Browser`), then exits. Run as a
script, so that tests/ is on its path and it imports the kit by the name the tests use."""

from __future__ import annotations

import sys

import anyio
from oauth_kit import Browser

if __name__ == "__main__":
    anyio.run(Browser().open, sys.argv[1])
