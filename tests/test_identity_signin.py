"""A standard MCP client signs in to the guard by itself: the SDK's OAuth client, the guard's 401 and
RFC 9728 metadata, and a real OpenID provider on loopback."""

from __future__ import annotations

import anyio
import httpx2
import jwt
import pytest
from guard_kit import RecordingUpstream, config_from, running_guard, text_of
from identity_kit import wait_until_served
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from oauth_kit import Browser, running_op
from pydantic import AnyUrl

from guard_mcp._state import StateDir
from guard_mcp._transports import bind_http, serve_http
from guard_mcp.verify import PERMIT_META_KEY

pytestmark = [pytest.mark.anyio, pytest.mark.subprocess]

REDIRECT = "http://127.0.0.1:9/callback"  # never listened on: the test's browser hands the redirect over


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def test_an_sdk_client_signs_in_with_the_provider_the_guard_names_and_calls_as_its_user(
    state: StateDir,
) -> None:
    async with running_op() as op:
        config = config_from(
            f"""
guard:
  http:
    auth: {{issuer: '{op.issuer}', groups_claim: groups}}
upstreams:
  echo:
    command: unused-in-process
    tools:
      echo: {{action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public}}
""",
            state,
        )
        up = RecordingUpstream()
        async with running_guard(config, state, inprocess={"echo": up.server}) as guard:
            sock = bind_http("127.0.0.1", 0)
            base = f"http://127.0.0.1:{sock.getsockname()[1]}"
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: serve_http(guard, sock, host="127.0.0.1", token=None))
                await wait_until_served(base)
                browser = Browser(user="bob", stop_at=REDIRECT)

                async def came_back() -> AuthorizationCodeResult:
                    params = httpx2.URL(browser.returned[-1]).params
                    return AuthorizationCodeResult(
                        code=params["code"], state=params.get("state"), iss=params.get("iss")
                    )

                storage = MemoryStorage()
                oauth = OAuthClientProvider(
                    f"{base}/mcp",
                    OAuthClientMetadata(
                        client_name="an agent",
                        redirect_uris=[AnyUrl(REDIRECT)],
                        grant_types=["authorization_code", "refresh_token"],
                        response_types=["code"],
                        token_endpoint_auth_method="none",
                    ),
                    storage,
                    redirect_handler=browser.open,
                    callback_handler=came_back,
                )
                async with (
                    httpx2.AsyncClient(auth=oauth) as http,
                    Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
                ):
                    result = await client.call_tool("echo__echo", {"text": "signed in"})
                tg.cancel_scope.cancel()
    assert text_of(result) == "signed in"
    assert storage.tokens is not None
    claims = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
    assert claims["aud"] == f"{base}/mcp"  # bound to the guard (RFC 8707), found from its metadata
    [(_, _, meta)] = up.calls
    assert jwt.decode(meta[PERMIT_META_KEY], options={"verify_signature": False})["sub"] == "bob"
