"""What a human sees when asked to approve, and how their answer is read back.

The message has to be understood in three seconds and must not lie: a plain-language headline, the
risk, the policy's reason, then every argument in full. Argument names and values come from the
agent, so they are hostile text: control, format and line-separator characters are escaped and
strings are quoted, so a value cannot end early, fake a line of the prompt, or reorder text with
bidirectional overrides. Only the headline shortens values; the argument list never does.

The headline is the tool's own template when its action schema has one (`headline:` in
upstreams.yaml, the operator's words with the call's values filled in), else one built from the
action's name and the arguments that usually say what a call acts on.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from guard_mcp._approvals._record import Approval
from guard_mcp._errors import ApprovalError
from guard_mcp._escape import code_of as _code
from guard_mcp._escape import escape_text, show_codes
from guard_mcp._escape import is_unsafe as _unsafe
from guard_mcp._headline import Field, parse_template
from guard_mcp._models import ActionBundle

__all__ = [
    "MAX_FORM_REASON",
    "approval_message",
    "countdown",
    "elicitation_schema",
    "escape_text",
    "headline",
    "parse_elicitation",
    "show_codes",
]

MAX_FORM_REASON = 500
_HEADLINE_VALUE = 48
_HEADLINE = 200  # the longest headline: a template filled with the longest values stays one line
_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "INR": "₹", "KRW": "₩", "ILS": "₪", "NGN": "₦"}
_ZERO_DECIMALS = {"JPY", "KRW", "ISK", "CLP", "VND"}
# Verbs after which the action's noun reads as the verb itself: `refund.create` -> "Refund".
_NOUN_IS_VERB = {"create", "issue", "make", "new", "run", "execute", "perform", "do", "submit", "apply"}
_KEY_HINTS = ("id", "path", "file", "to", "recipient", "email", "url", "name", "channel", "repo", "branch", "query")
_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


def _json(value: Any) -> str:
    """One-line JSON whose strings are quoted and escaped: the value's boundaries are unambiguous."""
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "), allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps(repr(value), ensure_ascii=False)
    # json.dumps already escaped C0 controls, quotes and backslashes; the rest of the unsafe set is
    # escaped here. Backslashes are left alone, being JSON's own escapes.
    return "".join(_code(ch) if _unsafe(ch) else ch for ch in text)


def _short(value: Any) -> str:
    """A value for the headline: escaped, and past 48 characters its beginning and its end around an
    ellipsis (a path's file name and an id's last characters are what tell two apart)."""
    text = escape_text(value if isinstance(value, str) else _json(value))
    if len(text) <= _HEADLINE_VALUE:
        return text
    head = (_HEADLINE_VALUE - 1) // 2
    return text[:head] + "…" + text[len(text) - (_HEADLINE_VALUE - 1 - head) :]


def _words(identifier: str) -> str:
    return escape_text(identifier.replace("_", " ").replace("-", " ").strip()) or "action"


def _money(arguments: dict[str, Any], amount_key: str = "amount", currency_key: str = "currency") -> str | None:
    amount = arguments.get(amount_key)
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount):
        return None
    currency = arguments.get(currency_key)
    code = currency.upper() if isinstance(currency, str) and re.fullmatch(r"[A-Za-z]{3}", currency) else None
    digits = 0 if code in _ZERO_DECIMALS else 2
    number = f"{amount:,.{digits}f}"
    if code is None:
        return number
    symbol = _SYMBOLS.get(code)
    if symbol is None:
        return f"{number} {code}"
    return f"-{symbol}{number[1:]}" if number.startswith("-") else f"{symbol}{number}"


def _label(key: str) -> str:
    base = key[:-3] if key.endswith("_id") and len(key) > 3 else key
    return _words(base)


def _resource_key(bundle: ActionBundle) -> str | None:
    resource = bundle.resource
    if resource is None:
        return None
    if resource in bundle.arguments:
        return resource
    # The bundle may carry the extracted value rather than the argument's name.
    for key, value in bundle.arguments.items():
        if isinstance(value, str) and value == resource:
            return key
    return None


# Arguments that name who receives what the call sends: "Send email to ada@example.com".
_RECIPIENT_KEYS = {"to", "recipient", "recipients", "email", "address"}
# Arguments whose value says what it is by itself: "Write fs /srv/notes.md".
_SELF_EVIDENT_KEYS = {"path", "file", "filename", "file_path", "url", "uri"}


def _value(value: Any) -> str:
    return '""' if value == "" else _short(value)


def _filled(template: str, arguments: dict[str, Any]) -> str | None:
    """The template with the call's values in it, or None when it cannot be filled honestly (an argument
    it names is absent, or the template is not one: a row edited in the database)."""
    try:
        parts = parse_template(template)
    except ValueError:
        return None
    out: list[str] = []
    for part in parts:
        if not isinstance(part, Field):
            out.append(escape_text(part))
            continue
        if part.argument not in arguments:
            return None
        shown = _money(arguments, part.argument, part.option or "currency") if part.filter == "money" else None
        out.append(shown if shown is not None else _value(arguments[part.argument]))
    text = "".join(out)
    return text if len(text) <= _HEADLINE else text[: _HEADLINE - 1] + "…"


