"""`approval: authenticated`: a MEDIUM approval only a signed-in approver may give. A client that
answers every form with `accept` does not approve it: the approval stays pending for the console or the CLI."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest
from _policy_kit import make_signer, write_bundle
from guard_kit import RecordingUpstream, approval_store, config_from, reason_of, running_guard
from mcp import Client

from guard_mcp._approvals import ApprovalState
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
  console: {{enabled: false}}
upstreams:
  mail:
    command: unused-in-process
    tools:
      echo: {{action: email.send, category: communicate, reversibility: none, blast_radius: single,
              sensitivity: confidential}}
"""


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
        state: StateDir, mode: str) -> None:
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
