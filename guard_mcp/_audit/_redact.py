"""Redaction: what the audit log keeps of secrets is a keyed digest, never the secret.

Two rules. Arguments named in `guard.audit.redact` (or a tool's `redact:` list, or with a name
that says "secret", like `password` or `api_key`) are replaced whole, at any depth. String values
that look like credentials (JWTs, bearer tokens, well-known API key formats, PEM private keys,
card numbers that pass the Luhn check, however their digit groups are spaced) are replaced
wherever they appear, inside free text too.

The digest is `redacted:` + HMAC-SHA256 of the canonical value under a key derived from the
deployment key, truncated to 128 bits: equal secrets can be correlated across events by whoever
holds the log, but a guessable secret (a PIN, a card number) cannot be brute-forced from it
without the deployment key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any

from guard_mcp._canonical import canonical_json

__all__ = ["Redactor"]

# Names are compared lower-cased with `-`, `_` and `.` removed.
_SECRET_NAMES = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "clientsecret",
        "token",
        "accesstoken",
        "refreshtoken",
        "idtoken",
        "authtoken",
        "apitoken",
        "sessiontoken",
        "bearertoken",
        "apikey",
        "xapikey",
        "privatekey",
        "secretkey",
        "accesskey",
        "secretaccesskey",
        "authorization",
        "proxyauthorization",
        "cookie",
        "setcookie",
        "credentials",
        "credential",
        "cvv",
        "cvc",
        "otp",
        "totp",
    }
)
_SECRET_SUFFIXES = ("password", "secret", "apikey", "privatekey", "secretkey", "accesstoken", "refreshtoken")

_SECRET_VALUE = re.compile(
    "|".join(
        [
            r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",  # JWT / JWS
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|$)",
            r"(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{16,}",
            r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
            r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
            r"\bgithub_pat_[A-Za-z0-9_]{30,}",
            r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab
            r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id
            r"\bAIza[0-9A-Za-z_-]{35}",  # Google API key
            r"\bnpm_[A-Za-z0-9]{36}",
            # Card numbers: issuer ranges start with 2-6; Luhn-checked below. Groups may be set apart by
            # any whitespace (doubled, tabs, line breaks) or a dash: an echo may have reflowed them.
            r"(?<![\w-])[2-6](?:[\s-]{0,3}\d){11,17}\d(?![\w-])",
        ]
    )
)
_CARD = re.compile(r"^[2-6](?:[\s-]{0,3}\d){11,17}\d$")
_NOT_DIGIT = re.compile(r"\D")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _normal(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(".", "")


class Redactor:
    def __init__(self, deployment_key: bytes, fields: Iterable[str] = ()) -> None:
        self._key = hmac.digest(deployment_key, b"guard-mcp audit redaction", "sha256")
        self._fields = frozenset(_normal(f) for f in fields)
        self._names: dict[str, bool] = {}  # name -> secret by the deployment-wide rules

    def digest(self, value: Any) -> str:
        try:
            raw = canonical_json(value)
        except Exception:
            raw = repr(value).encode()
        return "redacted:" + hmac.digest(self._key, raw, hashlib.sha256).hex()[:32]

    def _secret_name(self, name: str, extra: frozenset[str]) -> bool:
        secret = self._names.get(name)
        if secret is None:
            n = _normal(name)
            secret = n in self._fields or n in _SECRET_NAMES or n.endswith(_SECRET_SUFFIXES)
            if len(self._names) < 4096:  # the same few names recur in every event
                self._names[name] = secret
        return secret or (bool(extra) and _normal(name) in extra)

    def _scrub(self, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            found = m.group(0)
            if _CARD.match(found):
                digits = _NOT_DIGIT.sub("", found)
                if not (13 <= len(digits) <= 19 and _luhn(digits)):
                    return found
                return self.digest(digits)  # one card, one digest, however its groups were spaced
            return self.digest(found)

        if _SECRET_VALUE.search(text) is None:
            return text
        return _SECRET_VALUE.sub(sub, text)

    def value(self, value: Any, extra: frozenset[str] = frozenset()) -> Any:
        """`value` with secrets replaced; containers are copied, never changed in place."""
        t = type(value)
        if t is int or t is bool or t is float or value is None:
            return value
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, Mapping):
            return {
                k: self.digest(v) if isinstance(k, str) and self._secret_name(k, extra) else self.value(v, extra)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v, extra) for v in value]
        return value

    def arguments(self, arguments: Mapping[str, Any], extra_fields: Iterable[str] = ()) -> dict[str, Any]:
        extra = frozenset(_normal(f) for f in extra_fields)
        out = self.value(arguments, extra)
        assert isinstance(out, dict)
        return out
