"""The wasmtime host: compiles the policy module once, caches it, and runs one policy per Store.

Every call into the module runs with a fuel budget and under a memory cap. Any trap (fuel, memory,
a panic in the module) is mapped to PolicyError here and the Store is thrown away: the module may
have stopped half-way through, so its state is rebuilt from the bundle before the next decision.

Calls go through wasmtime's C API `wasmtime_func_call_unchecked` when the bindings expose it: the
Python wrapper's per-call type introspection costs more than the decision itself. The export types
are checked once at instantiation, which is what makes the unchecked call sound. Without the C
entry point the public `Func.__call__` is used; both paths give the same answers.

The compiled module is cached in `<state>/cache` as native code, which wasmtime loads without checking
it. A cached file is therefore used only when it carries an HMAC (key `<state>/keys/module-cache.key`)
over the exact `policy.wasm` and engine settings it was compiled from; a planted, stale or damaged file
is compiled again and overwritten.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import importlib.metadata
import json
import os
import platform
import secrets
import tempfile
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import wasmtime

from guard_mcp._errors import PolicyError
from guard_mcp._state import StateDir, write_private

__all__ = [
    "CACHE_KEY_FILE",
    "DEFAULT_FUEL",
    "LOAD_FUEL",
    "MEMORY_LIMIT",
    "WasmEvaluator",
    "compiled_module",
    "module_bytes",
]

DEFAULT_FUEL = 50_000_000  # per decision; a 1,000-rule policy uses well under a tenth of it
LOAD_FUEL = 4_000_000_000  # parsing a bundle at the size limit
MEMORY_LIMIT = 256 * 1024 * 1024
_FULL_TRACE = 1 << 31
_MASK64 = (1 << 64) - 1

_lock = threading.Lock()
_compiled: dict[str, tuple[wasmtime.Engine, wasmtime.Module]] = {}

# A precompiled module is native code the process jumps into: it is only loaded when its MAC, made with
# a key in `keys/` that only the guard can read, binds it to the exact `policy.wasm` and engine settings.
CACHE_KEY_FILE = "module-cache.key"
_CACHE_MAGIC = b"guard-mcp cwasm v1\n"
_MAC_BYTES = 32
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def module_bytes() -> bytes:
    return resources.files("guard_mcp").joinpath("_wasm", "policy.wasm").read_bytes()


def _settings() -> str:
    # A serialised module only loads into an engine with the same settings and the same wasmtime.
    return f"wasmtime{importlib.metadata.version('wasmtime')}-{platform.machine()}-fuel"


def _engine_key(wasm: bytes) -> str:
    return f"{hashlib.sha256(wasm).hexdigest()[:24]}-{_settings()}"


def _mac(key: bytes, wasm: bytes, native: bytes) -> bytes:
    mac = hmac.new(key, _CACHE_MAGIC, hashlib.sha256)
    mac.update(hashlib.sha256(wasm).digest())
    mac.update(_settings().encode() + b"\0")
    mac.update(native)
    return mac.digest()


def _read_no_follow(path: Path) -> tuple[bytes, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read(), os.fstat(f.fileno())


def _cache_key(keys: Path) -> bytes | None:
    """The cache's MAC key, made on first use; None (no disk cache) when it cannot be read or made."""
    path = keys / CACHE_KEY_FILE
    for _ in range(2):
        try:
            key, st = _read_no_follow(path)
        except FileNotFoundError:
            _make_cache_key(path)
            continue
        except OSError:
            return None
        mine = os.name != "posix" or st.st_uid == os.geteuid()
        return key if len(key) == _MAC_BYTES and mine else None
    return None


def _make_cache_key(path: Path) -> None:
    # Written whole, then linked into place: a second process making one at the same time keeps the first.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(_MAC_BYTES))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError:
        pass  # read again: absent, and the cache is not used
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _load_cached(engine: wasmtime.Engine, cache: Path, key: bytes, wasm: bytes) -> wasmtime.Module | None:
    """The cached module if its MAC checks out; None for a missing, stale, planted or damaged file."""
    try:
        data, _ = _read_no_follow(cache)
    except OSError:
        return None
    head = len(_CACHE_MAGIC) + _MAC_BYTES
    if not data.startswith(_CACHE_MAGIC) or len(data) <= head:
        return None
    native = data[head:]
    if not hmac.compare_digest(data[len(_CACHE_MAGIC) : head], _mac(key, wasm, native)):
        return None
    try:
        return wasmtime.Module.deserialize(engine, native)
    except wasmtime.WasmtimeError:
        return None


