"""The grammar of a tool's `headline:` template, written once: checked when the config loads, read when
an approval is shown (`_approvals._prompt.headline` fills it in).

A template is the operator's sentence with the call's arguments in braces:
`Refund {amount|money} to customer {customer_id}`. `{name}` is the argument's value, `{name|money}` an
amount with the currency in the `currency` argument (`{name|money:code_arg}` names another), `{{` and
`}}` are braces. The operator writes the words; the values are the agent's and are escaped and
shortened where they are filled in.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["FILTERS", "MAX_TEMPLATE", "Field", "parse_template"]

MAX_TEMPLATE = 200
FILTERS = frozenset({"money"})
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Field:
    """One `{argument|filter:option}` of a template."""

    argument: str
    filter: str | None = None
    option: str | None = None


def _field(inner: str, template: str) -> Field:
    name, _, rest = inner.partition("|")
    filter_, _, option = rest.partition(":")
    if not _NAME.fullmatch(name.strip()):
        raise ValueError(
            f"`{{{inner}}}` in headline `{template}` does not name an argument; write it like `{{customer_id}}`"
        )
    if rest and filter_.strip() not in FILTERS:
        raise ValueError(
            f"`{filter_.strip()}` in headline `{template}` is not a filter; the filters are "
            f"{', '.join(f'`{f}`' for f in sorted(FILTERS))} (`{{amount|money}}`)"
        )
    if option and not _NAME.fullmatch(option.strip()):
        raise ValueError(
            f"`{option}` in headline `{template}` does not name the currency argument; write it like "
            "`{amount|money:currency}`"
        )
    return Field(name.strip(), filter_.strip() or None, option.strip() or None)


def parse_template(template: str) -> tuple[str | Field, ...]:
    """The template as literal text and fields, in order; ValueError (one line, what to write) if it is
    not one: too long, a control or invisible character, an unpaired brace, an unknown filter."""
    if not template.strip():
        raise ValueError("a headline cannot be empty; write it like `Refund {amount|money} to customer {customer_id}`")
    if len(template) > MAX_TEMPLATE:
        raise ValueError(f"a headline has at most {MAX_TEMPLATE} characters; this one has {len(template)}")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"} for ch in template):
        raise ValueError("a headline is one line of visible text: no control, invisible or line-break characters")
    parts: list[str | Field] = []
    at = 0
    for m in _TOKEN.finditer(template):
        if m.start() > at:
            parts.append(template[at : m.start()])
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif m.group(1) is None:
            raise ValueError(
                f"headline `{template}` has an unpaired `{token}`; write `{token * 2}` for the brace itself"
            )
        else:
            parts.append(_field(m.group(1), template))
        at = m.end()
    if at < len(template):
        parts.append(template[at:])
    return tuple(parts)
