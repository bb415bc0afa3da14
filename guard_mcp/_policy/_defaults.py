"""The built-in tier defaults, served when no policy is configured.

They are an ordinary bundle (no rules, `tier_defaults: true`) evaluated by the same module, so
the risk score and the decision come from the sandbox either way: LOW allow, MEDIUM approve,
HIGH approve with step-up.
"""

from __future__ import annotations

import hashlib
from functools import cache

from guard_mcp._policy._source import bundle_bytes, compile_policy

__all__ = ["DEFAULTS_DESCRIPTION", "defaults_bundle"]

DEFAULTS_DESCRIPTION = "built-in tier defaults (LOW allow, MEDIUM approve, HIGH approve with step-up)"

_SOURCE = """
policy: tier-defaults
version: 1
tier_defaults: true
rules: []
"""


@cache
def defaults_bundle() -> tuple[bytes, str]:
    """(bundle bytes, sha256 hex) of the built-in defaults."""
    data = bundle_bytes(compile_policy(_SOURCE, where="<built-in defaults>"))
    return data, hashlib.sha256(data).hexdigest()
