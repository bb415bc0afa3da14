"""A permit's claims, named once: the guard mints them (`_permits.py`) and an upstream checks them
(`verify.py`). Standard library only, so that `import guard_mcp.verify` stays light.

`PermitClaims` is the contract; the verifier's checks are derived from it: every required `str` claim
must be a string, every optional one a string when present, every `int` one an integer (not a bool).
"""

# No `from __future__ import annotations`: the verifier reads these annotations as types at import.

from typing import Final, NotRequired, TypedDict, get_type_hints

__all__ = ["OPTIONAL_STR_CLAIMS", "STR_CLAIMS", "TIME_CLAIMS", "PermitClaims"]


class PermitClaims(TypedDict):
    jti: str  # single use: the replay store consumes it once
    iss: str  # the guard (`guard.permits.issuer`)
    sub: str  # the caller's principal
    aud: str  # the upstream
    act: str  # the action (`refund.create`)
    tool: str  # the upstream's tool name
    payload_hash: str  # sha256 of the canonical arguments
    policy: str  # the policy version that allowed the call
    env: str  # the guard's environment
    iat: int
    nbf: int
    exp: int
    policy_rule: NotRequired[str]  # the rule that matched, when one did
    approver: NotRequired[str]  # who approved, for an approved call


_HINTS = get_type_hints(PermitClaims)
STR_CLAIMS: Final = tuple(n for n in _HINTS if n in PermitClaims.__required_keys__ and _HINTS[n] is str)
OPTIONAL_STR_CLAIMS: Final = tuple(n for n in _HINTS if n in PermitClaims.__optional_keys__ and _HINTS[n] is str)
TIME_CLAIMS: Final = tuple(n for n in _HINTS if _HINTS[n] is int)
