"""docs/config.md: the reference of every upstreams.yaml key, generated from the config models.

    python -m guard_mcp.cli._configdoc docs/config.md     # rewrite the reference
    python -m guard_mcp.cli._configdoc                    # print it

Keys, types and defaults come from the pydantic models in guard_mcp/_config.py, so the reference
cannot drift from what the loader accepts (a test compares the file with a fresh rendering). A
key's description is its field's `description`, else the comment on or just above its line in
_config.py, else the short text below.
"""

from __future__ import annotations

import ast
import inspect
import io
import sys
import textwrap
import tokenize
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from guard_mcp._config import GuardConfig, parse_duration, read_secret

__all__ = ["REGENERATE", "render"]

REGENERATE = "python -m guard_mcp.cli._configdoc docs/config.md"

# For fields without a `description`: these win over the comment in _config.py (which is written for
# someone reading the code), and stand in where there is none.
_DESCRIBED = {
    "_UpstreamBase.timeout": "How long one call may take, and the upstream to start.",
    "ApprovalsConfig.wait": "How long a call waits in-line for a decision before it answers `pending_approval`. "
    "The default stays under the request timeouts clients enforce whatever progress says (60s in the TypeScript "
    "SDK; a widely used CLI client drops a request at about 180s), so the pending answer, with its link and "
    "command, reaches the client before it gives up; keep it under your client's own.",
    "AuditConfig.synchronous": "`full`: every commit is fsynced and survives a power loss; `normal`: survives a "
    "crash of the guard but may lose the newest events to a power loss.",
    "GuardConfig.guard": "What the guard itself does: environment, principal, policy, approvals, audit, permits, HTTP.",
    "GuardConfig.upstreams": "The servers the guard wraps, by name (1-24 letters, digits or `-`). `mcpServers` is "
    "accepted in its place, so a client's block pastes in unchanged.",
    "GuardSection.environment": "Permits carry it; an upstream refuses permits of another environment.",
    "GuardSection.principal": "Who the calls are attributed to in permits, approvals and the audit log.",
    "GuardSection.policy": "The signed policy bundle (relative to this file). Without one the built-in tier "
    "defaults apply: LOW allow, MEDIUM approve, HIGH approve with step-up.",
    "GuardSection.trusted_policy_keys": "Public keys (PEM) whose signatures on the policy bundle are accepted.",
    "GuardSection.approvals": "How calls that need a human wait and expire.",
    "GuardSection.audit": "The hash-chained audit log.",
    "GuardSection.permits": "The ES256 permits upstreams verify.",
    "GuardSection.http": "`guard-mcp serve --transport http`.",
    "GuardSection.max_argument_bytes": "The largest tool-call arguments accepted, in bytes of JSON; larger calls "
    "are refused before any decision.",
    "ApprovalsConfig.escalate_after": "Hand a pending approval to `escalate_to` after this long.",
    "ApprovalsConfig.escalate_to": "The approver group an approval escalates to.",
    "PermitsConfig.issuer": "The permits' `iss`; an upstream's verifier expects it.",
    "HttpServeConfig.host": "The address to bind. Off loopback, `token` is required.",
    "HttpServeConfig.port": "The port to bind (0 picks a free one).",
    "StdioUpstream.command": "The program to start (stdio).",
    "StdioUpstream.args": "Its arguments.",
    "StdioUpstream.env": "Environment variables for the upstream process only; `${VAR}` takes them from the guard's.",
    "StdioUpstream.cwd": "Its working directory.",
    "HttpUpstream.url": "The upstream's streamable HTTP endpoint (`http://` or `https://`).",
    "HttpUpstream.headers": "Headers sent with every request (an `Authorization: Bearer ${TOKEN}`).",
    "_UpstreamBase.tools": "Action schemas by the upstream's own tool name. A tool without one is `unknown`, "
    "which is never LOW risk.",
    "_UpstreamBase.disabled": "Keep the entry but do not start the upstream.",
    "ToolConfig.action": "The action's name, dotted lower-case words (`refund.create`); permits are bound to it. "
    "Default: `upstream.tool`.",
    "ActionTraits.category": "What the call does; the largest part of its risk score.",
    "ActionTraits.reversibility": "Whether what it does can be undone.",
    "ActionTraits.blast_radius": "How much one call reaches.",
    "ActionTraits.sensitivity": "How private the data it touches is.",
    "ActionTraits.resource": "The argument that names what the call acts on (`customer_id`, `path`).",
    "ActionTraits.constraints": "JSON Schema per argument, added to the tool's own input schema "
    "(`amount: {maximum: 10000}`); a call outside it is refused `schema_violation`.",
    "ActionTraits.redact": "Arguments of this tool stored in the audit log only as a keyed digest.",
    "ToolConfig.limits": "Limits across calls (see `limits`).",
    "ActionTraits.headline": "How an approval of this tool reads, in your words, wherever it is shown: "
    "`Refund {amount|money} to customer {customer_id}`. `{argument}` is the argument's value (escaped, at most 48 "
    "characters), `{amount|money}` an amount in the `currency` argument's currency (`{amount|money:code}` names "
    "another), `{{` and `}}` are braces. A call without an argument it names gets the generic headline.",
    "LimitConfig.window": "The rolling window the limit counts over.",
    "LimitConfig.calls": "At most this many permitted calls in the window.",
    "LimitConfig.sum": "The numeric argument whose values add up (with `max`).",
    "LimitConfig.max": "The most `sum`'s values may add up to in the window.",
    "LimitConfig.per": "`actor`: each principal counts alone; `all`: everyone together.",
}


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line, else the comment lines just above it, in `cls`'s source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        trailing = [by_line[n] for n in range(node.lineno, end + 1) if n in by_line]
        if trailing:
            found[node.target.id] = " ".join(trailing)
            continue
        above: list[str] = []
        n = node.lineno - 1
        while n in by_line and lines[n - 1].lstrip().startswith("#"):
            above.insert(0, by_line[n])
            n -= 1
        if above:
            found[node.target.id] = " ".join(above)
    return found


