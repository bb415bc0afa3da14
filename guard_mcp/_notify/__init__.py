"""Notifications: approvers hear about approvals wherever they are, from the audit log, at least once.

Layout: `_outbox` (the cursor and the outbox rows in `guard.db`), `_messages` (what a notice says
and which targets it is routed to, built from the redacted audit only), `_targets` (signed webhooks
and Apprise URLs), `_notifier` (the guard's task that derives and delivers, with retries). The guard
starts it with `run_notifier`; it does nothing without `guard.notify.targets`.
"""

from __future__ import annotations

from guard_mcp._notify._notifier import Notifier, Step, open_notifier, run_notifier

__all__ = ["Notifier", "Step", "open_notifier", "run_notifier"]
