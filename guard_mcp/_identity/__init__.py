"""Who is calling the guard, and the credentials the guard itself holds for its upstreams.

- `_callers`: the `Caller` the HTTP gate establishes and the `CallerCheck` contract it runs;
  `SharedToken` checks the guard's one bearer token.
- `_local`: that token when none is configured: generated at first start and kept 0600 in the state
  directory, so no HTTP bind ever serves anonymous callers.
- `_resource`: the guard as an OAuth 2.1 resource server (JWTs from the organisation's identity
  provider, RFC 9728 metadata); `_gate` picks which check runs.
- `_vault`: the OAuth tokens the guard holds for its upstreams, sealed at rest in the guard's store.
- `_upstream`: the guard as an OAuth client of an upstream (the SDK's provider, never sending a call
  without a token); `_login`: `guard-mcp login` and the credentials a serving guard hands out.

The token a client presents to the guard never leaves the guard: it is checked at the HTTP gate and
goes no further (the MCP authorization spec forbids passing it through).
"""

from __future__ import annotations

from guard_mcp._identity._callers import CALLER_SCOPE_KEY, Caller, CallerCheck, Refusal, SharedToken, caller_of
from guard_mcp._identity._gate import caller_check
from guard_mcp._identity._local import HTTP_TOKEN_FILE, http_token, http_token_path
from guard_mcp._identity._login import (
    LoginResult,
    UpstreamCredentials,
    login,
    login_states,
    oauth_upstream,
)
from guard_mcp._identity._resource import ResourceServer
from guard_mcp._identity._upstream import LocalRefusals, UpstreamOAuthClient
from guard_mcp._identity._vault import LoginState, TokenVault

__all__ = [
    "CALLER_SCOPE_KEY",
    "HTTP_TOKEN_FILE",
    "Caller",
    "CallerCheck",
    "LocalRefusals",
    "LoginResult",
    "LoginState",
    "Refusal",
    "ResourceServer",
    "SharedToken",
    "TokenVault",
    "UpstreamCredentials",
    "UpstreamOAuthClient",
    "caller_check",
    "caller_of",
    "http_token",
    "http_token_path",
    "login",
    "login_states",
    "oauth_upstream",
]