def headline(bundle: ActionBundle) -> str:
    """One line a human can take in at a glance: "Refund €350.00 to customer cus_456", from the tool's
    template when it has one that this call's arguments fill."""
    if bundle.headline is not None:
        filled = _filled(bundle.headline, bundle.arguments)
        if filled is not None:
            return filled
    parts = bundle.action.split(".")
    noun = _words(parts[0])
    verb = parts[-1].lower() if len(parts) > 1 else ""
    phrase = noun.capitalize() if not verb or verb in _NOUN_IS_VERB else f"{_words(verb).capitalize()} {noun}"
    pieces = [phrase]
    money = _money(bundle.arguments)
    if money is not None:
        pieces.append(money)
    key = _resource_key(bundle)
    if key is not None:
        value = _value(bundle.arguments[key])
        label = _label(key)
        if key.lower() in _RECIPIENT_KEYS:
            pieces.append(f"to {value}")
        elif key.lower() in _SELF_EVIDENT_KEYS or (label == noun and not money):
            pieces.append(value)
        else:
            pieces.append(f"{'to' if money else 'for'} {label} {value}")
    else:
        hints = [
            k
            for k in sorted(bundle.arguments)
            if k not in {"amount", "currency"} and (k in _KEY_HINTS or k.endswith("_id"))
        ][:2]
        if hints:
            pieces.append("(" + ", ".join(f"{_label(k)} {_short(bundle.arguments[k])}" for k in hints) + ")")
    return " ".join(pieces)


def _key(name: str) -> str:
    return name if _SIMPLE_KEY.fullmatch(name) else _json(name)


def approval_message(approval: Approval) -> str:
    """The full prompt: headline, risk, policy rule and reason, every argument in full, how to decide."""
    bundle = approval.bundle
    risk = bundle.risk
    lines = [headline(bundle)]
    if risk is None:
        lines.append("Risk: unknown")
    else:
        lines.append(f"Risk: {risk.tier.value} ({risk.score}/100)")
    rule = f" rule `{escape_text(approval.rule_id)}`" if approval.rule_id else " (tier default)"
    lines.append(
        f"Policy: {escape_text(approval.policy)}{rule}: {escape_text(approval.policy_reason or 'approval required')}"
    )
    lines.append(
        f"Tool: {escape_text(approval.tool)} ({escape_text(approval.action)}) requested by "
        f"{escape_text(approval.principal)}"
    )
    lines.append(f"Arguments ({len(bundle.arguments)}):")
    lines.extend(f"  {_key(k)}: {_json(bundle.arguments[k])}" for k in sorted(bundle.arguments))
    deadline = datetime.fromtimestamp(approval.deadline, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines.append(f"Approval {approval.id} for group `{escape_text(approval.group)}`, expires {deadline}")
    if approval.step_up:
        lines.append(
            "Step-up required: a named approver must approve out of band with "
            f"`guard-mcp approvals approve {approval.id} --as NAME --code CODE`"
        )
    return "\n".join(lines)


def elicitation_schema() -> dict[str, Any]:
    """The flat form: a required approve/deny choice (no default: silence never approves) and a reason."""
    return {
        "type": "object",
        "properties": {
            "decision": {
                "type": "string",
                "title": "Decision",
                "description": "Approve or deny this exact call",
                "enum": ["approve", "deny"],
            },
            "reason": {
                "type": "string",
                "title": "Reason",
                "description": "Optional, recorded in the audit log",
                "maxLength": MAX_FORM_REASON,
            },
        },
        "required": ["decision"],
    }


def parse_elicitation(action: str, content: dict[str, Any] | None) -> tuple[bool | None, str | None]:
    """Read a form answer: (True, reason) approve, (False, reason) deny, (None, None) dismissed.

    `decline` is a denial; `cancel` decides nothing. Anything else, an unknown field, a missing or
    unknown decision, or a reason that is not a short string raises ApprovalError (which denies).
    """
    if action == "decline":
        return False, None
    if action == "cancel":
        return None, None
    if action != "accept":
        raise ApprovalError(f"elicitation action `{_short(action)}` is not accept, decline or cancel; denied")
    if not isinstance(content, dict):
        raise ApprovalError("an accepted approval form carried no content; denied")
    extra = set(content) - {"decision", "reason"}
    if extra:
        raise ApprovalError(f"approval form has unexpected field `{_short(sorted(map(str, extra))[0])}`; denied")
    decision = content.get("decision")
    if decision not in ("approve", "deny"):
        raise ApprovalError(f"approval form decision `{_short(decision)}` is not `approve` or `deny`; denied")
    reason = content.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_FORM_REASON):
        raise ApprovalError(f"approval form reason must be text of at most {MAX_FORM_REASON} characters; denied")
    return decision == "approve", (reason or None)


def countdown(seconds: float) -> str:
    """Time left, as the queue shows it (CLI and console): `1h 05m`, `4m 09s`, `12s`, `overdue`."""
    if seconds <= 0:
        return "overdue"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"
