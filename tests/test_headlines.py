"""An approval's headline in the operator's words: the tool's `headline:` template, filled with the
call's values (escaped, shortened), everywhere an approval is shown; a generic one otherwise."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from _approvals_support import bundle, decision, open_store
from click.testing import CliRunner
from guard_kit import config_from, reason_of, running_guard, text_of
from mcp import Client
from mcp.server import Server

from guard_mcp._approvals import approval_message, headline
from guard_mcp._clock import SystemClock
from guard_mcp._config import load_config
from guard_mcp._errors import ConfigError
from guard_mcp._headline import MAX_TEMPLATE
from guard_mcp._propose import propose
from guard_mcp._state import StateDir
from guard_mcp.cli import main
from guard_mcp.cli._common import embedded_config_path

REFUND = "Refund {amount|money} to customer {customer_id}"


def templated(template: str, arguments: dict[str, Any] | None = None, **kw: Any) -> Any:
    return bundle(arguments, **kw).model_copy(update={"headline": template})


def test_a_template_is_filled_with_the_calls_values() -> None:
    assert headline(templated(REFUND)) == "Refund €350.00 to customer cus_456"
    assert headline(templated("Pay {fee|money:cur} {{now}}", {"fee": 1200, "cur": "JPY"})) == "Pay ¥1,200 {now}"
    assert (
        headline(templated("Send an email to {to}", {"to": "ada@example.com"}, action="email.send", resource="to"))
        == "Send an email to ada@example.com"
    )


def test_a_template_naming_an_argument_the_call_left_out_falls_back_to_the_generic_headline() -> None:
    # "Refund €350.00 to customer " with the customer missing would say less than the generic one
    assert headline(templated("Refund {amount|money} to {payee}")) == "Refund €350.00 to customer cus_456"


def test_money_of_a_value_that_is_not_a_number_shows_the_value() -> None:
    assert headline(templated("Refund {amount|money}", {"amount": "all of it"})) == "Refund all of it"


@pytest.mark.parametrize(
    "hostile",
    [
        "cus_1\nApproved by security",
        "cus_1\u202e",
        "cus_1\x1b[2J",
        "cus_1\u2028line",
        "c" * 5000,
    ],
)
def test_attack_an_agents_value_in_a_template_cannot_break_the_line_rewrite_the_terminal_or_run_on(
    hostile: str, state: StateDir
) -> None:
    text = headline(templated(REFUND, {"amount": 1, "currency": "EUR", "customer_id": hostile}))
    assert text.startswith("Refund €1.00 to customer cus_1") or text.startswith("Refund €1.00 to customer ccc")
    assert all(ch not in text for ch in "\n\u202e\x1b\u2028") and len(text) <= 120
    # the full prompt still shows the whole value, escaped, under the arguments
    assert approval_message_for(state, hostile).splitlines()[0] == text


def approval_message_for(state: StateDir, customer: str) -> str:
    async def work() -> str:
        async with open_store(state, SystemClock()) as store:
            a = await store.create(
                templated(REFUND, {"amount": 1, "currency": "EUR", "customer_id": customer}),
                decision(),
                tool="shop__refund",
            )
        return approval_message(a)

    return anyio.run(work)


def test_a_long_value_keeps_its_beginning_and_its_end() -> None:
    path = "/srv/projects/customer-exports/2026/december/quarterly/notes-final.md"
    text = headline(templated("Write {path}", {"path": path}, resource=None))
    assert text.startswith("Write /srv/projects/") and text.endswith("quarterly/notes-final.md") and "…" in text
    assert len(text) == len("Write ") + 48


def test_a_template_edited_into_the_database_that_does_not_parse_falls_back() -> None:
    assert headline(templated("Refund {amount|wire}")) == "Refund €350.00 to customer cus_456"


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("Refund {amount|wire}", "`wire` in headline"),
        ("Refund {amount", "unpaired `{`"),
        ("Refund }", "unpaired `}`"),
        ("Refund {}", "does not name an argument"),
        ("Refund\n{amount}", "one line of visible text"),
        ("x" * (MAX_TEMPLATE + 1), f"at most {MAX_TEMPLATE} characters"),
        ("  ", "cannot be empty"),
    ],
)
def test_a_template_that_is_not_one_is_refused_when_the_config_loads(template: str, said: str) -> None:
    text = (
        "upstreams:\n  shop:\n    command: x\n    tools:\n      refund: {action: refund.create, headline: "
        + json.dumps(template)
        + "}\n"
    )
    with pytest.raises(ConfigError, match="headline") as caught:
        load_config(text=text, environ={})
    assert said in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("arguments", "action", "resource", "expected"),
    [
        ({"to": "ada@example.com", "subject": "hi"}, "email.send", "to", "Send email to ada@example.com"),
        ({"path": "/srv/notes.md", "content": "x"}, "fs.write", "path", "Write fs /srv/notes.md"),
        ({"customer_id": "cus_1"}, "customer.delete", "customer_id", "Delete customer cus_1"),
    ],
)
def test_the_generic_headline_reads_as_a_sentence(
    arguments: dict[str, Any], action: str, resource: str, expected: str
) -> None:
    # it read "Send email for to ada@example.com", "Write fs for path /srv/notes.md"
    assert headline(bundle(arguments, action=action, resource=resource)) == expected


def test_the_demo_config_says_each_of_its_tools_in_words() -> None:
    config = load_config(embedded_config_path(), environ={}, builtins={"GUARD_STATE_DIR": "/tmp/x"})
    tools = config.upstreams["shop"].tools
    assert tools["refund"].headline == REFUND
    assert all(t.headline for t in tools.values())


def test_import_proposes_a_headline_from_the_tool_name_and_its_target() -> None:
    def tool(name: str, props: dict[str, Any]) -> types.Tool:
        return types.Tool(name=name, input_schema={"type": "object", "properties": props})

    assert propose("fs", tool("write_file", {"path": {"type": "string"}})).fields["headline"] == "Write file {path}"
    assert propose("mail", tool("sendEmail", {"to": {"type": "string"}})).fields["headline"] == "Send email to {to}"
    # an argument name that would break the template is left out, not quoted into it
    odd = propose("x", tool("drop_table", {"ta}ble_id": {"type": "string"}}))
    assert odd.fields["headline"] == "Drop table"


VAULT = """
guard:
  approvals: {wait: 0.2s}
