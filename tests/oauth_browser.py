"""The user's browser for `guard-mcp login` run as a command in the tests: `BROWSER="python -m
tests.oauth_browser %s"` makes Python's `webbrowser` start it with the authorization URL, and it signs
in and consents on the provider's pages as `alice` (tests/oauth_kit.py `Browser`), then exits."""

from __future__ import annotations

import sys

import anyio
from oauth_kit import Browser

if __name__ == "__main__":
    anyio.run(Browser().open, sys.argv[1])
