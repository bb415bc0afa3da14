"""One clock: the package reads the time only through the injected `Clock` (guard_mcp/_clock.py), so a
FakeClock reaches every expiry, window and timestamp. Checked on the source: every read of the wall or
monotonic clock, every sleep and every `SystemClock()` outside _clock.py is listed in ALLOWED with the
reason it stays, and counted; a new one fails the test, and so does an entry that is no longer needed
(the list only shrinks).

Three kinds stay on purpose: a default clock where the clock is chosen (the guard's `open_guard`, a
command's `Env`, the public verifier for an upstream's author); monotonic measurements and deadlines
(latency, a regex's time budget, the writer's batching, the event loop's own timeouts), which a
wall clock must not drive; and pacing sleeps (poll and retry intervals), which wait on real time and
decide nothing about validity. Any other is a debt.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "guard_mcp"

CLOCK_READS = frozenset(
    {
        "time.time",
        "time.time_ns",
        "time.monotonic",
        "time.monotonic_ns",
        "time.perf_counter",
        "time.perf_counter_ns",
        "time.sleep",
        "anyio.sleep",
        "anyio.sleep_until",
        "anyio.current_time",
        "asyncio.sleep",
        "datetime.now",
        "datetime.utcnow",
        "datetime.today",
        "date.today",
        "datetime.datetime.now",
        "datetime.datetime.utcnow",
        "datetime.date.today",
    }
)
SYSTEM_CLOCK = "SystemClock()"

DEFAULT = "the default clock where the clock is chosen"
MONOTONIC = "a monotonic measurement or deadline, not a time of day"
PACING = "a pacing sleep on real time (a poll or retry interval), deciding nothing"

# module -> {read: (how many, why it stays)}
ALLOWED: dict[str, dict[str, tuple[int, str]]] = {
    "guard_mcp._clock": {"time.time": (1, "the clock itself")},
    "guard_mcp._server": {SYSTEM_CLOCK: (1, DEFAULT), "anyio.sleep": (2, PACING)},
    "guard_mcp.verify": {SYSTEM_CLOCK: (1, DEFAULT + ": the verifier an upstream's author constructs")},
    "guard_mcp._replay": {SYSTEM_CLOCK: (3, DEFAULT + ": the replay stores an upstream's author constructs")},
    "guard_mcp._keys": {SYSTEM_CLOCK: (1, "debt: the demo and the simulation build a KeyStore without a clock")},
    "guard_mcp._audit._writer": {
        "time.monotonic": (4, MONOTONIC + ": the writer thread's batching gap and lock deadline"),
        "time.sleep": (1, PACING + ": the writer thread's back-off on a locked database"),
        "time.perf_counter": (2, MONOTONIC + ": the commit latency metric"),
    },
    "guard_mcp._pipeline": {"time.perf_counter": (1, MONOTONIC + ": the stage latency metrics (one import, each use)")},
    "guard_mcp._patterns": {"time.perf_counter": (2, MONOTONIC + ": a regex's time budget")},
    "guard_mcp._relay": {"anyio.current_time": (4, MONOTONIC + ": the event loop's clock, which cancel scopes use")},
    "guard_mcp._upstreams": {
        "anyio.current_time": (2, MONOTONIC + ": how long a restart loop has run, on the event loop's clock"),
        "anyio.sleep": (3, PACING + ": restart back-off, the liveness interval"),
    },
    # The SDK compares the wall clock with the expiry it is handed; the guard's clock measured what is left.
    "guard_mcp._identity._upstream": {"time.time": (1, "the SDK's own wall-clock comparison")},
    "guard_mcp._approvals._wait": {"anyio.sleep": (1, PACING + ": the default of the injectable `clock_sleep`")},
    "guard_mcp._pause": {"anyio.sleep": (1, PACING + ": the heartbeat interval")},
    "guard_mcp._console._views": {"anyio.sleep": (1, PACING + ": the event stream's poll")},
    "guard_mcp._notify._notifier": {"anyio.sleep": (1, PACING + ": the outbox poll")},
    "guard_mcp._store._base": {"anyio.sleep": (1, PACING + ": retry back-off on a busy database")},
    "guard_mcp._store.pgsync": {"time.sleep": (1, PACING + ": retry back-off on a serialisation failure")},
    "guard_mcp.cli._approvals": {"anyio.sleep": (1, PACING + ": `approvals list --watch` refresh")},
    "guard_mcp.cli._audit": {"time.sleep": (1, PACING + ": `audit tail --follow` poll")},
    "guard_mcp.cli._probe": {SYSTEM_CLOCK: (1, "debt: `probe_upstreams` has no Env; pass the command's clock")},
    "guard_mcp.cli._import": {"datetime.now": (1, "debt: the generated file's header stamp; pass the command's clock")},
    # The demo shop is an upstream of its own (it is not the guard): its rows carry its own time.
    "guard_mcp.demo._shopdb": {"time.time": (4, "the demo upstream's own records")},
    "guard_mcp.demo._runner": {
        "time.time": (1, "the demo's offset clock (a Clock itself)"),
        "anyio.sleep": (2, PACING + ": the demo waiting on its processes"),
    },
    "guard_mcp.demo._simulate": {
        SYSTEM_CLOCK: (1, "debt: the simulation mints its permit on a clock of its own"),
        "time.perf_counter": (2, MONOTONIC + ": how long a scenario took"),
        "time.monotonic_ns": (1, "debt: a unique request id from the clock; use the id helper"),
        "anyio.sleep": (1, PACING + ": waiting for the demo's processes"),
    },
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def clock_reads(source: str) -> Counter[str]:
    """Each read of the time (also `from time import time` and `anyio.sleep` passed as a value) and each
    `SystemClock()` in `source`."""
    found: Counter[str] = Counter()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and (name := dotted(node)) in CLOCK_READS:
            found[name] += 1
        elif isinstance(node, ast.ImportFrom) and node.module in ("time", "anyio", "asyncio", "datetime"):
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in CLOCK_READS)
        elif isinstance(node, ast.Call) and (dotted(node.func) or "").rpartition(".")[2] == "SystemClock":
            found[SYSTEM_CLOCK] += 1
    return found


def package_reads() -> dict[str, Counter[str]]:
    found = {module_name(p): clock_reads(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}
    return {module: reads for module, reads in found.items() if reads}


def test_the_package_reads_the_time_only_through_the_clock_or_where_allowed() -> None:
    problems = [
        f"{module} has {count} of {read} (allowed: {ALLOWED.get(module, {}).get(read, (0, ''))[0]}): "
        "ask the injected Clock (`clock.now()`), or list it in ALLOWED in tests/test_clock_reads.py with why"
        for module, reads in package_reads().items()
        for read, count in sorted(reads.items())
        if count > ALLOWED.get(module, {}).get(read, (0, ""))[0]
    ]
    assert not problems, "\n".join(problems)


def test_every_allowed_read_is_still_there() -> None:
    found = package_reads()
    paid = [
        f"{module} now has {found.get(module, Counter())[read]} of {read}, ALLOWED says {count}: lower it in "
        "tests/test_clock_reads.py"
        for module, reads in ALLOWED.items()
        for read, (count, _) in sorted(reads.items())
        if found.get(module, Counter())[read] < count
    ]
    assert not paid, "\n".join(paid)


def test_the_scan_sees_each_way_of_reading_the_time() -> None:
    source = (
        "import time, anyio, datetime\n"
        "from time import monotonic\n"
        "from guard_mcp._clock import SystemClock\n"
        "a = time.time()\n"
        "b = datetime.datetime.now()\n"
        "sleep = anyio.sleep\n"
        "c = SystemClock().now()\n"
        "d = clock.now()\n"
    )
    assert clock_reads(source) == Counter(
        {"time.time": 1, "time.monotonic": 1, "datetime.datetime.now": 1, "anyio.sleep": 1, SYSTEM_CLOCK: 1}
    )
    assert "time.time" in package_reads()["guard_mcp._clock"]