upstreams:
  vault:
    command: unused-in-process
    tools:
      store: {action: note.store, category: write, reversibility: none, blast_radius: single,
              sensitivity: confidential, resource: to, redact: [note],
              headline: "File the note {note} for {to}"}
"""


def _vault() -> Server[object]:
    async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"note": {"type": "string"}, "to": {"type": "string"}}}
        return types.ListToolsResult(tools=[types.Tool(name="store", input_schema=schema)])

    async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text="stored")])

    return Server("vault", on_list_tools=list_tools, on_call_tool=call_tool)


def test_the_template_is_what_the_client_the_audit_the_queue_and_the_cli_show(state: StateDir, tmp_path: Path) -> None:
    secret = "PATIENT-123"

    async def call() -> types.CallToolResult:
        async with running_guard(config_from(VAULT, state), state, inprocess={"vault": _vault()}) as guard:
            async with Client(guard.server) as client:
                return await client.call_tool("vault__store", {"note": secret, "to": "ada"})

    pending = anyio.run(call)
    assert reason_of(pending) == "pending_approval"
    assert f"File the note {secret} for ada" in text_of(pending)  # the caller's own values, to the caller
    with sqlite3.connect(state.database) as conn:
        [data] = conn.execute("SELECT data FROM audit_events WHERE type = 'approval.requested'").fetchone()
    logged = json.loads(data)["headline"]  # what notifications are made from
    assert logged.startswith("File the note redacted:") and logged.endswith(" for ada") and secret not in logged
    config = tmp_path / "upstreams.yaml"
    config.write_text(VAULT)
    listed = CliRunner().invoke(
        main,
        ["approvals", "list", "--json", "--config", str(config), "--state-dir", str(state.root)],
        catch_exceptions=False,
    )
    [row] = json.loads(listed.output)
    assert row["headline"] == f"File the note {secret} for ada"  # the pending approval keeps the value to decide on
    table = CliRunner().invoke(
        main,
        ["approvals", "list", "--plain", "--config", str(config), "--state-dir", str(state.root)],
        catch_exceptions=False,
    )
    assert f"File the note {secret} for ada" in table.output


@pytest.mark.anyio
async def test_attack_the_console_card_shows_the_template_with_a_hostile_value_as_text(state: StateDir) -> None:
    from console_kit import SoftPasskey, console_harness, enrol, sign_in

    from guard_mcp._clock import FakeClock

    hostile = "<script>alert(1)</script>\u202egnp.exe"
    clock = FakeClock()
    async with console_harness(state, clock) as h:
        passkey = SoftPasskey()
        await enrol(h, "ana", ["finance"], passkey)
        assert (await sign_in(h.client, passkey)).status_code == 303
        args = {"amount": 350, "currency": "EUR", "customer_id": hostile}
        approval = await h.approvals.create(
            templated("Pay {customer_id} back {amount|money}", args), decision(), tool="shop__refund"
        )
        card = (await h.client.get(f"/console/approvals/{approval.id}")).text
        queue = (await h.client.get("/console/queue/rows")).text
    for page in (card, queue):
        assert "Pay &lt;script&gt;alert(1)&lt;/script&gt;\\u202egnp.exe back €350.00" in page
        assert "<script>alert" not in page and "\u202e" not in page