def compiled_module(state: StateDir | None = None) -> tuple[wasmtime.Engine, wasmtime.Module]:
    """The engine and compiled module, compiled once per process and cached on disk in `<state>/cache`.

    The cache holds native code: a file there is used only when its MAC (key in `<state>/keys`) binds
    it to this `policy.wasm` and these engine settings. Anything else is recompiled and overwritten.
    """
    wasm = module_bytes()
    name = _engine_key(wasm)
    with _lock:
        hit = _compiled.get(name)
        if hit is not None:
            return hit
        config = wasmtime.Config()
        config.consume_fuel = True
        engine = wasmtime.Engine(config)
        module: wasmtime.Module | None = None
        key = _cache_key(state.keys) if state is not None else None
        cache = state.cache / f"policy-{name}.cwasm" if state is not None else None
        if cache is not None and key is not None:
            module = _load_cached(engine, cache, key, wasm)
        if module is None:
            try:
                module = wasmtime.Module(engine, wasm)
            except wasmtime.WasmtimeError as exc:
                raise PolicyError(f"the policy module does not compile: {exc}; reinstall guard-mcp") from None
            if cache is not None and key is not None:
                native = bytes(module.serialize())
                try:
                    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    write_private(cache, _CACHE_MAGIC + _mac(key, wasm, native) + native)
                except OSError:
                    pass  # a cache we cannot write only costs start-up time
        _compiled[name] = (engine, module)
        return engine, module


_EXPECTED = {
    "gm_reserve": ([wasmtime.ValType.i32()], [wasmtime.ValType.i32()]),
    "gm_load": ([wasmtime.ValType.i32()], [wasmtime.ValType.i64()]),
    "gm_decide": ([wasmtime.ValType.i32()], [wasmtime.ValType.i64()]),
    "gm_score": ([wasmtime.ValType.i32()], [wasmtime.ValType.i64()]),
}


def _raw_caller() -> Any:
    try:
        from wasmtime import _ffi as ffi

        fn = ffi.dll.wasmtime_func_call_unchecked
        return ffi, fn
    except (ImportError, AttributeError):
        return None


_RAW = _raw_caller()


