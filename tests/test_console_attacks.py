"""The console under attack, in memory: every request goes through the real app (httpx ASGI transport).

Each test is one attack from the console's threat list; the approval it aims at must stay pending
(or the sign-in it aims at must not happen)."""

from __future__ import annotations

import re

import anyio
import pytest
from _approvals_support import bundle, code_at, decision
from console_kit import (
    ORIGIN,
    Harness,
    SoftPasskey,
    console_harness,
    csrf_of,
    decide,
    enrol,
    page_csrf,
    sign_in,
    step_up,
    use_enrolment,
)

from guard_mcp._approvals import ApprovalState, ApprovalStore
from guard_mcp._approvals._store import VerifiedFactor
from guard_mcp._clock import FakeClock
from guard_mcp._config import ApprovalsConfig
from guard_mcp._console._store import Credential
from guard_mcp._errors import ApprovalError
from guard_mcp._models import Tier
from guard_mcp._state import StateDir

pytestmark = pytest.mark.anyio


async def _signed_in(h: Harness, name: str = "ana", groups: list[str] | None = None) -> SoftPasskey:
    passkey = SoftPasskey()
    await enrol(h, name, groups or ["finance"], passkey)
    response = await sign_in(h.client, passkey)
    assert response.status_code == 303, response.text
    return passkey


async def _pending(h: Harness, *, tier: Tier = Tier.MEDIUM, group: str = "finance", **kw: object) -> str:
    approval = await h.approvals.create(bundle(tier=tier, **kw), decision(group=group), tool="shop__refund")  # type: ignore[arg-type]
    return approval.id


async def _state(h: Harness, approval_id: str) -> ApprovalState:
    record = await h.approvals.get(approval_id)
    assert record is not None
    return record.state


# -- cross-site request forgery ----------------------------------------------------------------------


