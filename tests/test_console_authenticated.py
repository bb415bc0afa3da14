"""`approval: authenticated`: a MEDIUM approval only a signed-in approver may give. A client that
answers every form with `accept` does not approve it: the approval stays pending for the console or the CLI."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest
from _approvals_support import bundle, decision
from _policy_kit import make_signer, write_bundle
from console_kit import ORIGIN, SoftPasskey, console_harness, enrol, form_only, sign_in
from guard_kit import RecordingUpstream, approval_store, config_from, reason_of, running_guard
from mcp import Client

from guard_mcp._approvals import ApprovalState, InBandRefused
from guard_mcp._clock import FakeClock
from guard_mcp._console import open_guard_console
from guard_mcp._errors import PolicyError
from guard_mcp._policy import compile_policy
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

POLICY = """
policy: mail
version: 1
rules:
  - id: mail-external
    match: {action: email.send}
    when: {arg: text, prefix: external}
    effect: approve
    approval: authenticated
  - id: mail-internal
    match: {action: email.send}
    effect: approve
"""
CONFIG = """
guard:
  policy: {policy}
  trusted_policy_keys: [{key}]
  approvals: {{wait: 0.2s, heartbeat: 0.05s}}
  console: {{enabled: false}}  # the in-process tests serve it themselves where they need it
upstreams:
  mail:
    command: unused-in-process
    tools:
      echo: {{action: email.send, category: communicate, reversibility: none, blast_radius: single,
              sensitivity: confidential}}