def _owner(model: type[BaseModel], name: str) -> type:
    for cls in model.__mro__:
        if name in getattr(cls, "__annotations__", {}):
            return cls
    return model


def _describe(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    if field.description:
        return field.description
    owner = _owner(model, name)
    text = _DESCRIBED.get(f"{owner.__name__}.{name}") or _comments(owner).get(name, "")
    if not text:
        return ""
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", ")", "`")) else text + "."


def _is_duration(metadata: list[Any]) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in metadata)


def _type(annotation: Any, metadata: list[Any] | None = None) -> str:
    metadata = list(metadata or [])
    while get_origin(annotation) is Annotated:
        metadata.extend(get_args(annotation)[1:])
        annotation = get_args(annotation)[0]
    if _is_duration(metadata):
        return "duration"
    if any(isinstance(m, BeforeValidator) and m.func is read_secret for m in metadata):
        return "secret"
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        members = [m for m in get_args(annotation) if m is not type(None)]
        shown = " or ".join(dict.fromkeys(_type(m) for m in members))
        return shown + (" or null" if len(members) < len(get_args(annotation)) else "")
    if origin is Literal:
        return " or ".join(f"`{v}`" for v in get_args(annotation))
    if origin is list or (origin is tuple and get_args(annotation)[1:] == (...,)):
        return f"list of {_type(get_args(annotation)[0])}"
    if origin is dict:
        return f"mapping of {_type(get_args(annotation)[1])}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " or ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    bounds = [f"≥ {m.ge}" for m in metadata if getattr(m, "ge", None) is not None]
    bounds += [f"≤ {m.le}" for m in metadata if getattr(m, "le", None) is not None]
    base = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(annotation, "any")
    return base + (f" ({', '.join(bounds)})" if bounds else "")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, float) and _is_duration(field.metadata):
        return f"`{_duration(value)}`"
    if isinstance(value, list | tuple | dict) and not value:
        return "`{}`" if isinstance(value, dict) else "`[]`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel], str]]:
    """(path suffix, model, note) for the models reachable through one field's type."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        out: list[tuple[str, type[BaseModel], str]] = []
        for member in get_args(annotation):
            out.extend(_models_in(member))
        return out
    if origin is dict:
        return [(".NAME" + s, m, n) for s, m, n in _models_in(get_args(annotation)[1])]
    if origin is list:
        return [("[]" + s, m, n) for s, m, n in _models_in(get_args(annotation)[0])]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation, "")]
    return []


_SECTION_NOTES = {
    "StdioUpstream": "An upstream started as a process, spoken to over stdio (it has `command`).",
    "HttpUpstream": "An upstream reached over streamable HTTP (it has `url`).",
    "ToolConfig": "The action schema of one upstream tool, under its upstream's `tools:` by the upstream's own "
    "tool name.",
    "LimitConfig": "One limit across a tool's permitted calls, in its `limits:` list.",
    "MetricsConfig": "`GET /metrics` in Prometheus text format, on the HTTP transport and on the console's own "
    "listener (docs/operations.md lists the metrics). Traces have no key here: the standard `OTEL_*` environment "
    "variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_TRACES_EXPORTER`, `OTEL_SERVICE_NAME`, ...) turn OpenTelemetry "
    "export on; with none set, tracing is off.",
}
_SECTION_KIND = {"StdioUpstream": " (stdio)", "HttpUpstream": " (HTTP)"}


