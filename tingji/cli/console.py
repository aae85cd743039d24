"""What the client commands print, and how they wait: the consoles (piped output keeps
whole lines), short ids, times and progress, and the live wait of ``submit --wait``."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from tingji.client import Client, Task

# Piped output keeps whole lines (rich would wrap at 80 columns).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True,
              width=None if sys.stderr.isatty() else 200)


def show_table(table: Any) -> None:
    """A rich table; piped, without the padding that fills each line to the width
    (200 columns when the output is not a terminal)."""
    if out.is_terminal:
        out.print(table)
        return
    with out.capture() as captured:
        out.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


class UsageError(Exception):
    """Bad input from the user: nothing was submitted."""


def short(task_id: str) -> str:
    return task_id[:8]


def source_label(t: dict[str, Any]) -> str:
    return str(t.get("title") or t.get("source") or "")


def when(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone().strftime("%m-%d %H:%M")


def duration(t: dict[str, Any]) -> str:
    return clock((t.get("result") or {}).get("duration_s"))


def clock(secs: float | None) -> str:
    if secs is None:
        return ""
    m, s = divmod(int(round(secs)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_text(t: dict[str, Any]) -> str:
    if t["status"] == "processing":
        return f"{t.get('stage') or 'starting'} {t['progress'] * 100:3.0f}%"
    return ""


# ---------------------------------------------------------------- submit / batch
def wait_for(client: Client, ids: list[str], labels: dict[str, str]) -> int:
    """Live progress bars until every task has finished; 0 only if all completed."""
    with Progress(TextColumn("{task.fields[sid]}"), TextColumn("{task.description:<22}"),
                  BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[label]}"), console=err,
                  transient=False) as bars:
        rows: dict[str, TaskID] = {
            tid: bars.add_task("pending", total=1.0, sid=short(tid), label=labels.get(tid, ""))
            for tid in ids}

        def show(t: Task) -> None:
            done = t["status"] == "completed"
            desc = t["status"] if t["status"] != "processing" else t.get("stage") or "starting"
            bars.update(rows[t["task_id"]], description=desc,
                        completed=1.0 if done else t["progress"])

        final = client.wait_all(ids, on_progress=show)
    failed = [t for t in final if t["status"] != "completed"]
    for t in failed:
        why = (t.get("error") or {}).get("message") or t.get("message") or t["status"]
        err.print(f"{t['task_id']} {t['status']}: {why}")
    return 0 if not failed else 1
