"""What of an upstream's tool result the guard relays to its client.

The result passes through unchanged (the client checks `structuredContent` against the output
schema it listed), with two exceptions: no `_meta` key in the guard's namespace survives, on the
result or on any content block in it, so an upstream cannot speak in the guard's name (a forged
`dev.guard-mcp/decision`); and a result over `guard.max_result_bytes` is not relayed at all.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types

from guard_mcp._catalog import META_PREFIX

__all__ = ["result_size", "without_guard_meta"]


def result_size(result: types.CallToolResult, limit: int) -> int:
    """About how many bytes `result` is as JSON (its strings as UTF-8, its keys and numbers); counting
    stops once past `limit`, so a huge result is not walked (or copied) whole."""
    total = 0
    stack: list[Any] = [result.model_dump(mode="python", by_alias=True, exclude_none=True)]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) if item.isascii() else len(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, dict):
            for key, value in item.items():
                total += len(str(key)) + 4  # quotes, colon, comma
                stack.append(value)
        elif isinstance(item, list | tuple):
            total += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, bytes | bytearray):
            total += len(item)
        else:  # numbers, booleans, null
            total += len(str(item))
    return total


def _clear(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if not meta or not any(k.startswith(META_PREFIX) for k in meta):
        return meta
    return {k: v for k, v in meta.items() if not k.startswith(META_PREFIX)}


def without_guard_meta(result: types.CallToolResult) -> types.CallToolResult:
    """`result` without a `_meta` key of the guard's namespace, at the top or on any content block
    (and an embedded resource's contents)."""
    content: list[types.ContentBlock] = []
    changed = False
    for block in result.content:
        update: dict[str, Any] = {}
        meta = _clear(block.meta)
        if meta is not block.meta:
            update["meta"] = meta
        if isinstance(block, types.EmbeddedResource):
            inner = _clear(block.resource.meta)
            if inner is not block.resource.meta:
                update["resource"] = block.resource.model_copy(update={"meta": inner})
        if update:
            changed = True
            block = block.model_copy(update=update)
        content.append(block)
    top = _clear(result.meta)
    if not changed and top is result.meta:
        return result
    return result.model_copy(update={"meta": top, "content": content})
