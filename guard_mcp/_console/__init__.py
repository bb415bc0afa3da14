"""The web approval console: the queue, the approval card, passkey sign-in and step-up, the audit view.

`_store` its tables (sessions, challenges, enrolment links, passkeys); `_passkeys` WebAuthn through
the `webauthn` package; `_security` the Host/Origin checks, the headers on every response, CSRF and
`next`; `_context` what views share and how text is shown; `_auth` enrolment, sign-in, sign-out;
`_views` the queue, the card and deciding;
`_manage` tools, policy and "explain", session grants, approvers; `_audit_view` calls, timelines and the chain's status;
`_app` the routes and the ways the console is served. Templates and static files are package data.
"""

from __future__ import annotations

from guard_mcp._console._app import (
    URL_FILE,
    build_console_app,
    console_enabled,
    mount_console,
    open_console,
    open_guard_console,
    serve_console,
)
from guard_mcp._console._context import Console
from guard_mcp._console._store import ConsoleStore

__all__ = [
    "URL_FILE",
    "Console",
    "ConsoleStore",
    "build_console_app",
    "console_enabled",
    "mount_console",
    "open_console",
    "open_guard_console",
    "serve_console",
]
