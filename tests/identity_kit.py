"""A stand-in identity provider on loopback for the resource-server tests: OpenID metadata and a JWKS
served over real HTTP, and tokens minted with PyJWT under its keys (or under keys it does not publish);
and what a test of the guard over HTTP sends first (`INIT` with `MCP_HEADERS`, once `wait_until_served`)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import jwt
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

# An MCP client's first request over streamable HTTP, and the headers it goes with.
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def loopback_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `127.0.0.1` and its key, as PEM files in `directory`: a TLS server on
    loopback that a client trusts by being given the certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "loopback.crt", directory / "loopback.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_app(
    app: ASGIApp,
    port: int | None = None,
    *,
    lifespan: Literal["auto", "on", "off"] = "off",
    tls: tuple[Path, Path] | None = None,
) -> AsyncIterator[str]:
    """Serve an ASGI app on loopback (over TLS with `tls`: certificate and key files); yields its base URL
    once it answers."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan=lifespan,
            ssl_certfile=tls and str(tls[0]),
            ssl_keyfile=tls and str(tls[1]),
        )
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await anyio.sleep(0.01)
        try:
            yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@dataclass
class Idp:
    """Keys and claims of one provider. `issuer` is set once it serves."""

    rsa_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    issuer: str = ""
    metadata_requests: int = 0

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key, alg in (("rsa-1", self.rsa_key, "RS256"), ("ec-1", self.ec_key, "ES256")):
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": keys}

    def public_pem(self) -> bytes:
        return self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(
        self,
        audience: str,
        *,
        sub: str = "alice",
        alg: str = "RS256",
        lifetime: float = 300,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        now = time.time() if now is None else now
        body = {
            "iss": self.issuer,
            "aud": audience,
            "sub": sub,
            "iat": int(now),
            "exp": int(now + lifetime),
            "client_id": "agent-app",
            **claims,
        }
        key, kid = (self.ec_key, "ec-1") if alg == "ES256" else (self.rsa_key, "rsa-1")
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})

    def app(self) -> Starlette:
        async def metadata(_: Request) -> JSONResponse:
            self.metadata_requests += 1
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "jwks_uri": f"{self.issuer}/jwks",
                    "authorization_endpoint": f"{self.issuer}/auth",
                    "token_endpoint": f"{self.issuer}/token",
                }
            )

        async def keys(_: Request) -> JSONResponse:
            return JSONResponse(self.jwks())

        return Starlette(routes=[Route("/.well-known/openid-configuration", metadata), Route("/jwks", keys)])


@contextlib.asynccontextmanager
async def running_idp() -> AsyncIterator[Idp]:
    idp = Idp()
    async with serve_app(idp.app()) as base:
        idp.issuer = base
        yield idp


async def wait_until_served(base: str) -> None:
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(10):
            while True:
                with contextlib.suppress(httpx2.TransportError):
                    await http.get(f"{base}/.well-known/jwks.json")
                    return
                await anyio.sleep(0.02)
