"""Receivers on 127.0.0.1 for the notification tests: a Standard Webhooks receiver that verifies every
request with the `standardwebhooks` library itself, and a plain JSON sink for Apprise's `json://`."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    status: int
    refused: str | None = None  # why the receiver library refused it


@dataclass
class Receiver:
    """Answers 503 while `down`, 500 for the next `fail` verified requests, then 204; keeps every request,
    and counts a delivery once per webhook-id (the de-duplication the id is for)."""

    secret: str | None = None
    down: bool = False
    fail: int = 0
    requests: list[Request] = field(default_factory=list)
    delivered: dict[str, Any] = field(default_factory=dict)
    got: threading.Event = field(default_factory=threading.Event)

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        if self.down:
            self.requests.append(Request(headers, body, 503))
            return 503
        refused = None
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError as exc:
                refused = str(exc)
        status = 400 if refused else 500 if self.fail > 0 else 204
        if status == 500:
            self.fail -= 1
        self.requests.append(Request(headers, body, status, refused))
        if status == 204:
            self.delivered.setdefault(headers.get("webhook-id", f"#{len(self.requests)}"), json.loads(body))
            self.got.set()
        return status


class Server:
    def __init__(self, receiver: Receiver) -> None:
        owner = receiver

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = owner.answer({k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.receiver = receiver
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
