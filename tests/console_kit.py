"""Shared helpers for the console tests: a software passkey, an in-memory console, signing in.

`SoftPasskey` answers WebAuthn ceremonies the way a platform authenticator would, built from the
`fido2` package's structures (authenticator data, attestation object, client data) and an ES256
key from `cryptography`: the console verifies it with the `webauthn` package, as it does a browser's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import ES256
from fido2.webauthn import AttestationObject, AttestedCredentialData, AuthenticatorData, CollectedClientData
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

from guard_mcp._approvals import ApprovalStore
from guard_mcp._clock import Clock
from guard_mcp._config import ApprovalsConfig, ConsoleConfig
from guard_mcp._console import Console, build_console_app, open_console
from guard_mcp._state import StateDir

ORIGIN = "http://localhost:8766"
_FLAGS = AuthenticatorData.FLAG


class SoftPasskey:
    """One resident ES256 credential; `verified=False` answers without user verification."""

    def __init__(self, *, origin: str = ORIGIN, rp_id: str = "localhost", verified: bool = True) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = secrets.token_bytes(32)
        self.counter = 0
        self.origin = origin
        self.rp_id = rp_id
        self.verified = verified
        self.user_handle = b""

    @property
    def id(self) -> str:
        return bytes_to_base64url(self.credential_id)

    def _flags(self, extra: int = 0) -> AuthenticatorData.FLAG:
        return _FLAGS(_FLAGS.UP | (_FLAGS.UV if self.verified else 0) | extra)

    def create(self, options: dict[str, Any]) -> str:
        challenge = base64url_to_bytes(options["challenge"])
        self.user_handle = base64url_to_bytes(options["user"]["id"])
        client_data = CollectedClientData.create(type="webauthn.create", challenge=challenge, origin=self.origin)
        public = ES256.from_cryptography_key(self.key.public_key())  # type: ignore[no-untyped-call]  # fido2 is untyped here
        attested = AttestedCredentialData.create(b"\0" * 16, self.credential_id, public)
        data = AuthenticatorData.create(
            hashlib.sha256(self.rp_id.encode()).digest(), self._flags(_FLAGS.AT), self.counter, bytes(attested)
        )
        attestation = AttestationObject.create("none", data, {})
        return json.dumps(
            {
                "id": self.id,
                "rawId": self.id,
                "type": "public-key",
                "response": {
                    "clientDataJSON": bytes_to_base64url(bytes(client_data)),
                    "attestationObject": bytes_to_base64url(bytes(attestation)),
                    "transports": ["internal"],
                },
            }
        )

    def get(self, options: dict[str, Any], *, counter: int | None = None, origin: str | None = None) -> str:
        """An assertion over the options' challenge; `counter` forces the signature counter (a clone's)."""
        self.counter = self.counter + 1 if counter is None else counter
        challenge = base64url_to_bytes(options["challenge"])
        client_data = CollectedClientData.create(type="webauthn.get", challenge=challenge, origin=origin or self.origin)
        data = AuthenticatorData.create(hashlib.sha256(self.rp_id.encode()).digest(), self._flags(), self.counter)
        signature = self.key.sign(bytes(data) + client_data.hash, ec.ECDSA(hashes.SHA256()))
        return json.dumps(
            {
                "id": self.id,
                "rawId": self.id,
                "type": "public-key",
                "response": {
                    "clientDataJSON": bytes_to_base64url(bytes(client_data)),
                    "authenticatorData": bytes_to_base64url(bytes(data)),
                    "signature": bytes_to_base64url(signature),
                    "userHandle": bytes_to_base64url(self.user_handle),
                },
            }
        )


@dataclass
class Harness:
    console: Console
    approvals: ApprovalStore
    client: httpx2.AsyncClient
    events: list[Any]

    def browser(self, origin: str = ORIGIN) -> httpx2.AsyncClient:
        """Another browser (its own cookies) on the same console."""
        return _client(self.client._transport, origin)


def _client(transport: Any, origin: str = ORIGIN) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=transport, base_url=ORIGIN, headers={"origin": origin}, follow_redirects=False)


@contextlib.asynccontextmanager
async def console_harness(
    state: StateDir, clock: Clock, *, approvals: ApprovalsConfig | None = None, **console_config: Any
) -> AsyncIterator[Harness]:
    store = await ApprovalStore.open(state, clock=clock, config=approvals or ApprovalsConfig())
    events: list[Any] = []

    async def record(event: Any) -> None:
        events.append(event)

    try:
        async with open_console(
            approvals=store,
            state=state,
            clock=clock,
            config=ConsoleConfig(**console_config),
            record=record,
            public_url=f"{ORIGIN}/console",
        ) as console:
            app = build_console_app(console, listen_host="127.0.0.1")
            async with _client(httpx2.ASGITransport(app=app)) as client:
                yield Harness(console, store, client, events)
    finally:
        await store.close()


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match is not None, "no CSRF token on the page"
    return match.group(1)


async def enrol(
    h: Harness, name: str, groups: list[str], passkey: SoftPasskey, client: httpx2.AsyncClient | None = None
) -> None:
    """Add approver `name` and enrol `passkey` through the one-time link, as a browser would."""
    client = client or h.client
    if await h.approvals.approvers.get(name) is None:
        await h.approvals.approvers.enrol(name, groups)
    token = await h.console.store.issue_enrolment(name, 3600)
    assert token is not None
    response = await use_enrolment(client, token, passkey)
    assert response.status_code == 303, response.text


async def use_enrolment(client: httpx2.AsyncClient, token: str, passkey: SoftPasskey) -> httpx2.Response:
    page = await client.get(f"/console/enrol/{token}")
    if page.status_code != 200:
        return page
    csrf = csrf_of(page.text)
    options = await client.post(f"/console/enrol/{token}/options", headers={"x-csrf-token": csrf})
    if options.status_code != 200:
        return options
    return await client.post(
        f"/console/enrol/{token}", data={"csrf": csrf, "credential": passkey.create(options.json())}
    )


async def sign_in(
    client: httpx2.AsyncClient, passkey: SoftPasskey, *, next_path: str | None = None, **assertion: Any
) -> httpx2.Response:
    page = await client.get("/console/signin", params={} if next_path is None else {"next": next_path})
    if page.status_code == 303:  # already signed in
        return page
    csrf = csrf_of(page.text)
    options = await client.post("/console/signin/options", headers={"x-csrf-token": csrf})
    assert options.status_code == 200, options.text
    form = {"csrf": csrf, "assertion": passkey.get(options.json(), **assertion)}
    if next_path is not None:
        form["next"] = next_path
    return await client.post("/console/signin", data=form)


async def page_csrf(client: httpx2.AsyncClient, path: str = "/console/") -> str:
    page = await client.get(path)
    assert page.status_code == 200, (page.status_code, page.text[:300])
    return csrf_of(page.text)


async def step_up(client: httpx2.AsyncClient, approval_id: str, passkey: SoftPasskey, **assertion: Any) -> str:
    """A passkey assertion over the step-up challenge the console issues for `approval_id`."""
    csrf = await page_csrf(client, f"/console/approvals/{approval_id}")
    options = await client.post(f"/console/approvals/{approval_id}/challenge", headers={"x-csrf-token": csrf})
    assert options.status_code == 200, options.text
    return passkey.get(options.json(), **assertion)


async def decide(client: httpx2.AsyncClient, approval_id: str, decision: str, **fields: str) -> httpx2.Response:
    csrf = fields.pop("csrf", None) or await page_csrf(client, f"/console/approvals/{approval_id}")
    return await client.post(
        f"/console/approvals/{approval_id}/decide", data={"csrf": csrf, "decision": decision, **fields}
    )


def form_only(monkeypatch: Any) -> None:
    """From here on, SDK clients with an elicitation callback declare form mode only (as Claude Code
    does), in both eras; the SDK's own clients declare URL mode as well."""
    import mcp_types as types
    from mcp.client.session import ClientSession

    build = ClientSession._build_capabilities

    def form_only_capabilities(self: ClientSession, version: str) -> types.ClientCapabilities:
        capabilities = build(self, version)
        if capabilities.elicitation is None:
            return capabilities
        only_form = types.ElicitationCapability(form=types.FormElicitationCapability())
        return capabilities.model_copy(update={"elicitation": only_form})

    monkeypatch.setattr(ClientSession, "_build_capabilities", form_only_capabilities)
