"""Policy: the YAML source, signed bundles, and their evaluation in the WASM sandbox.

`_source` compiles a reviewed policy into a bundle; `_bundle` signs and verifies it; `_host` runs
the compiled module under wasmtime; `_decision` crosses that boundary; `_engine` decides which
version serves and turns every failure into a deny. `_reference` is a plain-Python twin of the
evaluator for property tests only.
"""

from __future__ import annotations

from guard_mcp._policy._bundle import (
    MAX_BUNDLE_BYTES,
    VerifiedBundle,
    VersionLedger,
    inspect_bundle,
    key_id,
    load_private_key,
    load_trusted_keys,
    read_bundle,
    sign_bundle,
    signature_path,
    verify_bundle,
)
from guard_mcp._policy._decision import encode_request, explanation, parse_decision, with_bundle_facts
from guard_mcp._policy._engine import PolicyEngine, Status, load_candidate, load_verified
from guard_mcp._policy._explain import explain_condition
from guard_mcp._policy._host import WasmEvaluator
from guard_mcp._policy._replay import replay
from guard_mcp._policy._source import bundle_bytes, compile_policy, compile_policy_file

__all__ = [
    "MAX_BUNDLE_BYTES",
    "PolicyEngine",
    "Status",
    "VerifiedBundle",
    "VersionLedger",
    "WasmEvaluator",
    "bundle_bytes",
    "compile_policy",
    "compile_policy_file",
    "encode_request",
    "explain_condition",
    "explanation",
    "inspect_bundle",
    "key_id",
    "load_candidate",
    "load_private_key",
    "load_trusted_keys",
    "load_verified",
    "parse_decision",
    "read_bundle",
    "replay",
    "sign_bundle",
    "signature_path",
    "verify_bundle",
    "with_bundle_facts",
]
