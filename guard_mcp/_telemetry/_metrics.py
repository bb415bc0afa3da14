"""The guard's Prometheus metrics, in a registry of its own (served by `_endpoint.with_metrics`).

Label values are bounded and never quote a call: a tool is named only when it is configured in
`upstreams.yaml` (any other is `other`), a reason only when it is in the closed set of `_codes.Reason`
(a policy's own reason code is `policy`), an upstream and an approver group come from the config and
the signed policy. No argument, principal or approver name is ever a label.

On the call path each update is a dict look-up and prometheus-client's own increment; what is read
from the guard's state (upstreams, pending approvals) is collected when a scrape asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import mcp_types as types
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from guard_mcp._approvals import DEFAULT_GROUP
from guard_mcp._codes import Reason
from guard_mcp._naming import SEPARATOR
from guard_mcp._results import DECISION_META

if TYPE_CHECKING:
    from guard_mcp._approvals import ApprovalStore
    from guard_mcp._config import GuardConfig
    from guard_mcp._upstreams import UpstreamManager

__all__ = ["Metrics", "outcome"]

log = logging.getLogger("guard_mcp.metrics")

_REASONS = frozenset(r.value for r in Reason)
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # seconds: policy, fsync
_SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # seconds: an upstream's answer
_HUMAN = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)  # seconds: a person


def outcome(result: types.CallToolResult | types.InputRequiredResult, *, bounded: bool = True) -> tuple[str, str]:
    """(effect, reason) of a call's answer: `allow` for a result the upstream gave, else the guard's decision.
    `bounded`: a reason outside the closed set (a policy's own code) is `policy`, as in a metric's label."""
    if isinstance(result, types.InputRequiredResult):
        return "approve", Reason.PENDING_APPROVAL.value
    decided = (result.meta or {}).get(DECISION_META)
    if not isinstance(decided, dict):
        return "allow", "policy"
    effect = decided.get("effect")
    reason = decided.get("reason")
    if not isinstance(reason, str) or (bounded and reason not in _REASONS):
        reason = "policy"
    return ("approve" if effect == "approve" else "deny"), reason


class Metrics:
    def __init__(self, config: GuardConfig) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._tools = frozenset(
            f"{name}{SEPARATOR}{tool}" for name, up in config.upstreams.items() for tool in up.tools
        )
        self._synchronous = config.guard.audit.synchronous
        self._calls = Counter(
            "guard_calls",
            "Guarded calls by tool, effect (allow, deny, approve: waiting) and reason",
            ["tool", "effect", "reason"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "guard_decision_seconds", "Time the policy took to decide a call", buckets=_FAST, registry=r
        )
        self._forward = Histogram(
            "guard_forward_seconds",
            "Time an upstream took to answer a permitted call",
            ["upstream"],
            buckets=_SLOW,
            registry=r,
        )
        self._approval_wait = Histogram(
            "guard_approval_wait_seconds",
            "Time a call waited in the guard for a human decision, by approver group",
            ["group"],
            buckets=_HUMAN,
            registry=r,
        )
        self._commit = Histogram(
            "guard_audit_commit_seconds", "Time one audit transaction took, fsync included", buckets=_FAST, registry=r
        )
        self._fsyncs = Counter("guard_audit_fsyncs", "Audit transactions made durable with an fsync", registry=r)
        self._limits = Counter(
            "guard_limit_checks",
            "Usage-limit checks by tool and result (`within` or the reason)",
            ["tool", "result"],
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}  # label children, looked up without a lock
        self._upstreams: UpstreamManager | None = None
        self._approvals: ApprovalStore | None = None
        self._pending: dict[str, int] = {}
        r.register(_Live(self))

    def watch(self, upstreams: UpstreamManager, approvals: ApprovalStore | None) -> None:
        """Read these at each scrape: upstream up/down and restarts, pending approvals by group."""
        self._upstreams, self._approvals = upstreams, approvals

    def tool(self, name: str) -> str:
        return name if name in self._tools else "other"

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def call(self, name: str, result: types.CallToolResult | types.InputRequiredResult) -> None:
        self._child(self._calls, self.tool(name), *outcome(result)).inc()

    def forwarded(self, upstream: str, seconds: float) -> None:
        self._child(self._forward, upstream).observe(seconds)

    def approval_waited(self, group: str | None, seconds: float) -> None:
        self._child(self._approval_wait, group or DEFAULT_GROUP).observe(seconds)

    def limit_checked(self, name: str, result: str) -> None:
        self._child(self._limits, self.tool(name), result if result in _REASONS else "within").inc()

    def committed(self, seconds: float) -> None:
        """One audit transaction (called on the writer's thread)."""
        self._commit.observe(seconds)
        if self._synchronous == "full":  # WAL with synchronous=FULL: each commit syncs the log
            self._fsyncs.inc()

    async def refresh(self) -> None:
        """Read what a scrape reports from the stores (on the event loop, before the text is made)."""
        if self._approvals is None:
            return
        try:
            self._pending = await self._approvals.pending_counts()
        except Exception as exc:  # a scrape reports what it can; the store's failure is the guard's to report
            log.warning("metrics: pending approvals not read: %s", exc)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    """Gauges read at scrape time from the running guard's state."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "guard_upstream_up", "1 while the upstream's session is ready, else 0", labels=["upstream"]
        )
        restarts = CounterMetricFamily(
            "guard_upstream_restarts", "Times the guard restarted the upstream", labels=["upstream"]
        )
        upstreams = self._m._upstreams
        for name, handle in sorted((upstreams.handles if upstreams is not None else {}).items()):
            up.add_metric([name], 1.0 if handle.state == "ready" else 0.0)
            restarts.add_metric([name], float(handle.restarts))
        pending = GaugeMetricFamily(
            "guard_approvals_pending", "Approvals waiting for a decision, by approver group", labels=["group"]
        )
        for group, n in sorted(self._m._pending.items()):
            pending.add_metric([group], float(n))
        yield from (up, restarts, pending)
