"""Notifications: signed webhooks a real receiver verifies, retries on a FakeClock, a restart with
undelivered messages, decisions made from the CLI, routing by group, and redacted values never in
a message or an outbox row."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from _notify_kit import Receiver, Server, new_secret
from guard_kit import RecordingUpstream, config_from, reason_of, running_guard
from mcp import Client

from guard_mcp._clock import FakeClock
from guard_mcp._config import GuardConfig, load_config
from guard_mcp._errors import ConfigError
from guard_mcp._notify import Step, open_notifier
from guard_mcp._notify._targets import WebhookTarget
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio

CANARY = "CANARY-c-7731-do-not-leak"
TOOLS = """
upstreams:
  mail:
    command: unused-in-process
    tools:
      echo: {action: customer.contact, category: communicate, reversibility: none, blast_radius: single,
             sensitivity: confidential, resource: customer_id, redact: [customer_id]}
"""
GUARD = "guard:\n  approvals: {wait: 0.1s}\n"


def with_targets(state: StateDir, targets: str, *, link_base: str | None = None) -> GuardConfig:
    base = f"    link_base: {link_base}\n" if link_base else ""
    return config_from(f"{GUARD}  notify:\n{base}    targets:\n{targets}{TOOLS}", state)


def hook(name: str, url: str, secret: str, extra: str = "") -> str:
    return f"      {name}: {{webhook: '{url}', secret: '{secret}'{extra}}}\n"


async def ask(state: StateDir, arguments: dict[str, Any], config: GuardConfig | None = None) -> str:
    """One call that waits for a human; the approval's id. The guard has no targets unless `config` says so."""
    up = RecordingUpstream()
    cfg = config or config_from(GUARD + TOOLS, state)
    async with running_guard(cfg, state, inprocess={"mail": up.server}) as guard:
        async with Client(guard.server, mode="legacy") as client:
            result = await client.call_tool("mail__echo", arguments)
    assert reason_of(result) == "pending_approval" and up.calls == []
    return str((result.meta or {})["dev.guard-mcp/decision"]["approval_id"])


def did(step: Step) -> tuple[int, int, int, int]:
    """Rows queued, and attempts delivered, failed and given up (events read vary with the guard's own)."""
    return step.queued, step.delivered, step.failed, step.dropped


def outbox(state: StateDir) -> list[dict[str, Any]]:
    with sqlite3.connect(state.database) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM notify_outbox ORDER BY seq, target")]


async def test_a_receiver_that_fails_twice_gets_one_delivery_under_the_same_webhook_id(state: StateDir) -> None:
    secret = new_secret()
    with Server(Receiver(secret=secret, fail=2)) as srv:
        cfg = with_targets(state, hook("ops", srv.url, secret))
        clock = FakeClock(time.time())  # the receiver checks the timestamp against its own clock
        async with open_notifier(cfg, state, clock) as notifier:
            assert await notifier.step() == Step()  # the cursor is in place: what follows is owed
            approval_id = await ask(state, {"text": "hi", "customer_id": "c-1"})
            assert did(await notifier.step()) == (1, 0, 1, 0)
            assert did(await notifier.step()) == (0, 0, 0, 0)  # not due before the backoff (10 s) has passed
            clock.advance(10)
            assert did(await notifier.step()) == (0, 0, 1, 0)
            clock.advance(19)
            assert did(await notifier.step()) == (0, 0, 0, 0)  # the second wait doubled to 20 s
            clock.advance(1)
            assert did(await notifier.step()) == (0, 1, 0, 0)
            clock.advance(3600)
            assert did(await notifier.step()) == (0, 0, 0, 0)  # delivered: never sent again
    tries = srv.receiver.requests
    assert [r.status for r in tries] == [500, 500, 204] and all(r.refused is None for r in tries)
    assert len({r.headers["webhook-id"] for r in tries}) == 1
    assert len({r.body for r in tries}) == 1  # the same signed body each time; only the timestamp moves
    [(message_id, delivered)] = srv.receiver.delivered.items()
    assert delivered["type"] == "approval.requested" and delivered["data"]["approval_id"] == approval_id
    [row] = outbox(state)
    assert (row["id"], row["attempts"], row["last_error"]) == (message_id, 3, None) and row["delivered_at"]


