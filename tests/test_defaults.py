"""An argument the caller leaves out: the upstream's schema default is what runs, so it is what the
guard validates, decides, binds into the permit and forwards (guard_mcp/_intercept.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from _policy_kit import make_signer, write_bundle
from guard_kit import RecordingUpstream, config_from, reason_of, running_guard, text_of
from mcp import Client
from pydantic import BaseModel

from guard_mcp._intercept import with_defaults
from guard_mcp._state import StateDir
from guard_mcp.verify import PERMIT_META_KEY, PermitVerifier

pytestmark = pytest.mark.anyio
MODES = ["legacy", "auto"]


def refund_tool(currency: dict[str, Any]) -> types.Tool:
    return types.Tool(
        name="refund",
        description="Refund.",
        input_schema={
            "type": "object",
            "required": ["amount"],
            "properties": {"amount": {"type": "number"}, "currency": currency},
        },
    )


def refund_config(state: StateDir, extra: str = "", guard: str = "") -> Any:
    return config_from(
        f"""
{guard}
upstreams:
  shop:
    command: unused-in-process
    tools:
      refund: {{action: refund.create, category: read, reversibility: full, blast_radius: single,
               sensitivity: public{extra}}}
""",
        state,
    )


USD_ONLY = ", constraints: {currency: {const: USD}}"


def received(state: StateDir) -> list[dict[str, Any]]:
    with sqlite3.connect(state.database) as conn:
        return [
            json.loads(d)
            for (d,) in conn.execute("SELECT data FROM audit_events WHERE type = 'call.received' ORDER BY seq")
        ]


@pytest.mark.parametrize("mode", MODES)
async def test_attack_leaving_out_a_constrained_argument_does_not_run_the_upstreams_default(
    state: StateDir, mode: str
) -> None:
    # `currency: EUR` is refused by the constraint; leaving it out used to run, and the upstream filled in EUR.
    up = RecordingUpstream([refund_tool({"type": "string", "default": "EUR"})])
    async with running_guard(refund_config(state, USD_ONLY), state, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server, mode=mode) as client:
            explicit = await client.call_tool("shop__refund", {"amount": 5, "currency": "EUR"})
            omitted = await client.call_tool("shop__refund", {"amount": 5})
    assert reason_of(explicit) == "schema_violation"
    assert reason_of(omitted) == "schema_violation", text_of(omitted)
    assert "`currency`" in text_of(omitted) and "default" in text_of(omitted)
    assert up.calls == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_default_is_filled_in_forwarded_and_covered_by_the_permit(state: StateDir, mode: str) -> None:
    up = RecordingUpstream([refund_tool({"type": "string", "default": "USD"})])
    async with running_guard(refund_config(state, USD_ONLY), state, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server, mode=mode) as client:
            result = await client.call_tool("shop__refund", {"amount": 5})
    assert not result.is_error, text_of(result)
    [(_, arguments, meta)] = up.calls
    assert arguments == {"amount": 5, "currency": "USD"}  # the upstream is told, not left to choose
    verifier = PermitVerifier(
        jwks=state.root / "jwks.json", issuer="guard-mcp", audience="shop", environment="development"
    )
    assert verifier.verify(meta[PERMIT_META_KEY], action="refund.create", arguments=arguments).valid
    assert not verifier.verify(meta[PERMIT_META_KEY], action="refund.create", arguments={"amount": 5}).valid
    [event] = received(state)
    assert event["arguments"] == {"amount": 5, "currency": "USD"} and event["defaulted"] == ["currency"]


async def test_a_constrained_argument_with_no_default_must_be_given(state: StateDir) -> None:
    up = RecordingUpstream([refund_tool({"type": "string"})])
    async with running_guard(refund_config(state, USD_ONLY), state, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server) as client:
            omitted = await client.call_tool("shop__refund", {"amount": 5})
            given = await client.call_tool("shop__refund", {"amount": 5, "currency": "USD"})
    assert reason_of(omitted) == "schema_violation"
    assert "`currency` has a constraint in upstreams.yaml and no default" in text_of(omitted)
    assert not given.is_error
    assert [c[1] for c in up.calls] == [{"amount": 5, "currency": "USD"}]


@pytest.mark.parametrize("mode", MODES)
async def test_attack_a_policy_rule_on_an_omitted_argument_sees_the_default(
    state: StateDir, tmp_path: Path, mode: str
) -> None:
    # Without the default the rule's condition is undecided, the rule does not match, and the next one allows.
    signer = make_signer(tmp_path / "keys")
    write_bundle(
        tmp_path / "shop.bundle.json",
        """
