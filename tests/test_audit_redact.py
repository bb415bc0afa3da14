"""Redaction: secrets never reach the database file; their digests still correlate."""

from __future__ import annotations

import pytest
from _audit_helpers import open_log

from guard_mcp._audit import EventIn
from guard_mcp._audit._redact import Redactor
from guard_mcp._clock import FakeClock
from guard_mcp._state import StateDir

KEY = b"d" * 32
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
VISA = "4111 1111 1111 1111"  # passes Luhn
NOT_A_CARD = "4111 1111 1111 1112"  # fails Luhn


def test_configured_and_extra_fields_are_digested_at_any_depth() -> None:
    r = Redactor(KEY, fields=["customer_email"])
    out = r.arguments(
        {"customer_email": "a@example.com", "nested": [{"Customer-Email": "b@example.com"}], "note": "hi",
         "ssn": "123-45-6789"},
        extra_fields=["ssn"],
    )
    assert out["customer_email"].startswith("redacted:") and out["nested"][0]["Customer-Email"].startswith("redacted:")
    assert out["ssn"].startswith("redacted:")
    assert out["note"] == "hi"


def test_names_that_say_secret_are_digested_whole() -> None:
    out = Redactor(KEY).arguments({"password": "hunter2", "api_key": {"v": 1}, "max_tokens": 100, "Authorization": "x"})
    assert out["password"].startswith("redacted:") and out["api_key"].startswith("redacted:")
    assert out["Authorization"].startswith("redacted:")
    assert out["max_tokens"] == 100  # a count of tokens is not a token


@pytest.mark.parametrize(
    "secret",
    [
        JWT,
        "Bearer abcdefghijklmnopqrstuvwxyz012345",
        "sk_live_" + "a1B2c3D4e5F6g7H8i9J0",
        "ghp_" + "A" * 36,
        "AKIA" + "ABCDEFGHIJKLMNOP",
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----",
        VISA,
        VISA.replace(" ", ""),
    ],
)
def test_values_that_look_like_secrets_are_replaced_inside_text(secret: str) -> None:
    out = Redactor(KEY).arguments({"body": f"use {secret} for this"})
    assert secret not in out["body"]
    assert out["body"].startswith("use redacted:") and out["body"].endswith(" for this")


def test_numbers_that_fail_the_card_check_and_plain_ids_are_kept() -> None:
    text = f"order {NOT_A_CARD}, ts 1800000000000, hash sha256:{'ab' * 32}"
    assert Redactor(KEY).arguments({"t": text}) == {"t": text}


def test_digests_correlate_within_a_deployment_and_not_across() -> None:
    a, b = Redactor(KEY), Redactor(b"e" * 32)
    assert a.digest("hunter2") == a.digest("hunter2") != a.digest("hunter3")
    assert a.digest("hunter2") != b.digest("hunter2")


def test_the_input_is_not_changed() -> None:
    args = {"password": "p", "list": ["Bearer abcdefghijklmnopqrstuvwxyz"]}
    Redactor(KEY).arguments(args)
    assert args == {"password": "p", "list": ["Bearer abcdefghijklmnopqrstuvwxyz"]}


@pytest.mark.anyio
async def test_secrets_never_reach_the_database_file(state: StateDir, clock: FakeClock) -> None:
    log = await open_log(state, clock, redact=["customer_email"])
    try:
        args = log.redact({"customer_email": "alice@example.com", "card": VISA, "amount": 5})
        await log.append(EventIn("call.received", "r1", data={"arguments": args}))
        # Whatever a stage forgets to redact is still scrubbed of credential-looking values.
        await log.append(EventIn("call.result", "r1", data={"text": f"your token is {JWT}", "password": "pw-123456"}))
    finally:
        await log.close()
    raw = state.database.read_bytes()
    for secret in (b"alice@example.com", VISA.encode(), JWT.encode(), b"pw-123456"):
        assert secret not in raw
    assert b'"amount":5' in raw