async def test_the_receiver_library_refuses_a_replayed_or_tampered_message(state: StateDir) -> None:
    secret = new_secret()
    with Server(Receiver(secret=secret)) as srv:
        cfg = with_targets(state, hook("ops", srv.url, secret))
        async with open_notifier(cfg, state, FakeClock(time.time())) as notifier:
            await notifier.step()
            await ask(state, {"text": "hi", "customer_id": "c-1"})
            assert (await notifier.step()).delivered == 1
        good = srv.receiver.requests[0]
        sent = {k: v for k, v in good.headers.items() if k.startswith("webhook-")}
        signer = WebhookTarget("ops", cfg.guard.notify.targets["ops"], httpx2.AsyncClient())
        now = time.time()
        async with httpx2.AsyncClient() as client:
            tampered = good.body.replace(b'"approval.requested"', b'"approval.decided"')
            await client.post(srv.url, content=tampered, headers=sent)
            # the same message captured ten minutes ago, signed then by the guard itself, sent again now
            old = signer.headers(sent["webhook-id"], good.body, now - 600)
            await client.post(srv.url, content=good.body, headers=old)
            # a replay whose timestamp is made fresh no longer matches the signature
            fresh = str(int(sent["webhook-timestamp"]) + 1)
            await client.post(srv.url, content=good.body, headers={**sent, "webhook-timestamp": fresh})
            # and the genuine request itself, while fresh, verifies (the receiver de-duplicates it by id)
            await client.post(srv.url, content=good.body, headers=sent)
    refused = [r.refused for r in srv.receiver.requests[1:]]
    assert refused[0] == "No matching signature found"
    assert refused[1] == "Message timestamp too old"
    assert refused[2] == "No matching signature found"
    assert refused[3] is None and len(srv.receiver.delivered) == 1


async def test_undelivered_notifications_survive_a_restart_and_are_sent_after_the_next_start(state: StateDir) -> None:
    secret = new_secret()
    with Server(Receiver(secret=secret, down=True)) as srv:
        cfg = with_targets(state, hook("ops", srv.url, secret))
        clock = FakeClock(time.time())
        up = RecordingUpstream()
        async with running_guard(cfg, state, clock=clock, inprocess={"mail": up.server}) as guard:
            async with Client(guard.server, mode="legacy") as client:
                result = await client.call_tool("mail__echo", {"text": "hi", "customer_id": "c-1"})
            assert reason_of(result) == "pending_approval"
            async with open_notifier(cfg, state, clock) as notifier:  # this guard's attempt, made now
                await notifier.step()
        [row] = outbox(state)
        assert row["delivered_at"] is None and row["attempts"] >= 1 and row["last_error"]
        srv.receiver.down = False
        clock.advance(60)
        async with running_guard(cfg, state, clock=clock, inprocess={"mail": up.server}):
            with anyio.fail_after(10):
                while outbox(state)[0]["delivered_at"] is None:  # noqa: ASYNC110 (the guard's task records it)
                    await anyio.sleep(0.02)
    assert list(srv.receiver.delivered) == [row["id"]]


@pytest.mark.subprocess
async def test_a_decision_from_the_cli_is_notified_and_no_redacted_value_reaches_any_message(
    state: StateDir,
    tmp_path: Path,
) -> None:
    secret = new_secret()
    with (
        Server(Receiver(secret=secret)) as hooks,
        Server(Receiver()) as chat,
        Server(Receiver(secret=secret)) as finance,
    ):
        cfg = with_targets(
            state,
            hook("ops", hooks.url, secret)
            + f"      chat: {{apprise: 'json://127.0.0.1:{chat.port}/chat', groups: [approvers]}}\n"
            + hook("finance", finance.url, secret, ", groups: [finance]"),
            link_base="https://guard.example.com/console",
        )
        plain = tmp_path / "upstreams.yaml"
        plain.write_text(GUARD + TOOLS)
        async with open_notifier(cfg, state, FakeClock(time.time())) as notifier:
            await notifier.step()
            approval_id = await ask(state, {"text": "refund them", "customer_id": CANARY})
            decided = await anyio.run_process(
                [
                    sys.executable,
                    "-m",
                    "guard_mcp.cli",
                    "approvals",
                    "approve",
                    approval_id,
                    "--reason",
                    "ok by me",
                    "--config",
                    str(plain),
                    "--state-dir",
                    str(state.root),
                ],
                check=False,
                stderr=subprocess.STDOUT,
            )
            assert decided.returncode == 0, decided.stdout.decode()
            assert did(await notifier.step()) == (4, 4, 0, 0)
    assert finance.receiver.requests == []  # its group is not the approval's
    sent = [json.loads(r.body) for r in hooks.receiver.requests]
    assert [m["type"] for m in sent] == ["approval.requested", "approval.decided"]
    assert all(r.refused is None and r.status == 204 for r in hooks.receiver.requests)
    requested, approved = (m["data"] for m in sent)
    assert requested["headline"].startswith("Contact customer") and "redacted:" in requested["headline"]
    assert requested["link"] == f"https://guard.example.com/console/approvals/{approval_id}"  # a page, no token
    assert (requested["tier"], requested["group"], requested["step_up"]) == ("MEDIUM", "approvers", False)
    assert requested["deadline"].endswith("Z") and requested["principal"] == "local-user"
    assert (approved["state"], approved["reason"]) == ("approved", "ok by me")
    texts = [json.loads(r.body) for r in chat.receiver.requests]
    assert [t["title"].split(":")[0] for t in texts] == ["Approval needed", "Approval decided"]
    assert f"console/approvals/{approval_id}" in texts[0]["message"] and "Tier: MEDIUM" in texts[0]["message"]
    everything = [r.body.decode() + json.dumps(r.headers) for s in (hooks, chat) for r in s.receiver.requests]
    everything += [json.dumps(row) for row in outbox(state)]
    assert len(everything) == 4 + 4 and not any(CANARY in text for text in everything)