def render() -> str:
    out = [
        "# upstreams.yaml reference\n",
        f"Generated from `guard_mcp/_config.py` by `{REGENERATE}`; do not edit by hand.\n",
        "Loading is strict: an unknown key, a value of the wrong type or an unset `${VAR}` is an error that "
        "names the line, and nothing starts. A *duration* is written `250ms`, `90s`, `5m`, `2h` or `1d` "
        "(a bare number is seconds). `${VAR}` takes a value from the guard's environment, `${VAR:-default}` "
        "with a default; `${PYTHON}` is the interpreter running the guard. The file must be the guard's user's "
        "(or root's) and writable by no one else: whoever can change it runs commands as that user.\n",
        "A *secret* (a client secret, an HTTP token, a header or environment value, the store's URL, a "
        "notification target's URL or secret) is "
        "better not written into the file: it takes `{file: PATH}` (the file's one line; PATH relative to "
        "this file, which must give group and others no access: `chmod 600`), `{env: NAME}` or `{keyring: "
        "SERVICE/NAME}` (the OS keyring, as stored with `keyring set SERVICE NAME`), with `prefix:` put in "
        'front (`Authorization: {file: tracker.token, prefix: "Bearer "}`). A secret written out under a '
        "name that says it is one (`Authorization`, `*_TOKEN`, `*_KEY`, `client_secret`), or a URL with a "
        "password in it, loads with a warning, which `guard-mcp check` and `serve` print. A value read is never shown in an error, a log "
        "line or the audit.\n",
    ]
    seen: set[type[BaseModel]] = set()
    queue: list[tuple[str, type[BaseModel]]] = [("", GuardConfig)]
    while queue:
        path, model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        title = (f"`{path}`" if path else "The top level") + _SECTION_KIND.get(model.__name__, "")
        out.append(f"## {title}\n")
        if model.__name__ in _SECTION_NOTES:
            out.append(_SECTION_NOTES[model.__name__] + "\n")
        out.append("| key | type | default | description |\n| --- | --- | --- | --- |")
        nested: list[tuple[str, type[BaseModel]]] = []
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            out.append(
                f"| `{name}` | {_cell(_type(field.annotation, field.metadata))} | {_cell(_default(field))} | "
                f"{_cell(_describe(model, name, field))} |"
            )
            for suffix, sub, _ in _models_in(field.annotation):
                nested.append((f"{path + '.' if path else ''}{name}{suffix}", sub))
        out.append("")
        queue[:0] = nested  # depth first: a section's parts follow it
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if not argv:
        sys.stdout.write(text)
        return 0
    Path(argv[0]).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