class _Instance:
    """One Store, one instance of the module, one loaded policy."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, memory_limit: int) -> None:
        self.store = wasmtime.Store(engine)
        self.store.set_limits(memory_size=memory_limit)
        self.store.set_fuel(LOAD_FUEL)
        try:
            instance = wasmtime.Instance(self.store, module, [])
        except wasmtime.WasmtimeError as exc:
            raise PolicyError(f"the policy module cannot be instantiated: {exc}") from None
        exports = instance.exports(self.store)
        funcs: dict[str, wasmtime.Func] = {}
        for name, (params, results) in _EXPECTED.items():
            f = exports.get(name)
            if not isinstance(f, wasmtime.Func):
                raise PolicyError(f"the policy module lacks export `{name}`; reinstall guard-mcp")
            ty = f.type(self.store)
            if [str(p) for p in ty.params] != [str(p) for p in params] or [str(r) for r in ty.results] != [
                str(r) for r in results
            ]:
                raise PolicyError(f"the policy module's `{name}` has an unexpected signature; reinstall guard-mcp")
            funcs[name] = f
        memory = exports.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise PolicyError("the policy module exports no memory; reinstall guard-mcp")
        self.memory = memory
        self.funcs = funcs
        self.capacity = 0
        self.input_ptr = 0
        self._call = self._make_caller()

    def _make_caller(self) -> Callable[[str, int], int]:
        if _RAW is None:

            def public(name: str, arg: int) -> int:
                return int(self.funcs[name](self.store, arg)) & _MASK64

            return public
        ffi, raw_call = _RAW
        ctx = self.store._context()
        slots = (ffi.wasmtime_val_raw_t * 1)()
        handles = {name: ctypes.byref(f._func) for name, f in self.funcs.items()}
        trap_ty = ctypes.POINTER(ffi.wasm_trap_t)

        def raw(name: str, arg: int) -> int:
            slots[0].i32 = arg if arg < 2**31 else arg - 2**32
            trap = trap_ty()
            err = raw_call(ctx, handles[name], slots, 1, ctypes.byref(trap))
            if err or trap:
                if trap:
                    ffi.wasm_trap_delete(trap)
                if err:
                    ffi.wasmtime_error_delete(err)
                raise wasmtime.Trap("trap in the policy module")
            return int(slots[0].i64) & _MASK64

        return raw

    def call(self, name: str, arg: int, fuel: int) -> int:
        self.store.set_fuel(fuel)
        try:
            return self._call(name, arg)
        except (wasmtime.Trap, wasmtime.WasmtimeError):
            exhausted = self._fuel_left() == 0
            what = "ran out of fuel" if exhausted else "trapped"
            raise PolicyError(f"the policy module {what} in `{name}`") from None

    def _fuel_left(self) -> int:
        try:
            return int(self.store.get_fuel())
        except wasmtime.WasmtimeError:
            return 0

    def _base(self) -> int:
        return ctypes.addressof(self.memory.data_ptr(self.store).contents)

    def write_input(self, data: bytes, fuel: int) -> None:
        if len(data) > self.capacity:
            want = max(len(data), 64 * 1024)
            self.input_ptr = self.call("gm_reserve", want, fuel)
            self.capacity = want
        if self.input_ptr + len(data) > self.memory.data_len(self.store):
            raise PolicyError("the policy module returned an input buffer outside its memory")
        ctypes.memmove(self._base() + self.input_ptr, data, len(data))

    def read_output(self, packed: int) -> bytes:
        ptr, length = packed >> 32, packed & 0xFFFFFFFF
        if ptr + length > self.memory.data_len(self.store):
            raise PolicyError("the policy module returned output outside its memory")
        return ctypes.string_at(self._base() + ptr, length)


class WasmEvaluator:
    """One verified bundle, loaded into its own sandbox. Thread-safe; never shares a Store."""

    def __init__(
        self,
        data: bytes,
        sha256: str,
        *,
        fuel: int = DEFAULT_FUEL,
        memory_limit: int = MEMORY_LIMIT,
        state: StateDir | None = None,
    ) -> None:
        self.data = data
        self.sha256 = sha256
        self.fuel = fuel
        self.memory_limit = memory_limit
        self._engine, self._module = compiled_module(state)
        self._lock = threading.Lock()
        self._inst: _Instance | None = None
        self.label = self._load()

    def _load(self) -> str:
        inst = _Instance(self._engine, self._module, self.memory_limit)
        payload = bytes.fromhex(self.sha256) + self.data
        try:
            inst.write_input(payload, LOAD_FUEL)
            out = inst.read_output(inst.call("gm_load", len(payload), LOAD_FUEL))
            answer = json.loads(out)
        except PolicyError as exc:
            raise PolicyError(f"the policy bundle could not be loaded: {exc}") from None
        except ValueError:
            raise PolicyError("the policy module answered the load with malformed output") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), str):
            problem = answer.get("error") if isinstance(answer, dict) else None
            raise PolicyError(f"the policy module refused the bundle: {problem or 'malformed answer'}")
        self._inst = inst
        return str(answer["ok"])

    def decide_raw(self, request: bytes, *, full_trace: bool = False) -> bytes:
        """The module's JSON answer for one request; PolicyError on any trap."""
        if len(request) >= _FULL_TRACE:
            raise PolicyError("the request is too large for the policy module")
        with self._lock:
            inst = self._inst
            if inst is None:  # the last call trapped: start from a clean Store
                self._load()
                inst = self._inst
                assert inst is not None
            try:
                inst.write_input(request, self.fuel)
                packed = inst.call("gm_decide", len(request) | (_FULL_TRACE if full_trace else 0), self.fuel)
                return inst.read_output(packed)
            except PolicyError:
                self._inst = None
                raise

    def score_raw(self, packed: int) -> int:
        with self._lock:
            inst = self._inst
            if inst is None:
                self._load()
                inst = self._inst
                assert inst is not None
            try:
                return inst.call("gm_score", packed, self.fuel)
            except PolicyError:
                self._inst = None
                raise
