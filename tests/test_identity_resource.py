"""The guard as an OAuth 2.1 resource server: JWTs of the configured provider, verified, and the
principal they name carried into the bundle, the permit, approvals and the audit."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from _approvals_support import bundle, decision, open_store
from guard_kit import RecordingUpstream, config_from, meta_of, running_guard, text_of
from identity_kit import INIT, MCP_HEADERS, Idp, running_idp, wait_until_served
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from guard_mcp._clock import FakeClock
from guard_mcp._errors import ApprovalError, ConfigError
from guard_mcp._models import Actor
from guard_mcp._state import StateDir
from guard_mcp._transports import bind_http, serve_http
from guard_mcp.verify import PERMIT_META_KEY

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
ECHO = """
upstreams:
  echo:
    command: unused-in-process
    tools:
      echo: {action: echo.say, category: read, reversibility: full, blast_radius: single, sensitivity: public}
"""


@dataclass
class Served:
    base: str
    resource: str
    idp: Idp
    upstream: RecordingUpstream
    state: StateDir

    def token(self, **kw: Any) -> str:
        kw.setdefault("now", NOW)
        return self.idp.token(self.resource, **kw)


@contextlib.asynccontextmanager
async def guarded(state: StateDir, auth: str = "") -> AsyncIterator[Served]:
    async with running_idp() as idp:
        cfg = config_from(
            f"guard:\n  http:\n    auth: {{issuer: '{idp.issuer}', groups_claim: groups{auth}}}\n" + ECHO, state
        )
        up = RecordingUpstream()
        async with running_guard(cfg, state, clock=FakeClock(NOW), inprocess={"echo": up.server}) as guard:
            sock = bind_http("127.0.0.1", 0)
            base = f"http://127.0.0.1:{sock.getsockname()[1]}"
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: serve_http(guard, sock, host="127.0.0.1", token=None))
                await wait_until_served(base)
                yield Served(base, f"{base}/mcp", idp, up, state)
                tg.cancel_scope.cancel()


async def _init(served: Served, token: str | None) -> httpx2.Response:
    headers = {**MCP_HEADERS, **({"authorization": f"Bearer {token}"} if token is not None else {})}
    async with httpx2.AsyncClient(headers=headers) as http:
        return await http.post(f"{served.base}/mcp", json=INIT)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A JWS put together by hand, the way an attacker would (PyJWT refuses to make some of these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{_b64(signature)}"


def _claims(served: Served, **extra: Any) -> dict[str, Any]:
    return {
        "iss": served.idp.issuer,
        "aud": served.resource,
        "sub": "mallory",
        "iat": int(NOW),
        "exp": int(NOW + 300),
        **extra,
    }


async def test_a_token_of_the_provider_names_the_caller_in_the_audit_and_the_permit(state: StateDir) -> None:
    async with guarded(state) as served:
        for mode in ("legacy", "auto"):
            token = served.token(sub="alice", groups=["support", "billing"])
            async with (
                httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}) as http,
                Client(streamable_http_client(served.resource, http_client=http), mode=mode) as client,
            ):
                result = await client.call_tool("echo__echo", {"text": mode})
            assert text_of(result) == mode
    permits = [
        jwt.decode(meta[PERMIT_META_KEY], options={"verify_signature": False}) for _, _, meta in served.upstream.calls
    ]
    assert [p["sub"] for p in permits] == ["alice", "alice"]
    with sqlite3.connect(state.database) as conn:
        actors = {a for (a,) in conn.execute("SELECT actor FROM audit_events WHERE type = 'call.received'")}
    assert actors == {"alice"}


async def test_attack_a_principal_forged_in_meta_is_ignored(state: StateDir) -> None:
    async with guarded(state) as served:
        token = served.token(sub="alice")
        async with (
            httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(served.resource, http_client=http)) as client,
        ):
            await client.call_tool(
                "echo__echo",
                {"text": "x"},
                meta=meta_of(
                    {"principal": "root", "sub": "root", "dev.guard-mcp/principal": "root", "groups": ["admins"]}
                ),
            )
    [(_, _, meta)] = served.upstream.calls
    assert jwt.decode(meta[PERMIT_META_KEY], options={"verify_signature": False})["sub"] == "alice"
    assert not {"principal", "sub", "groups", "dev.guard-mcp/principal"} & set(meta)


async def test_without_a_token_the_challenge_points_at_the_protected_resource_metadata(state: StateDir) -> None:
    async with guarded(state) as served:
        refused = await _init(served, None)
        async with httpx2.AsyncClient() as http:
            root = await http.get(f"{served.base}/.well-known/oauth-protected-resource")
            inserted = await http.get(f"{served.base}/.well-known/oauth-protected-resource/mcp")
        accepted = await _init(served, served.token())
    assert refused.status_code == 401
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and "error=" not in challenge  # RFC 6750: no credential, no error code
    assert f'resource_metadata="{served.base}/.well-known/oauth-protected-resource/mcp"' in challenge
    for doc in (root.json(), inserted.json()):
        assert doc["resource"] == served.resource
        assert [s.rstrip("/") for s in doc["authorization_servers"]] == [served.idp.issuer]
    assert accepted.status_code == 200


def _hs256_with_public_key(served: Served) -> str:
    pem = served.idp.public_pem()
    return _forge(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
        _claims(served),
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )


ATTACKS: dict[str, Callable[[Served], str]] = {
    "another_audience": lambda s: s.idp.token("http://127.0.0.1:1/other-server/mcp", now=NOW),
    "alg_none": lambda s: _forge({"alg": "none", "typ": "JWT"}, _claims(s)),
    "alg_none_with_kid": lambda s: _forge({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, _claims(s)),
    "hs256_signed_with_the_public_key": _hs256_with_public_key,
    "expired_outside_leeway": lambda s: s.token(now=NOW - 300 - 31),
    "untrusted_issuer": lambda s: Idp(issuer="http://127.0.0.1:1").token(s.resource, now=NOW),
    "trusted_key_other_issuer": lambda s: s.token(iss="https://evil.example"),
    "not_yet_valid": lambda s: s.token(nbf=int(NOW + 120)),
    "no_principal": lambda s: s.token(sub=""),
    "garbage": lambda s: "not.a.jwt",
}


async def test_attack_tokens_that_must_not_verify_are_refused(state: StateDir) -> None:
    async with guarded(state) as served:
        answers = {attack: await _init(served, forge(served)) for attack, forge in ATTACKS.items()}
    for attack, refused in answers.items():
        assert refused.status_code == 401, attack
        assert refused.json()["error"] == "invalid_token", attack
        assert 'error="invalid_token"' in refused.headers["www-authenticate"], attack
    assert served.upstream.calls == []


async def test_an_expiry_inside_the_leeway_is_tolerated(state: StateDir) -> None:
    async with guarded(state) as served:
        inside = await _init(served, served.token(now=NOW - 300 - 29))
        es256 = await _init(served, served.token(alg="ES256"))
    assert inside.status_code == 200 and es256.status_code == 200


async def test_a_provider_that_cannot_be_reached_refuses_everyone(state: StateDir) -> None:
    cfg = config_from("guard:\n  http:\n    auth: {issuer: 'http://127.0.0.1:1'}\n" + ECHO, state)
    async with running_guard(cfg, state, clock=FakeClock(NOW), inprocess={"echo": RecordingUpstream().server}) as g:
        sock = bind_http("127.0.0.1", 0)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve_http(g, sock, host="127.0.0.1", token=None))
            await wait_until_served(base)
            token = Idp(issuer="http://127.0.0.1:1").token(f"{base}/mcp", now=NOW)
            async with httpx2.AsyncClient(headers={**MCP_HEADERS, "authorization": f"Bearer {token}"}) as http:
                answer = await http.post(f"{base}/mcp", json=INIT)
            tg.cancel_scope.cancel()
    assert answer.status_code == 503 and answer.json()["error"] == "identity_provider_unavailable"


@pytest.mark.parametrize(
    "auth",
    [
        "{issuer: 'https://idp.example', algorithms: [HS256]}",
        "{issuer: 'https://idp.example', algorithms: [none]}",
        "{issuer: 'http://idp.example'}",
    ],
)
def test_a_symmetric_algorithm_or_a_plain_http_issuer_is_refused_in_the_config(state: StateDir, auth: str) -> None:
    with pytest.raises(ConfigError, match=r"guard\.http\.auth"):
        config_from(f"guard:\n  http:\n    auth: {auth}\n", state)


def test_a_shared_token_and_an_identity_provider_are_not_both_allowed(state: StateDir) -> None:
    with pytest.raises(ConfigError, match="two ways in"):
        config_from(
            "guard:\n  http:\n    token: shared-token-0123456789\n    auth: {issuer: 'https://idp.example'}\n", state
        )


async def test_attack_a_requester_cannot_approve_their_own_call(state: StateDir) -> None:
    async with open_store(state, FakeClock(NOW)) as store:
        b = bundle(principal="alice")
        approval = await store.create(b, decision(), tool="shop__refund")
        with pytest.raises(ApprovalError, match="cannot approve their own call"):
            await store.decide(approval.id, approve=True, approver="alice")
        decided = await store.decide(approval.id, approve=True, approver="bob")
    assert decided.approver == "bob"


def test_the_groups_reach_the_policy_and_a_group_rule_matches_them(tmp_path: Any) -> None:
    from _policy_kit import action, config_for, make_signer, write_bundle

    from guard_mcp._policy import PolicyEngine

    source = """
policy: teams
version: 1
rules:
  - id: billing-refunds
    match: {action: refund.create, group: [billing, finance-*]}
    effect: allow
"""
    signer = make_signer(tmp_path / "keys")
    path = tmp_path / "teams.bundle.json"
    write_bundle(path, source, signer)
    state = StateDir(tmp_path / "state").ensure()
    engine = PolicyEngine.from_config(config_for(path, signer.public_pem), state)
    decided = {}
    for who, groups in {
        "billing": ("billing",),
        "finance": ("staff", "finance-eu"),
        "staff": ("staff",),
        "none": (),
    }.items():
        b = action().model_copy(update={"actor": Actor(principal=who, groups=groups)})
        decided[who] = engine.decide(b)[1]
    assert {k: d.rule_id for k, d in decided.items()} == {
        "billing": "billing-refunds",
        "finance": "billing-refunds",
        "staff": None,
        "none": None,
    }
