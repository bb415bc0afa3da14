"""Run `guard-mcp` counting the audit writer's commits, for benchmarks that report fsyncs per call.

    python bench/_counted.py OUT.json serve --transport http ...

With `synchronous: full` in WAL mode each commit that writes rows is one fsync of the WAL (WAL
checkpoints, every 100 commits, add theirs). At exit, and on each SIGUSR1, OUT.json holds {"commits": N,
"rows": M, "snap": K} (commits that wrote at least one row, the rows they wrote, K-th snapshot).
"""

from __future__ import annotations

import atexit
import json
import signal
import sys
from pathlib import Path
from typing import Any

from guard_mcp._audit import _writer

counts = {"commits": 0, "rows": 0, "snap": 0}
_commit_once = _writer.Writer._commit_once


def _counting(self: _writer.Writer, batch: list[_writer.Request], *, wait: bool) -> bool:
    done = _commit_once(self, batch, wait=wait)
    written = sum(len(r.seqs) for r in batch)
    if done and written:
        counts["commits"] += 1
        counts["rows"] += written
    return done


def main(argv: list[str]) -> Any:
    out = Path(argv[0])
    _writer.Writer._commit_once = _counting  # type: ignore[method-assign]

    def snap(*_: Any) -> None:
        counts["snap"] += 1
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts))
        tmp.replace(out)

    signal.signal(signal.SIGUSR1, snap)
    atexit.register(snap)
    from guard_mcp.cli import main as cli

    sys.argv = ["guard-mcp", *argv[1:]]
    return cli()


if __name__ == "__main__":
    main(sys.argv[1:])