async def test_an_event_forged_into_the_database_is_never_announced(state: StateDir) -> None:
    secret = new_secret()
    with Server(Receiver(secret=secret)) as srv:
        cfg = with_targets(state, hook("ops", srv.url, secret))
        async with open_notifier(cfg, state, FakeClock(time.time())) as notifier:
            await notifier.step()
            genuine = await ask(state, {"text": "hi", "customer_id": "c-1"})
            with sqlite3.connect(state.database) as conn:  # write access to the file, not the deployment key
                seq, prev = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
                data = json.dumps(
                    {
                        "approval_id": "apr_" + "a" * 26,
                        "group": "approvers",
                        "headline": "Wire 1,000,000 to account 666",
                        "deadline": time.time() + 60,
                    }
                )
                conn.execute(
                    "INSERT INTO audit_events VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        seq + 1,
                        int(time.time() * 1000),
                        "approval.requested",
                        "req_forged",
                        "local-user",
                        "mail",
                        "mail__echo",
                        data,
                        prev,
                        "0" * 64,
                        "0" * 64,
                    ),
                )
            assert did(await notifier.step()) == (1, 1, 0, 0)
    assert [m["data"]["approval_id"] for m in srv.receiver.delivered.values()] == [genuine]
    assert [r["key"] for r in outbox(state)] == [f"approval.requested:{genuine}"]


async def test_two_guards_on_one_state_directory_send_each_notification_once(state: StateDir) -> None:
    secret = new_secret()
    with Server(Receiver(secret=secret)) as srv:
        cfg = with_targets(state, hook("ops", srv.url, secret))
        clock = FakeClock(time.time())
        async with open_notifier(cfg, state, clock) as one, open_notifier(cfg, state, clock) as two:
            await one.step()
            await ask(state, {"text": "hi", "customer_id": "c-1"})
            await ask(state, {"text": "again", "customer_id": "c-2"})
            async with anyio.create_task_group() as tg:
                tg.start_soon(one.step)
                tg.start_soon(two.step)
            await one.step()
            await two.step()
    assert len(outbox(state)) == 2 and all(r["delivered_at"] for r in outbox(state))
    assert len(srv.receiver.requests) == 2 and len(srv.receiver.delivered) == 2


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("{webhook: 'https://h.example.com/x?token=SEKRIT'}", "a webhook needs `secret:`"),
        ("{webhook: 'https://h.example.com/x', secret: 'whsec_SEKRIT'}", "the webhook secret must be `whsec_`"),
        ("{webhook: 'ftp://SEKRIT@h.example.com/', secret: 'x'}", "webhook must be a URL"),
        ("{apprise: 'SEKRIT-token-only'}", "apprise must be an Apprise URL"),
        ("{apprise: 'slack://SEKRIT', events: [call.result]}", "`call.result` is not an event"),
        ("{apprise: 'slack://SEKRIT', groups: []}", "`groups: []` would route nothing"),
        ("{apprise: 'slack://SEKRIT', webhook: 'https://SEKRIT'}", "a target is either"),
    ],
)
def test_a_bad_target_is_one_line_that_never_quotes_its_url_or_secret(target: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(text=f"guard:\n  notify:\n    targets:\n      ops: {target}\n", environ={})
    message = str(caught.value)
    assert problem in message and "\n" not in message and "SEKRIT" not in message
    assert message.startswith("<config>:4: at `guard.notify.targets.ops")


async def test_without_link_base_messages_link_to_the_consoles_public_url(state: StateDir) -> None:
    cfg = config_from(
        GUARD + "  console: {public_url: 'https://guard.example.com/console'}\n  notify:\n"
        "    targets: {chat: {apprise: 'json://127.0.0.1:9/x'}}\n" + TOOLS,
        state,
    )
    async with open_notifier(cfg, state, FakeClock(time.time())) as notifier:
        assert notifier.config.link_base == "https://guard.example.com/console"
