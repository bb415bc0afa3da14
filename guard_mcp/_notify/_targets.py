"""Where a notification is sent: a webhook signed per Standard Webhooks, or an Apprise URL.

A webhook gets the stored payload as the request body, byte for byte on every attempt, with
`webhook-id` (the outbox row's id: the receiver de-duplicates by it), `webhook-timestamp` (this
attempt's time, from the guard's clock: the receiver refuses old ones, so a captured request cannot
be replayed later) and `webhook-signature` (`v1,` + HMAC-SHA256 over id, timestamp and body, made by
the `standardwebhooks` library). Redirects are not followed: a signed message goes where it was
configured to go, or nowhere.

Chat and mail go through Apprise (Slack, Teams, Matrix, ntfy, e-mail, ...) as plain text. Apprise is
synchronous: it runs in a worker thread, bounded by the target's timeout, and is imported only when
a target uses it. An error says what happened, never the URL or the secret (they hold credentials).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import anyio.to_thread
import httpx2
from standardwebhooks import Webhook

from guard_mcp._config import NotifyTarget
from guard_mcp._errors import GuardError
from guard_mcp._notify._messages import render_text

__all__ = ["AppriseTarget", "DeliveryError", "Target", "WebhookTarget", "open_targets"]

_USER_AGENT = "guard-mcp-notify/1"

log = logging.getLogger("guard_mcp.notify")


class DeliveryError(GuardError):
    """One attempt failed; the message says why in a few words, without the target's URL."""


class Target(Protocol):
    name: str

    async def send(self, message_id: str, payload: str, now: float) -> None:
        """Deliver once; raise DeliveryError if the receiver did not take it."""
        ...


class WebhookTarget:
    def __init__(self, name: str, config: NotifyTarget, client: httpx2.AsyncClient) -> None:
        assert config.webhook is not None and config.secret is not None
        self.name = name
        self._url = config.webhook
        self._signer = Webhook(config.secret)
        self._timeout = config.timeout
        self._client = client

    def headers(self, message_id: str, body: bytes, now: float) -> dict[str, str]:
        when = datetime.fromtimestamp(int(now), UTC)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": self._signer.sign(message_id, when, body),
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
        }

    async def send(self, message_id: str, payload: str, now: float) -> None:
        body = payload.encode()
        try:
            response = await self._client.post(
                self._url,
                content=body,
                headers=self.headers(message_id, body, now),
                timeout=self._timeout,
                follow_redirects=False,
            )
        except httpx2.HTTPError as exc:
            raise DeliveryError(f"could not reach the receiver ({type(exc).__name__})") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"the receiver answered HTTP {response.status_code}")


class AppriseTarget:
    def __init__(self, name: str, config: NotifyTarget) -> None:
        assert config.apprise is not None
        self.name = name
        self._url = config.apprise
        self._timeout = config.timeout
        # Loaded here, once, on the guard's own thread: Apprise imports its plugins on the first `add`, and
        # some of them a module Python deprecates (`imghdr`); that warning is Apprise's, not the operator's.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import apprise  # here: a guard without chat or mail targets never loads it

            self._known = bool(apprise.Apprise().add(self._url))
        if not self._known:
            log.error("notification target `%s`: Apprise does not know its URL's service; check `apprise:`", name)

    def _notify(self, title: str, body: str) -> None:
        import apprise

        sender = apprise.Apprise()
        if not self._known or not sender.add(self._url):
            raise DeliveryError("Apprise does not know this URL's service; check the target's `apprise:` URL")
        if not sender.notify(body=body, title=title, body_format=apprise.NotifyFormat.TEXT):
            raise DeliveryError("the service refused the message or could not be reached")

    async def send(self, message_id: str, payload: str, now: float) -> None:
        try:
            doc: Mapping[str, Any] = json.loads(payload)
        except ValueError:
            raise DeliveryError("the stored message is not JSON") from None
        title, body = render_text(doc)
        try:
            with anyio.fail_after(self._timeout):
                # abandoned, not awaited, on timeout or cancellation: the row stays claimed and is tried again
                await anyio.to_thread.run_sync(self._notify, title, body, abandon_on_cancel=True)
        except TimeoutError:
            raise DeliveryError(f"no answer within {self._timeout:g}s") from None
        except DeliveryError:
            raise
        except Exception as exc:  # a plugin's own failure: its text may quote the URL
            raise DeliveryError(f"Apprise failed ({type(exc).__name__})") from None


def open_targets(targets: Mapping[str, NotifyTarget], client: httpx2.AsyncClient) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for name, config in targets.items():
        out[name] = WebhookTarget(name, config, client) if config.webhook is not None else AppriseTarget(name, config)
    return out
