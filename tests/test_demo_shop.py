from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from guard_kit import meta_of, text_of
from mcp import Client, StdioServerParameters
from mcp_types import RequestParamsMeta

from guard_mcp._canonical import payload_hash
from guard_mcp._clock import Clock, FakeClock, SystemClock
from guard_mcp._keys import KeyStore
from guard_mcp._models import ActionBundle, Actor, Decision, Effect
from guard_mcp._permits import PermitIssuer
from guard_mcp.demo._shopdb import ShopDB, ShopError
from guard_mcp.demo.echo import build_echo
from guard_mcp.demo.shop import ACTIONS, build_shop, main, read_state, verifier_from_env
from guard_mcp.verify import PERMIT_META_KEY, REFUSAL_META_KEY, PermitVerifier, SqliteReplayStore

WRITES: list[tuple[str, dict[str, Any]]] = [
    ("refund", {"order_id": "ord_1001", "customer_id": "cus_123", "amount": 20.5, "reason": "arrived broken"}),
    ("send_email", {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}),
    ("delete_customer", {"customer_id": "cus_789"}),
    ("grant_role", {"user": "mallory", "role": "admin"}),
]


@pytest.fixture
def db(tmp_path: Path) -> ShopDB:
    return ShopDB(tmp_path / "shop.db")


@pytest.mark.anyio
async def test_lookup_order_reads_the_seeded_order(db: ShopDB) -> None:
    async with Client(build_shop(db)) as client:
        result = await client.call_tool("lookup_order", {"order_id": "ord_1001"})
    assert not result.is_error
    assert result.structured_content == {
        "order_id": "ord_1001",
        "customer_id": "cus_123",
        "item": "Mechanical keyboard",
        "amount": 349.0,
        "currency": "EUR",
        "status": "delivered",
        "refunded": 0.0,
    }


@pytest.mark.anyio
async def test_lookup_of_an_unknown_order_is_an_error_result(db: ShopDB) -> None:
    async with Client(build_shop(db)) as client:
        result = await client.call_tool("lookup_order", {"order_id": "ord_9999"})
    assert result.is_error
    assert "`ord_9999`" in text_of(result)


@pytest.mark.anyio
@pytest.mark.parametrize(("tool", "arguments"), WRITES, ids=[w[0] for w in WRITES])
async def test_a_write_without_a_verifier_is_refused_and_changes_nothing(
    db: ShopDB, tool: str, arguments: dict[str, Any]
) -> None:
    before = read_state(db.path)
    async with Client(build_shop(db, verifier=None)) as client:
        result = await client.call_tool(tool, arguments)
    assert result.is_error
    assert result.meta is not None and result.meta[REFUSAL_META_KEY] == "verifier_not_configured"
    assert ACTIONS[tool] in text_of(result)
    assert read_state(db.path) == before