policy: shop
version: 1
rules:
  - id: foreign-currency
    match: {action: refund.create}
    when: {arg: currency, ne: USD}
    effect: deny
    reason: foreign_currency
  - id: refunds
    match: {action: refund.create}
    effect: allow
""",
        signer,
    )
    guard_section = f"guard: {{policy: {tmp_path / 'shop.bundle.json'}, trusted_policy_keys: [{signer.public_pem}]}}"
    up = RecordingUpstream([refund_tool({"type": "string", "default": "EUR"})])
    cfg = refund_config(state, guard=guard_section)
    async with running_guard(cfg, state, inprocess={"shop": up.server}) as guard:
        async with Client(guard.server, mode=mode) as client:
            usd = await client.call_tool("shop__refund", {"amount": 5, "currency": "USD"})
            omitted = await client.call_tool("shop__refund", {"amount": 5})
    assert not usd.is_error, text_of(usd)
    assert reason_of(omitted) == "foreign_currency"
    assert [c[1] for c in up.calls] == [{"amount": 5, "currency": "USD"}]


async def test_nested_defaults_of_a_pydantic_model_are_filled_in(state: StateDir) -> None:
    class Options(BaseModel):
        currency: str = "EUR"
        notify: bool = True

    class Refund(BaseModel):
        amount: float
        options: Options = Options()

    tool = types.Tool(name="refund", description="Refund.", input_schema=Refund.model_json_schema())
    cfg = refund_config(state, ", constraints: {options: {properties: {currency: {const: USD}}}}")
    up = RecordingUpstream([tool])
    async with running_guard(cfg, state, inprocess={"shop": up.server}) as guard, Client(guard.server) as client:
        whole = await client.call_tool("shop__refund", {"amount": 5})  # `options` left out: its default, EUR
        partly = await client.call_tool("shop__refund", {"amount": 5, "options": {"notify": False}})
        usd = await client.call_tool("shop__refund", {"amount": 5, "options": {"currency": "USD"}})
    assert reason_of(whole) == "schema_violation" and reason_of(partly) == "schema_violation"
    assert not usd.is_error, text_of(usd)
    assert [c[1] for c in up.calls] == [{"amount": 5, "options": {"currency": "USD", "notify": True}}]


def test_defaults_fill_only_what_is_missing_and_never_share_the_schemas_values() -> None:
    schema = {
        "type": "object",
        "$defs": {"Address": {"type": "object", "properties": {"country": {"default": "DE"}}}},
        "properties": {
            "tags": {"type": "array", "default": ["a"]},
            "given": {"default": 1},
            "address": {"$ref": "#/$defs/Address"},
            "either": {"anyOf": [{"properties": {"x": {"default": 1}}}, {"type": "null"}]},
            "both": {"allOf": [{"properties": {"y": {"default": 2}}}]},
        },
    }
    filled, paths = with_defaults(schema, {"given": 0, "address": {}, "either": {}, "both": {}})
    assert filled == {"given": 0, "tags": ["a"], "address": {"country": "DE"}, "either": {}, "both": {"y": 2}}
    assert sorted(paths) == ["address.country", "both.y", "tags"]
    filled["tags"].append("b")
    assert schema["properties"]["tags"]["default"] == ["a"]  # type: ignore[index]


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"a": {"$ref": "#/properties/a"}}},  # a `$ref` to itself
        {"properties": {"a": {"$ref": "#/nowhere"}}},
        {"properties": {"a": {"$ref": "https://example.com/s.json"}}},  # never fetched
        {"properties": "not a mapping"},
        {"properties": {"a": True}},
    ],
)
def test_odd_schemas_fill_in_nothing_and_never_fail(schema: dict[str, Any]) -> None:
    assert with_defaults(schema, {"b": 1}) == ({"b": 1}, ())
