"""Shared builders for the approvals tests: demo refund bundles, decisions, an opened store."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pyotp
import pytest

from guard_mcp._approvals import ApprovalStore
from guard_mcp._approvals._approvers import STEP
from guard_mcp._canonical import payload_hash
from guard_mcp._clock import Clock
from guard_mcp._config import ApprovalsConfig
from guard_mcp._models import (
    ActionBundle,
    Actor,
    BlastRadius,
    Category,
    Decision,
    Effect,
    Reversibility,
    Risk,
    Sensitivity,
    Tier,
)
from guard_mcp._state import StateDir


def refund_args(amount: float = 350.0, **extra: Any) -> dict[str, Any]:
    return {
        "order_id": "ord_1001",
        "customer_id": "cus_456",
        "amount": amount,
        "currency": "EUR",
        "reason": "damaged in transit",
        **extra,
    }


def bundle(
    arguments: dict[str, Any] | None = None,
    *,
    tier: Tier | None = Tier.MEDIUM,
    session: str | None = "sess-1",
    principal: str = "alice@laptop",
    request_id: str = "req-1",
    action: str = "refund.create",
    resource: str | None = "customer_id",
) -> ActionBundle:
    args = refund_args() if arguments is None else arguments
    return ActionBundle(
        request_id=request_id,
        action=action,
        upstream="shop",
        tool="refund",
        actor=Actor(principal=principal, session=session),
        arguments=args,
        payload_hash=payload_hash(args),
        resource=resource,
        category=Category.FINANCIAL,
        reversibility=Reversibility.NONE,
        blast_radius=BlastRadius.SINGLE,
        sensitivity=Sensitivity.CONFIDENTIAL,
        risk=None if tier is None else Risk(score={Tier.LOW: 10, Tier.MEDIUM: 55, Tier.HIGH: 85}[tier], tier=tier),
        environment="test",
    )


def decision(
    *, group: str | None = "finance", step_up: bool = False, ttl: int | None = None, effect: Effect = Effect.APPROVE
) -> Decision:
    return Decision(
        effect=effect,
        rule_id="refund-needs-approval",
        reason="approval_required",
        policy="shop@3",
        approvers=group,
        approval_ttl=ttl,
        step_up=step_up,
    )


def code_at(secret: str, when: float, offset: int = 0) -> str:
    """The TOTP code an authenticator app would show at `when` (plus `offset` steps)."""
    return pyotp.TOTP(secret, interval=STEP).generate_otp(int(when // STEP) + offset)


_backend: dict[str, str | None] = {"url": None}  # the `guard.store` open_store uses: None is SQLite


@pytest.fixture
def on_both_backends(store_url: str | None) -> Iterator[str | None]:
    """Runs a test module's tests on SQLite and on PostgreSQL (`pytest.mark.usefixtures("on_both_backends")`)."""
    _backend["url"] = store_url
    try:
        yield store_url
    finally:
        _backend["url"] = None


def backend_url() -> str | None:
    return _backend["url"]


def tamper(state: StateDir, sql: str, params: Sequence[Any] = ()) -> None:
    """Change the approvals' tables behind the guard's back, on whichever backend the test runs."""
    url = _backend["url"]
    if url is None:
        with sqlite3.connect(state.database) as conn:
            conn.execute(sql, params)
        conn.close()
        return
    import psycopg

    from guard_mcp._store.postgres import to_pg

    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute(to_pg(sql), params)


@contextlib.asynccontextmanager
async def open_store(state: StateDir, clock: Clock, **config: Any) -> AsyncIterator[ApprovalStore]:
    store = await ApprovalStore.open(state, clock=clock, config=ApprovalsConfig(**config), store=_backend["url"])
    try:
        yield store
    finally:
        await store.close()


def served(state: StateDir, upstream: str = "shop", tool: str = "refund") -> None:
    """Record `upstream__tool` as served by a guard on `state` (what a running guard pins on first sight)."""
    from guard_mcp._pins import PinStore

    pins = PinStore(state.database)
    try:
        pins.observe(upstream, tool, {"name": tool}, 1.0)
    finally:
        pins.close()
