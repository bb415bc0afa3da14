"""Real OAuth components for the identity tests, all on loopback and started by the tests.

- `running_op()`: node-oidc-provider (the certified OpenID provider from npm), installed on first use
  into tests/.oidc with `npm install --prefix`, run by tests/oidc_op.mjs.
- `OAuthUpstream`: a remote MCP server built on the SDK's server auth support: it answers 401 with
  RFC 9728 metadata naming the provider and accepts only JWTs the provider issued for its URL.
- `Browser`: the user's part of a login, driven over HTTP against the provider's development login and
  consent pages, following redirects back to the guard's loopback callback.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from identity_kit import free_port, serve_app
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.responses import JSONResponse
from starlette.routing import Route

TESTS = Path(__file__).parent
NODE_DIR = TESTS / ".oidc"  # gitignored: the provider's npm install, and its log
OIDC_PROVIDER = "oidc-provider@9.13.3"


def node_modules() -> Path:
    """oidc-provider's install, made on first use; skips (with the reason) only where node is missing."""
    modules = NODE_DIR / "node_modules"
    if (modules / "oidc-provider" / "package.json").exists():
        return modules
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        missing = "node and npm are needed for the OpenID provider tests (apt-get install nodejs npm)"
        if os.environ.get("CI"):  # CI installs them (.ci/run): never a silent pass there
            pytest.fail(missing)
        pytest.skip(missing)
    NODE_DIR.mkdir(exist_ok=True)
    subprocess.run(
        [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--silent", OIDC_PROVIDER],
        check=True,
        timeout=300,
    )
    return modules


@dataclass
class Op:
    issuer: str
    http: httpx2.AsyncClient

    async def revoke(self, token: str, client_id: str) -> None:
        answer = await self.http.post(f"{self.issuer}/token/revocation", data={"token": token, "client_id": client_id})
        assert answer.status_code == 200, answer.text


@contextlib.asynccontextmanager
async def running_op(access_token_ttl: int = 600, *, trust: Path | None = None) -> AsyncIterator[Op]:
    """The provider on loopback. With `trust` (a certificate file) it also takes clients named by a client
    ID metadata document, fetched over TLS from a loopback server with that certificate."""
    modules = node_modules()
    port = free_port()
    log = (NODE_DIR / "op.log").open("wb")  # the provider's own account of a server_error, of the last run
    env = {**os.environ, "OP_ACCESS_TOKEN_TTL": str(access_token_ttl)}
    if trust is not None:
        env.update(OP_CLIENT_METADATA_DOCUMENTS="1", NODE_EXTRA_CA_CERTS=str(trust))
    proc = await anyio.open_process(
        [shutil.which("node") or "node", str(TESTS / "oidc_op.mjs"), str(port), str(modules)], env=env, stderr=log
    )
    try:
        assert proc.stdout is not None
        said = b""
        with anyio.fail_after(30):
            async for chunk in proc.stdout:
                said += chunk
                if b"listening" in said:
                    break
        async with httpx2.AsyncClient() as http:
            yield Op(f"http://127.0.0.1:{port}", http)
    finally:
        proc.terminate()
        with anyio.move_on_after(5):
            await proc.wait()
        log.close()


@dataclass
class OAuthUpstream:
    """Records every bearer token it was shown, and who each call ran as."""

    op: Op
    url: str = ""
    tokens_seen: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)  # of every request to the MCP endpoint
    call_eras: list[str] = field(default_factory=list)

    def wrap(self, app: Any) -> Any:
        async def recording(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].startswith("/mcp"):
                self.headers_seen.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
            await app(scope, receive, send)

        return recording

    def unauthenticated(self) -> list[dict[str, str]]:
        return [h for h in self.headers_seen if "authorization" not in h]

    def eras(self) -> set[str]:
        """How each call of `whoami` came: its protocol version, and ` session` when it carried one."""
        return set(self.call_eras)

    def server(self) -> MCPServer:
        upstream = self

        class Verifier:
            async def verify_token(self, token: str) -> AccessToken | None:
                upstream.tokens_seen.append(token)
                try:
                    key = await anyio.to_thread.run_sync(
                        jwt.PyJWKClient(f"{upstream.op.issuer}/jwks").get_signing_key_from_jwt, token
                    )
                    claims = jwt.decode(
                        token, key, algorithms=["RS256"], audience=upstream.url, issuer=upstream.op.issuer
                    )
                except jwt.PyJWTError:
                    return None
                return AccessToken(
                    token=token,
                    client_id=str(claims.get("client_id", "")),
                    scopes=str(claims.get("scope", "")).split(),
                    expires_at=int(claims["exp"]),
                    resource=upstream.url,
                    subject=claims.get("sub"),
                )

        mcp = MCPServer(
            "remote",
            token_verifier=Verifier(),
            auth=AuthSettings(
                issuer_url=self.op.issuer,
                resource_server_url=self.url,
                validate_token_resource=True,
                required_scopes=["mcp"],
            ),
        )

        @mcp.tool()
        def whoami() -> str:
            """Who the upstream thinks is calling."""
            from mcp.server.auth.middleware.auth_context import get_access_token

            token = get_access_token()
            subject = token.subject if token is not None else "nobody"
            upstream.subjects.append(str(subject))
            headers = upstream.headers_seen[-1]  # this call's request (the tests call one at a time)
            upstream.call_eras.append(
                f"{headers.get('mcp-protocol-version')}{' session' if 'mcp-session-id' in headers else ''}"
            )
            return f"you are {subject}"

        @mcp.tool()
        def echo_auth() -> str:
            """A careless upstream that repeats the credential it was given."""
            from mcp.server.auth.middleware.auth_context import get_access_token
            from mcp.server.mcpserver.exceptions import ToolError

            token = get_access_token()
            raise ToolError(f"rejected credential Bearer {token.token if token else ''}")

        return mcp


