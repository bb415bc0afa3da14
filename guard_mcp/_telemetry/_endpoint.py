"""`GET /metrics` in front of an ASGI app (the HTTP transport, the console's own listener).

Who may read it (`guard.metrics`): with `token` set, a scraper that sends `Authorization: Bearer
<token>` (compared in constant time), from anywhere; without, only a client on a loopback address
that also names a loopback host (`Host: 127.0.0.1:PORT`, `localhost`, `[::1]`), so a web page that
rebinds its own name to 127.0.0.1 cannot read it through a browser, and that no proxy relayed (no
`Forwarded`, `X-Forwarded-*`, `X-Real-IP` or `Via`): a reverse proxy on the same machine connects from
loopback for clients anywhere. Any other request passes on.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from guard_mcp._config import MetricsConfig
    from guard_mcp._telemetry._metrics import Metrics

__all__ = ["with_metrics"]

PATH = "/metrics"
_LOCAL_NAMES = frozenset({"localhost"})
# Headers a proxy adds: a request that carries one came through a proxy on this machine, from anywhere.
_RELAYED = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip", b"via")


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address in _LOCAL_NAMES


def _host_name(host: bytes) -> str:
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):  # [::1]:8765
        return text[: text.find("]") + 1] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def with_metrics(app: ASGIApp, metrics: Metrics, config: MetricsConfig) -> ASGIApp:
    """`app` with `/metrics` answered from `metrics` (when `config.enabled`)."""
    if not config.enabled:
        return app
    expected = None if config.token is None else f"Bearer {config.token}".encode()

    async def refuse(send: Send, status: int, error: str, detail: str) -> None:
        body = json.dumps({"error": error, "error_description": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="guard-mcp metrics"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != PATH:
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if expected is not None:
            if not hmac.compare_digest(headers.get(b"authorization", b""), expected):
                await refuse(
                    send, 401, "unauthorized", "`/metrics` needs `Authorization: Bearer <guard.metrics.token>`"
                )
                return
        else:
            client = scope.get("client")
            if not (client and _loopback(str(client[0])) and _loopback(_host_name(headers.get(b"host", b"")))) or any(
                h in headers for h in _RELAYED
            ):
                await refuse(
                    send,
                    403,
                    "forbidden",
                    "`/metrics` answers loopback scrapers only; set "
                    "`guard.metrics.token` to scrape it from elsewhere with a bearer token",
                )
                return
        if scope.get("method") not in ("GET", "HEAD"):
            await refuse(send, 405, "method_not_allowed", "`/metrics` is read with GET")
            return
        await metrics.refresh()
        body = metrics.exposition()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    return serve
