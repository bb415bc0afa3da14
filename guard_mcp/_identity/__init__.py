"""Who is calling the guard, and the credentials the guard itself holds for its upstreams.

- `_local`: the bearer token HTTP clients present when no identity provider is configured; generated
  at first start and kept 0600 in the state directory, so no HTTP bind ever serves anonymous callers.

The token a client presents to the guard never leaves the guard: it is checked at the HTTP gate and
goes no further (the MCP authorization spec forbids passing it through).
"""

from __future__ import annotations

from guard_mcp._identity._local import HTTP_TOKEN_FILE, http_token, http_token_path

__all__ = ["HTTP_TOKEN_FILE", "http_token", "http_token_path"]