def handshake_only(app: Any) -> Any:
    """An MCP endpoint as servers of the 2025-11-25 era answer: a request of a later protocol version
    (the 2026-07-28 client's `server/discover` probe) is a 400, so the client falls back to `initialize`
    and a session (`Mcp-Session-Id`)."""

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        version = dict(scope["headers"]).get(b"mcp-protocol-version", b"").decode()
        if version and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            body = {
                "jsonrpc": "2.0",
                "id": "server-error",
                "error": {"code": -32600, "message": f"Bad Request: Unsupported protocol version: {version}"},
            }
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        await app(scope, receive, send)

    return endpoint


@contextlib.asynccontextmanager
async def running_upstream(op: Op, *, era: str = "2026") -> AsyncIterator[OAuthUpstream]:
    """The upstream on loopback; `era="handshake"` serves it as a 2025-11-25 server would (stateful sessions),
    `"2026"` as a server of both eras (a 2026-07-28 client then speaks the stateless era)."""
    port = free_port()
    up = OAuthUpstream(op, url=f"http://127.0.0.1:{port}/mcp")
    app = up.server().streamable_http_app()
    if era == "handshake":
        [route] = [r for r in app.routes if isinstance(r, Route) and r.path == "/mcp"]
        auth = route.app  # the SDK's bearer check, in front of the MCP endpoint: the era is decided behind it
        auth.app = handshake_only(auth.app)  # type: ignore[attr-defined]
    async with serve_app(up.wrap(app), port=port, lifespan="on"):
        yield up


_FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.I)
_ABORT = re.compile(r'<a[^>]*href="([^"]*/abort)"', re.I)
_INPUT = re.compile(r'<input[^>]*\sname="([^"]+)"(?:[^>]*?\svalue="([^"]*)")?[^>]*>', re.I)


@dataclass
class Browser:
    """Signs in as `user` and consents, the way a person would click through the provider's pages, then
    follows the redirect back to the client (or, with `stop_at`, hands the redirect to `returned`). With
    `cancel`, the user cancels on the login page instead, and the provider sends an error back."""

    user: str = "alice"
    stop_at: str | None = None
    cancel: bool = False
    visited: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)

    async def open(self, url: str) -> None:
        self.visited.append(url)
        async with httpx2.AsyncClient(timeout=30) as http:
            page = await self._follow(http, await http.get(url))
            if self.cancel:
                link = _ABORT.search(page.text) if page is not None else None
                assert page is not None and link is not None, page.text[:500] if page else None
                page = await self._follow(http, await http.get(httpx2.URL(str(page.url)).join(html.unescape(link[1]))))
                assert page is not None and "did not succeed" in page.text, page.text[:500] if page else None
                return
            for _ in range(4):  # login, then consent
                match = _FORM.search(page.text) if page is not None else None
                if page is None or match is None:
                    break
                fields: dict[str, Any] = {name: html.unescape(value or "") for name, value in _INPUT.findall(page.text)}
                fields.update(login=self.user, password="any")
                action = httpx2.URL(str(page.url)).join(html.unescape(match.group(1)))
                page = await self._follow(http, await http.post(action, data=fields))
            if self.stop_at is None:
                assert page is not None and "logged in" in page.text, page.text[:500] if page else None
            else:
                assert self.returned, "the provider never redirected back"

    async def _follow(self, http: httpx2.AsyncClient, response: httpx2.Response) -> httpx2.Response | None:
        for _ in range(10):
            location = response.headers.get("location")
            if not response.is_redirect or location is None:
                return response
            target = str(response.url.join(location))
            if self.stop_at is not None and target.startswith(self.stop_at):
                self.returned.append(target)
                return None
            response = await http.get(target)
        return response
