"""What the approval console costs: rendering the queue and a card with N pending approvals, the
decide POST, a console decision reaching a waiting call, and the live-queue events reaching 20 open
queue pages.

    .venv/bin/python bench/console_bench.py [--n 500] [--rounds 30] [--pages 20]

Each page figure is printed beside a baseline measured in the same run over the same transport: a
bare Starlette route that returns the same bytes as a static page (the console's own work is the
difference: its session lookup, the store read and the template). Render and decide go through
httpx's in-process ASGI transport; the live queue (server-sent events) goes over a real loopback
listener (uvicorn), as a browser's would. Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from guard_mcp._approvals import ApprovalStore, wait_for_decision
from guard_mcp._canonical import payload_hash
from guard_mcp._clock import SystemClock
from guard_mcp._config import ApprovalsConfig, ConsoleConfig
from guard_mcp._console import build_console_app, open_console
from guard_mcp._console._app import serve_console
from guard_mcp._console._views import MAX_QUEUE
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

ORIGIN = "http://localhost:8766"
DECISION = Decision(
    effect=Effect.APPROVE,
    rule_id="email-review",
    reason="email_needs_review",
    policy="shop@1",
    approvers="support_leads",
)


def email(i: int) -> ActionBundle:
    args = {"to": f"customer{i}@example.com", "subject": f"Your order ord_{i}", "body": "It is on its way. " * 8}
    return ActionBundle(
        request_id=f"req-{i}",
        action="email.send",
        upstream="shop",
        tool="send_email",
        actor=Actor(principal="demo-agent", session="ses_bench", client_name="bench-client"),
        arguments=args,
        payload_hash=payload_hash(args),
        resource="to",
        category=Category.COMMUNICATE,
        reversibility=Reversibility.NONE,
        blast_radius=BlastRadius.SINGLE,
        sensitivity=Sensitivity.CONFIDENTIAL,
        risk=Risk(score=55, tier=Tier.MEDIUM, factors={"reversibility": 20, "sensitivity": 15}),
        environment="bench",
    )


def report(label: str, samples: list[float], baseline: list[float] | None = None, unit: str = "ms") -> None:
    def stats(xs: list[float]) -> tuple[float, float]:
        xs = sorted(xs)
        return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))]

    med, p99 = stats(samples)
    line = f"{label:<58} median {med:8.2f} {unit}   p99 {p99:8.2f} {unit}"
    if baseline:
        bmed, bp99 = stats(baseline)
        line += f"   | static page median {bmed:6.2f} {unit}  p99 {bp99:6.2f} {unit}   ({med / bmed:5.1f}x)"
    print(line, flush=True)


async def timed(call: Callable[[], Awaitable[httpx2.Response]], rounds: int, status: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = await call()
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != status:
            raise SystemExit(
                f"console_bench: expected HTTP {status}, got {response.status_code}: {response.text[:200]}"
            )
    return samples


def static_app(pages: dict[str, bytes]) -> Starlette:
    """The baseline: Starlette returning fixed bytes, and a form POST answered with a redirect."""

    def page(path: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(_: Request) -> Response:
            return HTMLResponse(pages[path])

        return endpoint

    async def decide(request: Request) -> Response:
        await request.form()
        return RedirectResponse("/console/approvals/x", status_code=303)

    routes = [Route(path, page(path), methods=["GET"]) for path in pages]
    return Starlette(routes=[*routes, Route("/decide", decide, methods=["POST"])])


async def main_async(opts: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="guard-console-bench-") as tmp:
        state = StateDir(Path(tmp) / "state")
        clock = SystemClock()
        store = await ApprovalStore.open(state, clock=clock, config=ApprovalsConfig(expire=7200))
        try:
            await store.approvers.enrol("ana", ["support_leads"])
            for i in range(opts.n + opts.rounds * 2):  # the decide rounds use up some; N stay pending
                await store.create(email(i), DECISION, tool="shop__send_email")
            config = ConsoleConfig(idle=3600, session=3600)
            async with open_console(
                approvals=store, state=state, clock=clock, config=config, public_url=f"{ORIGIN}/console"
            ) as console:
                app = build_console_app(console, listen_host="127.0.0.1")
                token, session = await console.store.sign_in(None, "ana", factor="passkey")
                cookies = {"guard_console": token}
                pending = [a.id for a in await store.list()]
                print(
                    f"console_bench: {len(pending)} pending approvals, in-process ASGI (httpx2), {opts.rounds} rounds",
                    flush=True,
                )
                async with httpx2.AsyncClient(
                    transport=httpx2.ASGITransport(app=app),
                    base_url=ORIGIN,
                    headers={"origin": ORIGIN},
                    cookies=cookies,
                ) as browser:
                    card_path = f"/console/approvals/{pending[0]}"
                    queue = await browser.get("/console/")
                    card = await browser.get(card_path)
                    rows = await browser.get("/console/queue/rows")
                    print(
                        f"console_bench: queue page {len(queue.content):,} bytes, card {len(card.content):,} bytes",
                        flush=True,
                    )
                    base = static_app({"/console/": queue.content, "/card": card.content, "/rows": rows.content})
                    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=base), base_url=ORIGIN) as bare:
                        for path in ("/console/", "/card", "/rows"):  # warm both
                            await bare.get(path)
                        await browser.get("/console/")
                        await browser.get(card_path)
                        q = await timed(lambda: browser.get("/console/"), opts.rounds, 200)
                        qb = await timed(lambda: bare.get("/console/"), opts.rounds, 200)
                        shown = f"{len(pending)} pending (the page lists {min(len(pending), MAX_QUEUE)})"
                        report(f"queue page, {shown}", q, qb)
                        r = await timed(lambda: browser.get("/console/queue/rows"), opts.rounds, 200)
                        rb = await timed(lambda: bare.get("/rows"), opts.rounds, 200)
                        report(f"queue rows (live refresh), {shown}", r, rb)
                        c = await timed(lambda: browser.get(card_path), opts.rounds, 200)
                        cb = await timed(lambda: bare.get("/card"), opts.rounds, 200)
                        report(f"approval card, {len(pending)} pending", c, cb)
                        to_decide = iter(pending[-opts.rounds * 2 :])

                        async def decide() -> httpx2.Response:
                            return await browser.post(
                                f"/console/approvals/{next(to_decide)}/decide",
                                data={"csrf": session.csrf, "decision": "approve", "reason": "bench"},
                            )

                        d = await timed(decide, opts.rounds, 303)
                        db = await timed(
                            lambda: bare.post("/decide", data={"csrf": session.csrf, "decision": "approve"}),
                            opts.rounds,
                            303,
                        )
                        report("decide POST (approve, MEDIUM)", d, db)
                        await _resume(browser, store, session.csrf, to_decide, opts.rounds)
                await _fan_out(app, console, store, cookies, opts.pages, max(3, opts.rounds // 6))
        finally:
            await store.close()


async def _resume(browser: httpx2.AsyncClient, store: ApprovalStore, csrf: str, ids: Any, rounds: int) -> None:
    """A console decision → the waiting call sees it: `wait_for_decision` as the pause stage runs it (poll 0.25 s)."""
    samples = []
    for _ in range(rounds):
        approval_id = next(ids)
        woke = anyio.Event()
        at: list[float] = []

        async def waiting(approval_id: str = approval_id, woke: anyio.Event = woke, at: list[float] = at) -> None:
            await wait_for_decision(store, approval_id, timeout=10, poll=0.25)
            at.append(time.perf_counter())
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting)
            await anyio.sleep(random.uniform(0.01, 0.26))  # anywhere between two of the waiter's polls
            response = await browser.post(
                f"/console/approvals/{approval_id}/decide", data={"csrf": csrf, "decision": "approve"}
            )
            decided = time.perf_counter()
            if response.status_code != 303:
                raise SystemExit(f"console_bench: decide answered {response.status_code}")
            with anyio.fail_after(10):
                await woke.wait()
        samples.append((at[0] - decided) * 1000)
    report("console decision -> waiting call resumed (poll 0.25 s)", samples)


async def _fan_out(
    app: Any, console: Any, store: ApprovalStore, cookies: dict[str, str], pages: int, rounds: int
) -> None:
    """`pages` open queue pages on a loopback listener: a new approval → each page's `queue` event."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = anyio.Event()
    samples: list[float] = []
    created_at: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_console, app, sock, stop)
        headers = {"host": f"localhost:{port}", "origin": f"http://localhost:{port}"}
        seen: list[list[float]] = [[] for _ in range(pages)]
        ready = [anyio.Event() for _ in range(pages)]

        async def page(i: int) -> None:
            async with (
                httpx2.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", headers=headers, cookies=cookies, timeout=30
                ) as client,
                client.stream("GET", "/console/events") as events,
            ):
                async for line in events.aiter_lines():
                    if line.startswith("event: queue"):
                        seen[i].append(time.perf_counter())
                        ready[i].set()

        with anyio.fail_after(30):
            while True:  # the listener is up
                try:
                    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as probe:
                        await probe.get("/console/signin")
                    break
                except httpx2.TransportError:
                    await anyio.sleep(0.05)
        async with anyio.create_task_group() as pages_tg:
            for i in range(pages):
                pages_tg.start_soon(page, i)
            with anyio.fail_after(30):
                for event in ready:
                    await event.wait()
            for r in range(rounds):
                before = [len(s) for s in seen]
                created_at.append(time.perf_counter())
                await store.create(email(10_000_000 + r), DECISION, tool="shop__send_email")
                with anyio.fail_after(30):
                    while any(len(s) == b for s, b in zip(seen, before, strict=True)):  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                samples += [(s[b] - created_at[-1]) * 1000 for s, b in zip(seen, before, strict=True)]
            pages_tg.cancel_scope.cancel()
        stop.set()
    report(f"new approval -> queue event on {pages} open pages (SSE poll {console.sse_poll:g} s)", samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="pending approvals in the queue")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pages", type=int, default=20, help="open queue pages for the SSE fan-out")
    opts = parser.parse_args()
    anyio.run(main_async, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