"""
URL = f"{ORIGIN}/console"


def test_the_rule_key_compiles_for_approve_only_and_only_as_authenticated() -> None:
    bundle = compile_policy(POLICY)
    assert bundle["rules"][0]["then"]["approval"] == "authenticated"
    assert "approval" not in bundle["rules"][1]["then"]  # other rules keep their bytes
    with pytest.raises(PolicyError, match="`approval` applies to `effect: approve` only"):
        compile_policy("policy: p\nversion: 1\nrules:\n  - {id: r, effect: deny, approval: authenticated}\n")
    with pytest.raises(PolicyError, match="`approval` takes authenticated"):
        compile_policy("policy: p\nversion: 1\nrules:\n  - {id: r, effect: approve, approval: anyone}\n")


async def _accepts_everything(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"decision": "approve"})


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_client_that_accepts_every_form_does_not_approve_an_authenticated_call(
    state: StateDir, mode: str
) -> None:
    signer = make_signer(state.root.parent / "signer")
    path = state.root.parent / "mail.bundle.json"
    write_bundle(path, POLICY, signer)
    config = config_from(CONFIG.format(policy=path, key=signer.public_pem), state)
    up = RecordingUpstream()
    async with running_guard(config, state, inprocess={"mail": up.server}) as guard:
        async with Client(guard.server, mode=mode, elicitation_callback=_accepts_everything) as client:
            internal = await client.call_tool("mail__echo", {"text": "internal note"})
            assert not internal.is_error  # the ordinary MEDIUM rule: approved in-band, as before
            external = await client.call_tool("mail__echo", {"text": "external offer"})
            assert reason_of(external) == "pending_approval"
            assert [c[1]["text"] for c in up.calls] == ["internal note"]
            approval_id = (external.meta or {})["dev.guard-mcp/decision"]["approval_id"]
            store = approval_store(guard)
            record = await store.get(approval_id)
            assert record is not None and record.state is ApprovalState.PENDING
    assert record.rule_id == "mail-external"


def _guard_config(state: StateDir) -> Any:
    signer = make_signer(state.root.parent / "signer")
    path = state.root.parent / "mail.bundle.json"
    write_bundle(path, POLICY, signer)
    return config_from(CONFIG.format(policy=path, key=signer.public_pem), state)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("declares", ["url", "form"])
async def test_attack_with_the_console_served_an_authenticated_call_is_still_not_approved_in_the_client(
    state: StateDir, mode: str, declares: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client is sent the page (URL mode) or a form that only carries the link: its `accept` with
    an approve answer attached decides nothing."""
    if declares == "form":
        form_only(monkeypatch)
    up = RecordingUpstream()
    shown: list[types.ElicitRequestParams] = []

    async def accepts(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        shown.append(params)
        return await _accepts_everything(context, params)

    async with (
        running_guard(_guard_config(state), state, inprocess={"mail": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=URL),
    ):
        async with Client(guard.server, mode=mode, elicitation_callback=accepts) as client:
            result = await client.call_tool("mail__echo", {"text": "external offer"})
        assert reason_of(result) == "pending_approval"
        record = await approval_store(guard).get((result.meta or {})["dev.guard-mcp/decision"]["approval_id"])
    assert record is not None and record.state is ApprovalState.PENDING and record.authenticated
    assert up.calls == [] and len(shown) == 1
    if declares == "url":
        assert isinstance(shown[0], types.ElicitRequestURLParams)
    else:
        assert isinstance(shown[0], types.ElicitRequestFormParams) and shown[0].requested_schema["properties"] == {}


async def test_attack_every_in_band_path_is_refused_for_an_authenticated_approval(state: StateDir) -> None:
    """The 2026-07-28 retry with an approve answer forged onto the link's requestState, the same on a
    form requestState sealed for it, and the answer handed straight to the stage: none approves."""
    up = RecordingUpstream()
    async with (
        running_guard(_guard_config(state), state, inprocess={"mail": up.server}) as guard,
        open_guard_console(guard, listen_host="127.0.0.1", url=URL),
    ):
        stage = guard.pipeline.approvals
        assert stage is not None
        forged = {"approval": {"action": "accept", "content": {"decision": "approve"}}}
        async with Client(guard.server, mode="auto", elicitation_callback=_accepts_everything) as client:
            first = await client.session.call_tool("mail__echo", {"text": "external offer"}, allow_input_required=True)
            assert isinstance(first, types.InputRequiredResult) and first.request_state and first.input_requests
            asked = first.input_requests["approval"].params
            assert isinstance(asked, types.ElicitRequestURLParams)
            approval_id = asked.url.rsplit("/", 1)[1]
            # the link's state, answered as if it had been the form
            retried = await client.call_tool(
                "mail__echo",
                {"text": "external offer"},
                input_responses=forged,  # type: ignore[arg-type]
                request_state=first.request_state,
            )
            assert reason_of(retried) == "pending_approval"
            # a form state for this approval (the guard never seals one for it)
            approval = await stage.store.get(approval_id)
            assert approval is not None
            form_state = stage.sealer.seal(
                approval_id=approval_id,
                tool=approval.tool,
                payload_hash=approval.payload_hash,
                policy=approval.policy,
                principal=approval.principal,
                session=None,
                deadline=approval.deadline,
                asked="form",
            )
            denied = await client.call_tool(
                "mail__echo",
                {"text": "external offer"},
                input_responses=forged,  # type: ignore[arg-type]
                request_state=form_state,
            )
            assert reason_of(denied) == "authenticated_approval_required"
        with pytest.raises(InBandRefused) as refused:  # the stage's own in-band door: the store refuses
            await stage._apply_answer(approval, "accept", {"decision": "approve"}, None)
        assert refused.value.reason == "authenticated_approval_required"
        record = await stage.store.get(approval_id)
    assert record is not None and record.state is ApprovalState.PENDING
    assert up.calls == []


async def test_the_card_says_an_authenticated_approval_is_never_approved_in_the_agents_client(state: StateDir) -> None:
    async with console_harness(state, FakeClock()) as h:
        passkey = SoftPasskey()
        await enrol(h, "ana", ["finance"], passkey)
        assert (await sign_in(h.client, passkey)).status_code == 303
        signed_in_only = await h.approvals.create(
            bundle(), decision().model_copy(update={"authenticated": True}), tool="mail__echo"
        )
        ordinary = await h.approvals.create(bundle(request_id="req-2"), decision(), tool="mail__echo")
        shown = (await h.client.get(f"/console/approvals/{signed_in_only.id}")).text
        plain = (await h.client.get(f"/console/approvals/{ordinary.id}")).text
    assert 'id="authenticated"' in shown and "signed-in approver only" in shown
    assert 'id="authenticated"' not in plain
