"""`requires_permit` on MCPServer tools, called over the in-process client in both protocol eras."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from guard_kit import meta_of
from mcp import Client
from mcp.server.mcpserver import Context, MCPServer
from permit_kit import REFUND, Guard, permit_header, sign_es256

from guard_mcp._clock import FakeClock
from guard_mcp.verify import PERMIT_META_KEY, PermitVerifier, requires_permit

pytestmark = pytest.mark.anyio

MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])


class Shop:
    """A tiny upstream whose write tools demand a permit; `done` records what actually ran."""

    def __init__(self, verifier: PermitVerifier) -> None:
        self.done: list[tuple[str, dict[str, Any]]] = []
        server = MCPServer("shop")
        self.server = server

        @server.tool()
        @requires_permit(verifier, action="refund.create")
        async def refund(customer_id: str, amount: int, reason: str = "") -> str:
            self.done.append(("refund", {"customer_id": customer_id, "amount": amount, "reason": reason}))
            return f"refunded {amount} to {customer_id}"

        @server.tool()
        @requires_permit(verifier, action="customer.delete")
        def delete_customer(customer_id: str, ctx: Context) -> str:
            assert ctx.request_context is not None  # the tool's own context still arrives
            self.done.append(("delete_customer", {"customer_id": customer_id}))
            return "deleted"

        @server.tool()
        @requires_permit(verifier, action="refund.create")
        async def goodwill_credit(customer_id: str, amount: int, reason: str = "") -> str:
            self.done.append(("goodwill_credit", {"customer_id": customer_id, "amount": amount, "reason": reason}))
            return f"credited {amount} to {customer_id}"

        @server.tool()
        def lookup(customer_id: str) -> str:
            return "found"


@pytest.fixture
def guard(tmp_path: Path, clock: FakeClock) -> Guard:
    return Guard.create(tmp_path / "keys", clock)


@pytest.fixture
def shop(guard: Guard) -> Shop:
    return Shop(guard.verifier())


async def call(shop: Shop, mode: str, tool: str, args: dict[str, Any], permit: str | None = None) -> Any:
    meta = meta_of({PERMIT_META_KEY: permit}) if permit is not None else None
    async with Client(shop.server, mode=mode) as client:
        return await client.call_tool(tool, args, meta=meta)


def refusal(result: Any) -> str | None:
    if not result.is_error:
        return None
    text: str = result.content[0].text
    assert text.startswith("permit_refused: ")
    assert result.meta["dev.guard-mcp/permit_refused"] == text.removeprefix("permit_refused: ")
    return text.removeprefix("permit_refused: ")


@MODES
async def test_no_permit_is_refused_and_nothing_runs(shop: Shop, mode: str) -> None:
    result = await call(shop, mode, "refund", dict(REFUND))
    assert refusal(result) == "missing"
    assert shop.done == []


@MODES
async def test_a_forged_permit_is_refused(shop: Shop, guard: Guard, mode: str) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = sign_es256(permit_header(guard.keys.current().kid), guard.mint().claims, attacker)
    assert refusal(await call(shop, mode, "refund", dict(REFUND), forged)) == "bad_signature"
    assert shop.done == []


@MODES
async def test_a_valid_permit_runs_the_tool_once(shop: Shop, guard: Guard, mode: str) -> None:
    token = guard.mint().token
    result = await call(shop, mode, "refund", dict(REFUND), token)
    assert not result.is_error
    assert result.content[0].text == "refunded 350 to cus_42"
    assert refusal(await call(shop, mode, "refund", dict(REFUND), token)) == "replayed"
    assert shop.done == [("refund", REFUND)]


@MODES
async def test_the_tool_verifies_the_arguments_it_received(shop: Shop, guard: Guard, mode: str) -> None:
    token = guard.mint({**REFUND, "amount": 350}).token
    assert refusal(await call(shop, mode, "refund", {**REFUND, "amount": 3500}, token)) == "payload_mismatch"
    assert shop.done == []


async def test_omitted_defaults_hash_as_sent(shop: Shop, guard: Guard) -> None:
    sent = {"customer_id": "cus_7", "amount": 20}  # `reason` left to its default
    result = await call(shop, "auto", "refund", sent, guard.mint(sent).token)
    assert not result.is_error
    assert shop.done == [("refund", {**sent, "reason": ""})]


async def test_a_refund_permit_does_not_delete_a_customer(shop: Shop, guard: Guard) -> None:
    token = guard.mint({"customer_id": "cus_42"}, action="refund.create", tool="delete_customer").token
    assert refusal(await call(shop, "auto", "delete_customer", {"customer_id": "cus_42"}, token)) == "wrong_action"
    good = guard.mint({"customer_id": "cus_42"}, action="customer.delete", tool="delete_customer").token
    assert not (await call(shop, "legacy", "delete_customer", {"customer_id": "cus_42"}, good)).is_error
    assert shop.done == [("delete_customer", {"customer_id": "cus_42"})]


@MODES
async def test_attack_a_permit_for_one_tool_does_not_run_another_of_the_same_action(
    shop: Shop, guard: Guard, mode: str
) -> None:
    # Two tools, one action, the same arguments: only the signed `tool` claim tells them apart.
    token = guard.mint(dict(REFUND), tool="refund").token
    assert refusal(await call(shop, mode, "goodwill_credit", dict(REFUND), token)) == "wrong_tool"
    assert not (await call(shop, mode, "refund", dict(REFUND), token)).is_error  # not burnt by the attempt
    assert shop.done == [("refund", REFUND)]


async def test_a_permit_that_is_not_a_string(shop: Shop) -> None:
    async with Client(shop.server) as client:
        result = await client.call_tool("refund", dict(REFUND), meta=meta_of({PERMIT_META_KEY: {"alg": "none"}}))
    assert refusal(result) == "malformed"


async def test_the_added_context_stays_out_of_the_schema(shop: Shop) -> None:
    async with Client(shop.server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools["refund"].input_schema["properties"]) == {"customer_id", "amount", "reason"}
    assert set(tools["delete_customer"].input_schema["properties"]) == {"customer_id"}


async def test_calling_the_function_outside_mcp_is_refused(guard: Guard) -> None:
    @requires_permit(guard.verifier(), action="refund.create")
    async def refund(customer_id: str, amount: int) -> str:
        raise AssertionError("must not run")

    result = await refund("cus_42", 350)
    assert refusal(result) == "missing"


async def test_unprotected_tools_are_untouched(shop: Shop) -> None:
    result = await call(shop, "auto", "lookup", {"customer_id": "cus_42"})
    assert not result.is_error