async def test_a_decision_posted_from_a_foreign_origin_is_refused_even_with_the_right_token(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        approval_id = await _pending(h)
        csrf = await page_csrf(h.client, f"/console/approvals/{approval_id}")
        for origin in ("https://evil.example", "http://localhost.evil.example:8766", "null"):
            response = await h.client.post(
                f"/console/approvals/{approval_id}/decide",
                data={"csrf": csrf, "decision": "approve"},
                headers={"origin": origin},
            )
            assert response.status_code == 403, origin
        assert await _state(h, approval_id) is ApprovalState.PENDING


async def test_a_cross_site_decision_is_refused_whatever_its_origin_says(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        approval_id = await _pending(h)
        csrf = await page_csrf(h.client, f"/console/approvals/{approval_id}")
        for origin, site in (("null", "cross-site"), (ORIGIN, "cross-site"), ("null", "same-site"), ("null", None)):
            headers = {"origin": origin, **({"sec-fetch-site": site} if site else {})}
            response = await h.client.post(
                f"/console/approvals/{approval_id}/decide", data={"csrf": csrf, "decision": "approve"}, headers=headers
            )
            assert response.status_code == 403, (origin, site)
        assert await _state(h, approval_id) is ApprovalState.PENDING
        # a form on the console's own page, under no-referrer: `Origin: null`, and the browser says same-origin
        response = await h.client.post(
            f"/console/approvals/{approval_id}/decide",
            data={"csrf": csrf, "decision": "approve"},
            headers={"origin": "null", "sec-fetch-site": "same-origin"},
        )
        assert response.status_code == 303
        assert await _state(h, approval_id) is ApprovalState.APPROVED


async def test_a_decision_without_an_origin_header_is_refused(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        approval_id = await _pending(h)
        csrf = await page_csrf(h.client, f"/console/approvals/{approval_id}")
        h.client.headers.pop("origin")
        response = await h.client.post(
            f"/console/approvals/{approval_id}/decide", data={"csrf": csrf, "decision": "approve"}
        )
        assert response.status_code == 403
        assert await _state(h, approval_id) is ApprovalState.PENDING


async def test_a_same_origin_decision_without_the_session_csrf_token_is_refused(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        approval_id = await _pending(h)
        for token in ("", "guessed-token", None):
            fields = {"decision": "approve"} if token is None else {"decision": "approve", "csrf": token}
            response = await h.client.post(f"/console/approvals/{approval_id}/decide", data=fields)
            assert response.status_code == 403
        # another session's token is not this session's
        other = h.browser()
        await _signed_in(h, "ben")
        stolen = await page_csrf(h.client)
        await sign_in(other, SoftPasskey())  # a visitor without a passkey: stays signed out
        response = await other.post(
            f"/console/approvals/{approval_id}/decide", data={"csrf": stolen, "decision": "approve"}
        )
        assert response.status_code in (303, 403)
        assert await _state(h, approval_id) is ApprovalState.PENDING


async def test_a_sign_in_posted_from_a_foreign_origin_is_refused(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        passkey = SoftPasskey()
        await enrol(h, "ana", ["finance"], passkey)
        page = await h.client.get("/console/signin")
        csrf = csrf_of(page.text)
        response = await h.client.post(
            "/console/signin/options", headers={"x-csrf-token": csrf, "origin": "https://evil.example"}
        )
        assert response.status_code == 403


# -- sessions ----------------------------------------------------------------------------------------


async def test_a_signed_out_cookie_is_worth_nothing(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        approval_id = await _pending(h)
        cookie = {"cookie": f"guard_console={h.client.cookies.get('guard_console')}"}
        replay = h.browser()
        assert (await replay.get("/console/", headers=cookie)).status_code == 200  # the copy works until sign-out
        csrf = await page_csrf(h.client)
        signed_out = await h.client.post("/console/signout", data={"csrf": csrf})
        assert signed_out.status_code == 303
        page = await replay.get(f"/console/approvals/{approval_id}", headers=cookie)
        assert page.status_code == 303 and page.headers["location"].startswith("/console/signin")
        response = await replay.post(
            f"/console/approvals/{approval_id}/decide", data={"csrf": csrf, "decision": "approve"}, headers=cookie
        )
        assert response.status_code == 303 and response.headers["location"].startswith("/console/signin")
        assert await _state(h, approval_id) is ApprovalState.PENDING


async def test_an_idle_or_old_session_ends(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock, idle=60, session=300) as h:
        passkey = await _signed_in(h)
        clock.advance(61)
        assert (await h.client.get("/console/")).status_code == 303
        await sign_in(h.client, passkey)
        for _ in range(5):  # active, never idle, but past the absolute lifetime
            clock.advance(50)
            assert (await h.client.get("/console/")).status_code == 200
        clock.advance(51)
        assert (await h.client.get("/console/")).status_code == 303


async def test_the_session_id_changes_at_sign_in(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        passkey = SoftPasskey()
        await enrol(h, "ana", ["finance"], passkey)
        await h.client.get("/console/signin")
        planted = h.client.cookies.get("guard_console")
        assert planted
        await sign_in(h.client, passkey)
        assert h.client.cookies.get("guard_console") != planted
        fixated = h.browser()
        page = await fixated.get("/console/", headers={"cookie": f"guard_console={planted}"})
        assert page.status_code == 303  # the planted id did not become signed in


async def test_a_removed_approver_is_signed_out_at_the_next_request(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        assert (await h.client.get("/console/")).status_code == 200
        await h.approvals.approvers.remove("ana")
        assert (await h.client.get("/console/")).status_code == 303


# -- who may decide ----------------------------------------------------------------------------------


async def test_an_approver_outside_the_owner_group_cannot_decide(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h, "sam", ["sales"])
        approval_id = await _pending(h, group="finance")
        for choice in ("approve", "deny"):
            response = await decide(h.client, approval_id, choice)
            assert response.status_code == 403
            assert "not in group" in response.text
        assert await _state(h, approval_id) is ApprovalState.PENDING
        card = await h.client.get(f"/console/approvals/{approval_id}")
        assert 'id="decide-form"' not in card.text


async def test_the_store_refuses_a_console_decision_by_a_non_member_by_itself(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        await h.approvals.approvers.enrol("sam", ["sales"])
        approval_id = await _pending(h, group="finance")
        with pytest.raises(ApprovalError, match="not in group"):
            await h.approvals.decide(
                approval_id, approve=True, approver="sam", verified=VerifiedFactor("sam", "session")
            )
        with pytest.raises(ApprovalError, match="signed-in approver"):
            await h.approvals.decide(
                approval_id, approve=True, approver="finance-lead", verified=VerifiedFactor("sam", "session")
            )
        assert await _state(h, approval_id) is ApprovalState.PENDING


async def test_after_escalation_the_original_group_may_still_decide(state: StateDir, clock: FakeClock) -> None:
    config = ApprovalsConfig(escalate_after=60, escalate_to="managers")
    async with console_harness(state, clock, approvals=config) as h:
        await _signed_in(h)
        approval_id = await _pending(h, group="finance")
        clock.advance(61)
        assert [a.id for a in await h.approvals.escalate_due()] == [approval_id]
        queue = await h.client.get("/console/")
        assert "escalated from" in queue.text
        response = await decide(h.client, approval_id, "approve")
        assert response.status_code == 303
        assert await _state(h, approval_id) is ApprovalState.APPROVED


async def test_the_approval_url_opened_signed_out_asks_for_sign_in_and_then_shows_that_approval(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        passkey = SoftPasskey()
        await enrol(h, "ana", ["finance"], passkey)
        approval_id = await _pending(h, arguments={"customer_id": "cus_999", "amount": 12.5, "note": "secret-ish"})
        page = await h.client.get(f"/console/approvals/{approval_id}")
        assert page.status_code == 303
        assert page.headers["location"] == f"/console/signin?next=/console/approvals/{approval_id}"
        assert "cus_999" not in page.text and "secret-ish" not in page.text
        signin = await h.client.get(page.headers["location"])
        assert "secret-ish" not in signin.text
        response = await sign_in(h.client, passkey, next_path=f"/console/approvals/{approval_id}")
        assert response.headers["location"] == f"/console/approvals/{approval_id}"
        card = await h.client.get(response.headers["location"])
        assert card.status_code == 200 and "secret-ish" in card.text


async def test_before_any_approver_is_enrolled_the_sign_in_page_says_how_to_enrol_and_how_to_decide_at_the_terminal(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        approval_id = await _pending(h, group="finance", arguments={"customer_id": "cus_999", "note": "secret-ish"})
        signin = await h.client.get("/console/signin", params={"next": f"/console/approvals/{approval_id}"})
        assert signin.status_code == 200 and "No approver is enrolled yet" in signin.text
        assert "guard-mcp approvers add YOUR_NAME --group finance" in signin.text  # the group that owns it
        assert f"guard-mcp approvals approve {approval_id}" in signin.text
        assert "secret-ish" not in signin.text and "cus_999" not in signin.text
        # an approval id that is not in the queue is not repeated back as a command
        unknown = await h.client.get("/console/signin", params={"next": "/console/approvals/apr_nosuchone"})
        assert "--group approvers" in unknown.text and "apr_nosuchone</code>" not in unknown.text
        # a refused sign-in keeps saying it
        refused = await h.client.post(
            "/console/signin", data={"csrf": csrf_of(signin.text), "name": "tom", "code": "123456"}
        )
        assert refused.status_code == 403 and "No approver is enrolled yet" in refused.text
        # once someone is enrolled, the page is a sign-in page only
        await h.approvals.approvers.enrol("ana", ["finance"])
        later = await h.client.get("/console/signin", params={"next": f"/console/approvals/{approval_id}"})
        assert "No approver is enrolled yet" not in later.text and "approvals approve" not in later.text


# -- passkeys ----------------------------------------------------------------------------------------


async def test_a_step_up_assertion_made_for_one_approval_does_not_decide_another(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        passkey = await _signed_in(h)
        first = await _pending(h, tier=Tier.HIGH, request_id="req-a")
        second = await _pending(
            h, tier=Tier.HIGH, request_id="req-b", arguments={"customer_id": "cus_1", "amount": 9000}
        )
        assertion = await step_up(h.client, first, passkey)
        await step_up(h.client, second, SoftPasskey())  # B has a live challenge of its own, too
        response = await decide(h.client, second, "approve", assertion=assertion)
        assert response.status_code == 409
        assert await _state(h, second) is ApprovalState.PENDING
        assert await _state(h, first) is ApprovalState.PENDING
        # the assertion still decides the approval it was made for
        response = await decide(h.client, first, "approve", assertion=assertion)
        assert response.status_code == 303
        assert await _state(h, first) is ApprovalState.APPROVED


async def test_a_step_up_with_another_approvers_passkey_does_not_decide(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h, "ana")
        bens = SoftPasskey()
        await enrol(h, "ben", ["finance"], bens, client=h.browser())
        approval_id = await _pending(h, tier=Tier.HIGH)
        assertion = await step_up(h.client, approval_id, bens)  # ana's challenge, signed by ben's passkey
        response = await decide(h.client, approval_id, "approve", assertion=assertion)
        assert response.status_code == 409 and "this passkey is not yours" in response.text
        assert await _state(h, approval_id) is ApprovalState.PENDING


async def test_a_sign_in_with_a_passkey_not_enrolled_here_is_refused(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        response = await sign_in(h.client, SoftPasskey())
        assert response.status_code == 403 and "this passkey is not enrolled here" in response.text
        assert (await h.client.get("/console/")).status_code == 303  # still signed out


async def test_a_passkey_used_elsewhere_at_the_same_moment_neither_signs_in_nor_decides(
    state: StateDir, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with console_harness(state, clock) as h:
        passkey = await _signed_in(h)
        approval_id = await _pending(h, tier=Tier.HIGH)
        assertion = await step_up(h.client, approval_id, passkey)

        async def raced(credential: Credential, count: int) -> bool:
            return False  # another sign-in with this passkey advanced its counter first

        monkeypatch.setattr(h.console.store, "advance_counter", raced)
        response = await decide(h.client, approval_id, "approve", assertion=assertion)
        assert response.status_code == 409 and "used elsewhere at the same moment; press Approve again" in response.text
        assert await _state(h, approval_id) is ApprovalState.PENDING
        response = await sign_in(h.browser(), passkey)
        assert response.status_code == 403 and "used elsewhere at the same moment; sign in again" in response.text


async def test_a_high_risk_approval_needs_a_fresh_second_factor(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        approval_id = await _pending(h, tier=Tier.HIGH)
        response = await decide(h.client, approval_id, "approve")
        assert response.status_code == 409 and "step-up" in response.text
        assert await _state(h, approval_id) is ApprovalState.PENDING


async def test_a_step_up_by_totp_code_records_the_factor(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        secret, _ = await h.approvals.approvers.enrol("tom", ["finance"])
        page = await h.client.get("/console/signin")
        response = await h.client.post(
            "/console/signin", data={"csrf": csrf_of(page.text), "name": "tom", "code": code_at(secret, clock.now())}
        )
        assert response.status_code == 303
        approval_id = await _pending(h, tier=Tier.HIGH)
        clock.advance(30)  # the sign-in spent this step's code
        response = await decide(h.client, approval_id, "approve", code=code_at(secret, clock.now()))
        assert response.status_code == 303, response.text
        assert await _state(h, approval_id) is ApprovalState.APPROVED
        decided = [e for e in h.events if e.type == "console.decided"]
        assert decided[-1].data["factor"] == "totp" and decided[-1].data["approver"] == "tom"


async def test_a_passkey_step_up_records_approver_credential_and_factor(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        passkey = await _signed_in(h)
        approval_id = await _pending(h, tier=Tier.HIGH)
        response = await decide(
            h.client, approval_id, "approve", assertion=await step_up(h.client, approval_id, passkey)
        )
        assert response.status_code == 303
        record = await h.approvals.get(approval_id)
        assert record is not None and record.state is ApprovalState.APPROVED and record.approver == "ana"
        event = next(e for e in h.events if e.type == "console.decided")
        assert event.data["factor"] == "passkey" and event.data["credential_id"] == passkey.id
        assert event.request_id == record.request_id and event.actor == "approver:ana"


async def test_a_cloned_authenticator_whose_counter_goes_back_is_refused(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        passkey = await _signed_in(h)  # counter 1
        approval_id = await _pending(h, tier=Tier.HIGH)
        assert (
            await decide(
                h.client, approval_id, "approve", assertion=await step_up(h.client, approval_id, passkey, counter=5)
            )
        ).status_code == 303
        clone = h.browser()
        response = await sign_in(clone, passkey, counter=3)  # a copy of the key, behind the original
        assert response.status_code == 403 and "cloned" in response.text
        assert (await clone.get("/console/")).status_code == 303
        second = await _pending(h, tier=Tier.HIGH, request_id="req-2")
        response = await decide(
            h.client, second, "approve", assertion=await step_up(h.client, second, passkey, counter=5)
        )
        assert response.status_code == 409 and "cloned" in response.text
        assert await _state(h, second) is ApprovalState.PENDING
        credential = await h.console.store.credential(passkey.id)
        assert credential is not None and credential.sign_count == 5


async def test_a_passkey_without_user_verification_does_not_sign_in(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        passkey = SoftPasskey()
        await enrol(h, "ana", ["finance"], passkey)
        passkey.verified = False
        response = await sign_in(h.client, passkey)
        assert response.status_code == 403
        assert (await h.client.get("/console/")).status_code == 303


async def test_an_assertion_made_on_another_origin_does_not_sign_in(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        passkey = SoftPasskey()
        await enrol(h, "ana", ["finance"], passkey)
        response = await sign_in(h.client, passkey, origin="https://evil.example")
        assert response.status_code == 403


async def test_an_enrolment_link_works_once(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await h.approvals.approvers.enrol("ana", ["finance"])
        token = await h.console.store.issue_enrolment("ana", 3600)
        assert token is not None
        assert (await use_enrolment(h.client, token, SoftPasskey())).status_code == 303
        again = await use_enrolment(h.browser(), token, SoftPasskey())
        assert again.status_code == 410
        assert len(await h.console.store.credentials_of("ana")) == 1


async def test_an_enrolment_link_raced_twice_enrols_one_passkey(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await h.approvals.approvers.enrol("ana", ["finance"])
        token = await h.console.store.issue_enrolment("ana", 3600)
        assert token is not None
        browsers = [h.browser(), h.browser()]
        pages = [await b.get(f"/console/enrol/{token}") for b in browsers]  # both opened before either finished
        tokens = [csrf_of(p.text) for p in pages]
        options = [
            await b.post(f"/console/enrol/{token}/options", headers={"x-csrf-token": t})
            for b, t in zip(browsers, tokens, strict=True)
        ]
        results = [
            await b.post(f"/console/enrol/{token}", data={"csrf": t, "credential": SoftPasskey().create(o.json())})
            for b, t, o in zip(browsers, tokens, options, strict=True)
        ]
        assert sorted(r.status_code for r in results) == [303, 410]
        assert len(await h.console.store.credentials_of("ana")) == 1
        # two completions that both passed the page's check: the store's compare-and-set lets one through
        token = await h.console.store.issue_enrolment("ana", 3600)
        assert token is not None
        copies = [Credential(f"cred-{n}", "ana", "00", b"key", 0) for n in range(2)]
        assert [await h.console.store.enrol(token, c) for c in copies] == [True, False]


async def test_an_expired_enrolment_link_is_refused(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await h.approvals.approvers.enrol("ana", ["finance"])
        token = await h.console.store.issue_enrolment("ana", 120)
        assert token is not None
        page = await h.client.get(f"/console/enrol/{token}")
        csrf = csrf_of(page.text)
        options = await h.client.post(f"/console/enrol/{token}/options", headers={"x-csrf-token": csrf})
        clock.advance(121)  # the page's own session and challenge are still live: only the link expired
        response = await h.client.post(
            f"/console/enrol/{token}", data={"csrf": csrf, "credential": SoftPasskey().create(options.json())}
        )
        assert response.status_code == 410
        assert (await h.client.get(f"/console/enrol/{token}")).status_code == 410
        assert await h.console.store.credentials_of("ana") == []


async def test_enrolment_links_are_stored_only_as_hashes(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await h.approvals.approvers.enrol("ana", ["finance"])
        token = await h.console.store.issue_enrolment("ana", 600)
        passkey = SoftPasskey()
        await enrol(h, "ana", ["finance"], passkey)
        await sign_in(h.client, passkey)
        cookie = h.client.cookies.get("guard_console")
        assert token and cookie
        raw = state.database.read_bytes() + (
            state.database.with_name("guard.db-wal").read_bytes()
            if state.database.with_name("guard.db-wal").exists()
            else b""
        )
        assert token.encode() not in raw and cookie.encode() not in raw


# -- hostile text, framing, redirects, hosts -----------------------------------------------------------

HOSTILE = "<script>alert(1)</script>\u202egnp.exe\u200b<img src=x onerror=alert(2)>"


async def test_hostile_text_is_rendered_as_text_everywhere(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        args = {
            "customer_id": HOSTILE,
            "amount": 350,
            "currency": "EUR",
            "url": "javascript:alert(3)",
            HOSTILE: "key is hostile too",
        }
        approval = await h.approvals.create(
            bundle(arguments=args, tier=Tier.MEDIUM, principal=HOSTILE, session=HOSTILE),
            decision(),
            tool=f"shop__{HOSTILE}",
        )
        decided = await h.approvals.create(
            bundle(arguments={"amount": 1}, request_id="req-0"), decision(), tool=f"shop__{HOSTILE}"
        )
        await h.approvals.decide(decided.id, approve=False, approver="cli", reason=HOSTILE)
        pages = [
            await h.client.get(p)
            for p in (
                "/console/",
                "/console/queue/rows",
                f"/console/approvals/{approval.id}",
                f"/console/approvals/{decided.id}",
            )
        ]
        for page in pages:
            assert page.status_code == 200
            body = page.text
            assert "<script>alert" not in body and "<img" not in body
            assert "\u202e" not in body and "\u200b" not in body
            assert not re.search(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", body, re.I)
        card = pages[2].text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;\\u202egnp.exe\\u200b" in card  # shown, coded, in full
        assert "javascript:alert(3)" in card  # as text


async def test_every_answer_forbids_framing_and_sniffing(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        responses = [
            await h.client.get(p)
            for p in (
                "/console/",
                "/console/signin",
                "/console/nowhere",
                "/console/static/console.css",
                "/console/approvals/apr_x",
            )
        ]
        responses.append(await h.client.get("/console/", headers={"host": "evil.example"}))
        responses.append(await h.client.post("/console/signout", headers={"origin": "https://evil.example"}))
        for response in responses:
            assert response.headers["x-frame-options"] == "DENY"
            csp = response.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
        page = responses[0].text
        assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page) is None  # no inline script at all
        assert " on" not in re.sub(
            r"<[^>]*>", lambda m: "" if not re.search(r"\son[a-z]+=", m.group(0)) else " on", page
        )


async def test_cookies_are_httponly_samesite_strict(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        response = await h.client.get("/console/signin")
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/console/",
        "/\\evil.example",
        "javascript:alert(1)",
        "/console/../../etc",
        "/console//evil.example",
        "%2F%2Fevil.example",
        "/console/%2F%2Fevil.example",
        "/elsewhere",
        "/console/\r\nSet-Cookie: x=y",
        " /console/",
    ],
)
async def test_the_sign_in_next_parameter_never_leaves_the_console(
    state: StateDir, clock: FakeClock, target: str
) -> None:
    async with console_harness(state, clock) as h:
        passkey = SoftPasskey()
        await enrol(h, "ana", ["finance"], passkey)
        response = await sign_in(h.client, passkey, next_path=target)
        assert response.status_code == 303
        assert response.headers["location"] == "/console/"


async def test_a_rebinding_host_name_gets_nothing(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        for host in ("evil.example", "evil.example:8766", "localhost.evil.example"):
            response = await h.client.get("/console/", headers={"host": host})
            assert response.status_code == 421
            assert "Waiting" not in response.text


async def test_a_page_opened_on_the_loopback_address_moves_to_localhost(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        response = await h.client.get("/console/signin?next=/console/", headers={"host": "127.0.0.1:8766"})
        assert response.status_code == 307
        assert response.headers["location"] == "http://localhost:8766/console/signin?next=/console/"


# -- one queue ---------------------------------------------------------------------------------------


async def test_a_decision_raced_from_the_console_and_the_cli_has_exactly_one_winner(
    state: StateDir, clock: FakeClock
) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        cli = await ApprovalStore.open(state, clock=clock, config=ApprovalsConfig())
        try:
            for round_ in range(5):
                approval_id = await _pending(h, request_id=f"req-race-{round_}")
                csrf = await page_csrf(h.client, f"/console/approvals/{approval_id}")
                outcomes: dict[str, object] = {}

                async def from_console(
                    approval_id: str = approval_id, csrf: str = csrf, outcomes: dict[str, object] = outcomes
                ) -> None:
                    response = await decide(h.client, approval_id, "approve", csrf=csrf)
                    outcomes["console"] = response.status_code

                async def from_cli(approval_id: str = approval_id, outcomes: dict[str, object] = outcomes) -> None:
                    try:
                        await cli.decide(approval_id, approve=False, approver="local:op")
                        outcomes["cli"] = "won"
                    except ApprovalError:
                        outcomes["cli"] = "lost"

                async with anyio.create_task_group() as tg:
                    tg.start_soon(from_console)
                    tg.start_soon(from_cli)
                final = await _state(h, approval_id)
                console_won = outcomes["console"] == 303
                assert console_won != (outcomes["cli"] == "won"), outcomes
                assert final is (ApprovalState.APPROVED if console_won else ApprovalState.DENIED)
        finally:
            await cli.close()


async def test_the_queue_is_newest_first_and_shows_cli_decisions(state: StateDir, clock: FakeClock) -> None:
    async with console_harness(state, clock) as h:
        await _signed_in(h)
        old = await _pending(h, request_id="req-old")
        clock.advance(5)
        new = await _pending(h, request_id="req-new")
        page = (await h.client.get("/console/")).text
        assert page.index(new) < page.index(old)
        await h.approvals.decide(old, approve=True, approver="local:op")  # decided elsewhere
        rows = (await h.client.get("/console/queue/rows")).text
        assert new in rows and old not in rows
        mine = (await h.client.get("/console/?show=mine")).text
        assert new in mine
        assert ORIGIN  # the harness serves the console on the loopback origin
