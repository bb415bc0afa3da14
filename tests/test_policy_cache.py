"""The precompiled policy module on disk is native code: a planted one never decides."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
from pathlib import Path

import pytest
import wasmtime
from _policy_kit import action, config_for, make_signer, shop_source, write_bundle

from guard_mcp._models import Effect
from guard_mcp._policy import PolicyEngine, _host
from guard_mcp._state import StateDir


def _always_allow(label: str) -> bytes:
    """A module with the policy module's exports that loads any bundle and allows everything."""
    loaded = json.dumps({"ok": label}).encode()
    decision = json.dumps(
        {
            "policy": label,
            "effect": "allow",
            "rule": "owned",
            "reason": "owned",
            "step_up": False,
            "risk": {"score": 0, "tier": "LOW", "factors": {}},
            "trace": [],
            "permit_ttl": 300,
        }
    ).encode()

    def data(offset: int, text: bytes) -> str:
        escaped = "".join("\\" + f"{b:02x}" for b in text)
        return f'(data (i32.const {offset}) "{escaped}")'

    def packed(offset: int, text: bytes) -> int:
        return offset << 32 | len(text)

    return bytes(
        wasmtime.wat2wasm(f"""
    (module
      (memory (export "memory") 64)
      (func (export "gm_reserve") (param i32) (result i32) i32.const 1048576)
      (func (export "gm_load") (param i32) (result i64) i64.const {packed(1024, loaded)})
      (func (export "gm_decide") (param i32) (result i64) i64.const {packed(8192, decision)})
      (func (export "gm_score") (param i32) (result i64) i64.const 0)
      {data(1024, loaded)}
      {data(8192, decision)})
    """)
    )


def _native(wasm: bytes) -> bytes:
    config = wasmtime.Config()
    config.consume_fuel = True  # the engine settings the guard's cache is named after
    return bytes(wasmtime.Module(wasmtime.Engine(config), wasm).serialize())


def _cache_file(state: StateDir) -> Path:
    return state.cache / f"policy-{_host._engine_key(_host.module_bytes())}.cwasm"


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path]:
    signer = make_signer(tmp_path / "signer")
    bundle = tmp_path / "shop.bundle.json"
    write_bundle(bundle, shop_source(), signer)
    return bundle, signer.public_pem


def _large_refund(engine: PolicyEngine) -> tuple[Effect, str | None]:
    _, d = engine.decide(action(arguments={"customer_id": "c-1", "amount": 5000}))
    return d.effect, d.rule_id


def _label(state: StateDir, signed: tuple[Path, Path]) -> str:
    _host._compiled.clear()
    engine = PolicyEngine.from_config(config_for(*signed), state)
    assert engine.status == "loaded" and _large_refund(engine) == (Effect.DENY, "refund-large")
    return engine.describe().split()[1]


def _plant_raw(state: StateDir, native: bytes, tmp_path: Path) -> None:
    _cache_file(state).write_bytes(native)  # what the cache held before it carried a MAC


def _plant_with_a_mac_of_its_own(state: StateDir, native: bytes, tmp_path: Path) -> None:
    # The attacker's own key: the guard's is in keys/, which they cannot read.
    mac = _host._mac(b"k" * 32, _host.module_bytes(), native)
    _cache_file(state).write_bytes(_host._CACHE_MAGIC + mac + native)


def _plant_as_a_link(state: StateDir, native: bytes, tmp_path: Path) -> None:
    evil = tmp_path / "evil.cwasm"
    evil.write_bytes(native)
    cache = _cache_file(state)
    cache.unlink()
    cache.symlink_to(evil)


@pytest.mark.parametrize("plant", [_plant_raw, _plant_with_a_mac_of_its_own, _plant_as_a_link])
def test_a_planted_always_allow_module_is_recompiled_and_the_signed_policy_decides(
    state: StateDir, signed: tuple[Path, Path], tmp_path: Path, plant: object
) -> None:
    label = _label(state, signed)  # a first start fills the cache
    plant(state, _native(_always_allow(label)), tmp_path)  # type: ignore[operator]
    _host._compiled.clear()  # the next start reads the cache
    engine = PolicyEngine.from_config(config_for(*signed), state)
    assert engine.status == "loaded"
    assert _large_refund(engine) == (Effect.DENY, "refund-large")  # not (allow, "owned")
    cache = _cache_file(state)
    assert not cache.is_symlink() and cache.read_bytes().startswith(_host._CACHE_MAGIC)  # rewritten


def test_a_cached_module_whose_mac_checks_out_is_used_without_recompiling(
    state: StateDir, signed: tuple[Path, Path]
) -> None:
    _label(state, signed)
    cache = _cache_file(state)
    before = cache.stat()
    key = state.keys / _host.CACHE_KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    data = cache.read_bytes()
    head = len(_host._CACHE_MAGIC) + 32
    expected = _host._mac(key.read_bytes(), _host.module_bytes(), data[head:])
    assert hmac.compare_digest(data[len(_host._CACHE_MAGIC) : head], expected)
    _host._compiled.clear()
    engine = PolicyEngine.from_config(config_for(*signed), state)
    assert _large_refund(engine) == (Effect.DENY, "refund-large")
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten


def test_the_mac_binds_the_exact_wasm_and_the_engine_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    key, wasm, native = os.urandom(32), _host.module_bytes(), b"native code"
    mac = _host._mac(key, wasm, native)
    assert mac != _host._mac(key, wasm + b"\0", native)
    assert mac != _host._mac(key, wasm, native + b"\0")
    monkeypatch.setattr(platform, "machine", lambda: "another-machine")
    assert mac != _host._mac(key, wasm, native)
    assert hashlib.sha256(wasm).hexdigest()[:24] in _host._engine_key(wasm)


def test_without_a_readable_cache_key_the_module_is_compiled_in_memory_only(
    state: StateDir, signed: tuple[Path, Path]
) -> None:
    key = state.keys / _host.CACHE_KEY_FILE
    key.write_bytes(b"short")  # damaged: not a key, so nothing on disk is trusted or written
    _host._compiled.clear()
    engine = PolicyEngine.from_config(config_for(*signed), state)
    assert _large_refund(engine) == (Effect.DENY, "refund-large")
    assert not _cache_file(state).exists()
