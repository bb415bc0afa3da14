"""Redaction: secrets never reach the database file; their digests still correlate."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import mcp_types as types
import pytest
from _audit_helpers import open_log
from guard_kit import config_from, reason_of, running_guard
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.server import Server
from mcp.shared.exceptions import MCPError

from guard_mcp._audit import EventIn
from guard_mcp._audit._redact import Redactor
from guard_mcp._catalog import _CONTROL, cut_out, one_line
from guard_mcp._clock import FakeClock
from guard_mcp._state import StateDir

KEY = b"d" * 32
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
VISA = "4111 1111 1111 1111"  # passes Luhn
NOT_A_CARD = "4111 1111 1111 1112"  # fails Luhn


def test_configured_and_extra_fields_are_digested_at_any_depth() -> None:
    r = Redactor(KEY, fields=["customer_email"])
    out = r.arguments(
        {
            "customer_email": "a@example.com",
            "nested": [{"Customer-Email": "b@example.com"}],
            "note": "hi",
            "ssn": "123-45-6789",
        },
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


@pytest.mark.parametrize(
    "spaced",
    ["4111  1111  1111  1111", "4111\t1111\t1111\t1111", "4111\n1111\n1111\n1111", "4111 - 1111 - 1111 - 1111"],
)
def test_attack_a_card_number_with_its_groups_spaced_otherwise_is_still_replaced(spaced: str) -> None:
    out = Redactor(KEY).arguments({"body": f"use {spaced} for this"})
    assert "1111" not in out["body"], out
    # one card, one digest: correlations survive an echo that reflowed it
    assert out == Redactor(KEY).arguments({"body": f"use {VISA} for this"})


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


# ------------------------------------------------------------------- values an upstream echoes back

WHISPER = "correct horse\tbattery\n  staple"  # a passphrase: spaces, a tab, a line break
WORDS = ("correct", "horse", "battery", "staple")

ECHOES = {
    "as given": lambda note: f"backend rejected note '{note}'",
    "collapsed": lambda note: f"backend rejected note '{' '.join(note.split())}'",
    "reflowed": lambda note: "backend rejected note:\n" + "\n".join(note.split()),
    "squeezed": lambda note: f"backend rejected note '{''.join(note.split())}'",
    # one line is cut at 300 characters: here, inside the value, so whatever survives is a stretch of it
    "after a long preamble": lambda note: "backend rejected note " + "." * 268 + f" '{note}'",
}

ECHO_CONFIG = """
upstreams:
  vault:
    command: unused-in-process
    tools:
      fail: {action: note.check, category: read, reversibility: full, blast_radius: single, sensitivity: public,
             redact: [note]}
"""


def _echoing(echo: Callable[[str], str]) -> Server[object]:
    async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"note": {"type": "string"}}}
        return types.ListToolsResult(tools=[types.Tool(name="fail", input_schema=schema)])

    async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
        raise MCPError(code=-32603, message=echo(str((params.arguments or {}).get("note"))))

    return Server("vault", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("how", list(ECHOES))
async def test_attack_a_redacted_value_echoed_with_its_whitespace_changed_stays_out_of_the_log(
    state: StateDir, how: str, mode: str
) -> None:
    async with running_guard(
        config_from(ECHO_CONFIG, state), state, inprocess={"vault": _echoing(ECHOES[how])}
    ) as guard:
        async with Client(guard.server, mode=mode) as client:
            failed = await client.call_tool("vault__fail", {"note": WHISPER})
    assert reason_of(failed) == "upstream_error"
    with sqlite3.connect(state.database) as conn:
        [(stored,)] = conn.execute("SELECT data FROM audit_events WHERE type = 'call.error'").fetchall()
        everything = "\n".join(d for (d,) in conn.execute("SELECT data FROM audit_events"))
    if how != "after a long preamble":
        assert "<redacted>" in json.loads(stored)["error"]
    for word in WORDS:  # not the value, not a stretch of it
        assert word not in everything, stored


# ------------------------------------------------------------------- cut_out, property by property

MARK = "<redacted>"
# A value's own characters: anything visible but the mark's brackets and one_line's ellipsis (which,
# next to a cut, could spell a value out of nothing).
_VISIBLE = st.characters(codec="utf-8", categories=("L", "N", "P", "S"), exclude_characters="<>…")
_SPACES = st.sampled_from(["", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\u00a0", "\u2003", "\u200b", " \n\t "])
_AROUND = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


def _core(text: str) -> str:
    """What is left of `text` once whitespace and the characters one_line drops are gone."""
    return "".join(_CONTROL.sub("", text).split())


@st.composite
def _echoed(draw: st.DrawFn) -> tuple[str, str]:
    """A value with whitespace in it, and the same value as an upstream echoed it: every gap between
    two of its characters changed at will (collapsed, removed, turned into line breaks or added)."""
    chars = draw(st.lists(_VISIBLE, min_size=3, max_size=24))
    value = "".join(c + draw(_SPACES) for c in chars).strip() or "".join(chars)
    echo = "".join(c + draw(_SPACES) for c in chars)
    return value, echo


@settings(max_examples=150, deadline=None)
@given(pair=_echoed(), before=_AROUND, after=_AROUND, limit=st.integers(10, 120))
def test_a_value_echoed_with_its_whitespace_changed_is_cut_before_and_after_one_line(
    pair: tuple[str, str], before: str, after: str, limit: int
) -> None:
    value, echo = pair
    text = before + echo + after
    scrubbed_first = one_line(cut_out(text, [value], MARK, shortest=3), limit)  # how the audit's copy is made
    normalised_first = cut_out(one_line(text, 10_000), [value], MARK, shortest=3)  # the second pass over it
    for out in (scrubbed_first, normalised_first):
        assert _core(value) not in _core(out)


@settings(max_examples=150, deadline=None)
@given(pair=_echoed(), text=_AROUND)
def test_text_that_does_not_hold_the_value_is_left_as_it_is(pair: tuple[str, str], text: str) -> None:
    value, _ = pair
    assume(_core(value) not in _core(text))
    assert cut_out(text, [value], MARK, shortest=3) == text


@settings(max_examples=100, deadline=None)
@given(values=st.lists(_echoed(), min_size=1, max_size=4), glue=st.lists(_AROUND, min_size=5, max_size=5))
def test_several_values_one_inside_another_leave_nothing_of_either(
    values: list[tuple[str, str]], glue: list[str]
) -> None:
    outer = values[0][0] + " " + values[-1][0]  # the last value also stands inside a longer one
    echoes = [echo for _, echo in values] + [outer]
    text = "".join(g + e for g, e in zip(glue, echoes, strict=False))
    out = cut_out(text, [v for v, _ in values] + [outer], MARK, shortest=3)
    for value, _ in values:
        assert _core(value) not in _core(out)


def test_values_too_short_to_stand_alone_are_cut_only_as_they_are() -> None:
    # "a b" is three characters, two of them visible: cutting every "ab" would take words apart.
    assert cut_out("tab ab a b", ["a b"], MARK, shortest=3) == f"tab ab {MARK}"
    assert cut_out("x  y", ["  "], MARK, shortest=3) == "x  y"  # nothing visible: never a pattern that matches anywhere