@pytest.mark.anyio
async def test_input_schemas_are_precise(db: ShopDB) -> None:
    async with Client(build_shop(db)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == set(ACTIONS)
    refund = tools["refund"].input_schema["properties"]
    assert refund["amount"]["exclusiveMinimum"] == 0
    assert refund["currency"]["enum"] == ["EUR", "USD", "GBP"]
    assert refund["currency"]["default"] == "EUR"
    assert refund["order_id"]["pattern"] == "^ord_[0-9]{4,10}$"
    assert refund["customer_id"]["pattern"] == "^cus_[0-9]{3,10}$"
    assert "ctx" not in refund
    assert set(tools["refund"].input_schema["required"]) == {"order_id", "customer_id", "amount", "reason"}
    assert tools["grant_role"].input_schema["properties"]["role"]["enum"] == [
        "viewer",
        "support-agent",
        "billing-admin",
        "admin",
    ]
    assert tools["lookup_order"].annotations is not None and tools["lookup_order"].annotations.read_only_hint
    assert tools["delete_customer"].annotations is not None and tools["delete_customer"].annotations.destructive_hint


@pytest.mark.anyio
async def test_a_refund_breaking_the_schema_is_rejected_before_the_gate(db: ShopDB) -> None:
    async with Client(build_shop(db)) as client:
        result = await client.call_tool(
            "refund", {"order_id": "ord_1001", "customer_id": "cus_123", "amount": 0, "reason": "nope"}
        )
    assert result.is_error
    assert "greater than 0" in text_of(result)


@pytest.mark.anyio
async def test_rugpull_variant_changes_only_send_emails_description(db: ShopDB) -> None:
    async with Client(build_shop(db)) as client:
        honest = {t.name: t for t in (await client.list_tools()).tools}
    async with Client(build_shop(db, variant="rugpull")) as client:
        changed = {t.name: t for t in (await client.list_tools()).tools}
    assert honest["send_email"].description != changed["send_email"].description
    assert "audit@shop-compliance.example" in (changed["send_email"].description or "")
    assert honest["send_email"].input_schema == changed["send_email"].input_schema
    for name in set(ACTIONS) - {"send_email"}:
        assert honest[name] == changed[name]


def test_the_seed_runs_once(tmp_path: Path) -> None:
    first = ShopDB(tmp_path / "shop.db")
    first.send_email("ada@example.com", "hi", "there")
    ShopDB(tmp_path / "shop.db")
    state = read_state(tmp_path / "shop.db")
    assert [c["id"] for c in state["customers"]] == ["cus_123", "cus_456", "cus_789"]
    assert len(state["orders"]) == 4
    assert len(state["outbox"]) == 1


def test_refunds_are_bounded_by_what_is_left_on_the_order(db: ShopDB) -> None:
    assert db.refund("ord_1001", "cus_123", 300.0, "EUR", "partial") == {
        "refund_id": "re_1",
        "order_id": "ord_1001",
        "amount": 300.0,
        "currency": "EUR",
    }
    with pytest.raises(ShopError, match="exceeds what is left"):
        db.refund("ord_1001", "cus_123", 49.01, "EUR", "too much")
    db.refund("ord_1001", "cus_123", 49.0, "EUR", "the rest")
    assert db.lookup_order("ord_1001")["refunded"] == 349.0


@pytest.mark.parametrize(
    ("order", "customer", "currency", "message"),
    [
        ("ord_4242", "cus_123", "EUR", "does not exist"),
        ("ord_1001", "cus_456", "EUR", "does not belong"),
        ("ord_1001", "cus_123", "USD", "paid in EUR"),
    ],
)
def test_refunds_check_order_customer_and_currency(
    db: ShopDB, order: str, customer: str, currency: str, message: str
) -> None:
    with pytest.raises(ShopError, match=message):
        db.refund(order, customer, 1.0, currency, "check")
    assert read_state(db.path)["refunds"] == []


def test_delete_customer_removes_their_orders_and_grant_role_is_idempotent(db: ShopDB) -> None:
    assert db.delete_customer("cus_123") == {"customer_id": "cus_123", "deleted": True, "orders_deleted": 2}
    with pytest.raises(ShopError, match="`cus_123` does not exist"):
        db.delete_customer("cus_123")
    assert db.grant_role("carol", "viewer")["granted"] is True
    assert db.grant_role("carol", "viewer")["granted"] is False
    state = read_state(db.path)
    assert [o["id"] for o in state["orders"]] == ["ord_1003", "ord_1004"]
    assert ("carol", "viewer") in {(r["user"], r["role"]) for r in state["roles"]}


def test_state_flag_prints_the_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--db", str(tmp_path / "s.db"), "--state"])
    state = json.loads(capsys.readouterr().out)
    assert state["orders"][0]["id"] == "ord_1001"
    assert state["refunds"] == []


def test_read_state_of_a_missing_database_names_it(tmp_path: Path) -> None:
    with pytest.raises(ShopError, match=r"missing\.db"):
        read_state(tmp_path / "missing.db")


@pytest.mark.anyio
async def test_echo_returns_its_text_and_rejects_other_input() -> None:
    async with Client(build_echo()) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
        ok = await client.call_tool("echo", {"text": "hello"})
        bad = await client.call_tool("echo", {"text": 5})
    assert not ok.is_error and text_of(ok) == "hello"
    assert bad.is_error


# ---------------------------------------------------------------------------------- with permits

REFUND = {"order_id": "ord_1003", "customer_id": "cus_456", "amount": 350, "reason": "arrived scratched"}


class Minter:
    """The guard's side, reduced to what the shop needs: a key, a JWKS and permits for calls."""

    def __init__(self, root: Path, clock: Clock, environment: str = "development") -> None:
        self.keys = KeyStore(root, clock)
        self.keys.ensure()
        self.environment = environment
        self.issuer = PermitIssuer(self.keys, issuer="guard-mcp", environment=environment, clock=clock)

    def permit(self, tool: str, arguments: dict[str, Any], *, upstream: str = "shop", action: str | None = None) -> str:
        bundle = ActionBundle(
            request_id="req-1",
            action=action or ACTIONS[tool],
            upstream=upstream,
            tool=tool,
            actor=Actor(principal="alice"),
            arguments=arguments,
            payload_hash=payload_hash(arguments),
            category="financial",
            reversibility="none",
            blast_radius="single",
            sensitivity="confidential",
            environment=self.environment,
        )
        decision = Decision(effect=Effect.ALLOW, rule_id="r1", reason="rule_matched", policy="shop@1", permit_ttl=300)
        return self.issuer.mint(bundle, decision).token


@pytest.fixture
def minter(tmp_path: Path, clock: FakeClock) -> Minter:
    return Minter(tmp_path / "keys", clock)


@pytest.fixture
def verifier(minter: Minter, tmp_path: Path, clock: FakeClock) -> PermitVerifier:
    return PermitVerifier(
        jwks=minter.keys.jwks("development"),
        issuer="guard-mcp",
        audience="shop",
        environment="development",
        replay_store=SqliteReplayStore(tmp_path / "permits.db", clock=clock),
        clock=clock,
    )


def refusal(result: Any) -> str | None:
    return result.meta.get(REFUSAL_META_KEY) if result.is_error and result.meta else None


@pytest.mark.anyio
async def test_a_valid_permit_acts_once_and_its_replay_is_refused(
    db: ShopDB, minter: Minter, verifier: PermitVerifier
) -> None:
    token = minter.permit("refund", REFUND)
    async with Client(build_shop(db, verifier=verifier)) as client:
        first = await client.call_tool("refund", REFUND, meta=meta_of({PERMIT_META_KEY: token}))
        again = await client.call_tool("refund", REFUND, meta=meta_of({PERMIT_META_KEY: token}))
    assert not first.is_error, first
    assert first.structured_content == {"refund_id": "re_1", "order_id": "ord_1003", "amount": 350.0, "currency": "EUR"}
    assert refusal(again) == "replayed"
    assert [(r["order_id"], r["amount_cents"]) for r in read_state(db.path)["refunds"]] == [("ord_1003", 35_000)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments", "permitted", "reason"),
    [
        ("refund", {**REFUND, "amount": 3500}, ("refund.create", REFUND), "payload_mismatch"),
        ("refund", {**REFUND, "currency": "EUR"}, ("refund.create", REFUND), "payload_mismatch"),
        ("delete_customer", {"customer_id": "cus_456"}, ("refund.create", {"customer_id": "cus_456"}), "wrong_action"),
        ("refund", REFUND, None, "missing"),
    ],
    ids=["amount-changed", "default-made-explicit", "other-action", "no-permit"],
)
async def test_a_permit_for_another_call_is_refused_and_changes_nothing(
    db: ShopDB,
    minter: Minter,
    verifier: PermitVerifier,
    tool: str,
    arguments: dict[str, Any],
    permitted: tuple[str, dict[str, Any]] | None,
    reason: str,
) -> None:
    before = read_state(db.path)
    meta: RequestParamsMeta | None = None
    if permitted is not None:
        action, permitted_arguments = permitted
        meta = meta_of({PERMIT_META_KEY: minter.permit(tool, permitted_arguments, action=action)})
    async with Client(build_shop(db, verifier=verifier)) as client:
        result = await client.call_tool(tool, arguments, meta=meta)
    assert refusal(result) == reason
    assert read_state(db.path) == before


@pytest.mark.anyio
async def test_a_permit_for_another_upstream_is_refused(db: ShopDB, minter: Minter, verifier: PermitVerifier) -> None:
    token = minter.permit("refund", REFUND, upstream="billing")
    async with Client(build_shop(db, verifier=verifier)) as client:
        result = await client.call_tool("refund", REFUND, meta=meta_of({PERMIT_META_KEY: token}))
    assert refusal(result) == "wrong_audience"
    assert read_state(db.path)["refunds"] == []


@pytest.mark.anyio
async def test_a_permitted_call_that_breaks_a_business_rule_changes_nothing(
    db: ShopDB, minter: Minter, verifier: PermitVerifier
) -> None:
    too_much = {**REFUND, "order_id": "ord_1004", "customer_id": "cus_789", "amount": 50}
    async with Client(build_shop(db, verifier=verifier)) as client:
        result = await client.call_tool(
            "refund", too_much, meta=meta_of({PERMIT_META_KEY: minter.permit("refund", too_much)})
        )
    assert result.is_error and refusal(result) is None
    assert "exceeds what is left" in text_of(result)
    assert read_state(db.path)["refunds"] == []


@pytest.mark.anyio
async def test_the_verifier_from_the_environment_remembers_used_permits_across_restarts(
    db: ShopDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    minter = Minter(tmp_path / "guard-keys", SystemClock(), environment="staging")
    jwks = tmp_path / "jwks.json"
    minter.keys.write_public_jwks(jwks, "staging")
    monkeypatch.setenv("SHOP_JWKS", str(jwks))
    monkeypatch.setenv("SHOP_ENVIRONMENT", "staging")
    args = {"user": "carol", "role": "viewer"}
    token = minter.permit("grant_role", args)
    async with Client(build_shop(db, verifier=verifier_from_env(db.path))) as client:
        first = await client.call_tool("grant_role", args, meta=meta_of({PERMIT_META_KEY: token}))
    async with Client(build_shop(db, verifier=verifier_from_env(db.path))) as client:
        again = await client.call_tool("grant_role", args, meta=meta_of({PERMIT_META_KEY: token}))
    assert not first.is_error, first
    assert refusal(again) == "replayed"
    assert (tmp_path / "shop.permits.db").exists()
    monkeypatch.delenv("SHOP_JWKS")
    assert verifier_from_env(db.path) is None


@pytest.mark.anyio
@pytest.mark.subprocess
async def test_the_shop_runs_as_a_stdio_program(tmp_path: Path) -> None:
    minter = Minter(tmp_path / "guard-keys", SystemClock())
    jwks = tmp_path / "jwks.json"
    minter.keys.write_public_jwks(jwks, "development")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guard_mcp.demo.shop"],
        env={**env, "SHOP_DB": str(tmp_path / "shop.db"), "SHOP_JWKS": str(jwks)},
    )
    async with Client(params) as client:
        looked_up = await client.call_tool("lookup_order", {"order_id": "ord_1003"})
        without = await client.call_tool("refund", REFUND)
        with_permit = await client.call_tool(
            "refund", REFUND, meta=meta_of({PERMIT_META_KEY: minter.permit("refund", REFUND)})
        )
    assert not looked_up.is_error
    assert refusal(without) == "missing"
    assert not with_permit.is_error, with_permit
    assert len(read_state(tmp_path / "shop.db")["refunds"]) == 1
