"""The command line for people and overnight batches: submit, batch, list, show, watch,
cancel, retry, result.  Every command talks to a running service over HTTP
(``TINGJI_URL``, ``TINGJI_API_TOKEN``), so a batch lives in the durable queue and
survives reboots.  Submitting is ``tingji.cli.submit``; what they print,
``tingji.cli.console``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from rich.live import Live
from rich.table import Table

from tingji.cli.console import (
    duration,
    err,
    out,
    progress_text,
    short,
    show_table,
    source_label,
    when,
)
from tingji.cli.submit import cmd_batch, cmd_parts, cmd_submit
from tingji.client import TERMINAL, Client, ClientError
from tingji.formats import FORMATS, safe_filename


def _table(tasks: Iterable[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("id", "status", "stage", "progress", "source / title", "created", "duration"):
        table.add_column(col, no_wrap=col != "source / title", overflow="fold")
    for t in tasks:
        pct = f"{t['progress'] * 100:.0f}%" if t["status"] == "processing" else ""
        table.add_row(short(t["task_id"]), t["status"], t.get("stage") or "", pct,
                      source_label(t), when(t["created_at"]), duration(t))
    return table


def _resolve_batch(client: Client, batch: str | None) -> str | None:
    if not batch:
        return None
    if len(batch) >= 36:
        return batch
    # a short batch id: look it up among recent tasks
    for t in client.all_tasks():
        if t.get("batch_id") and t["batch_id"].startswith(batch.lower()):
            return str(t["batch_id"])
    raise ClientError(f"no batch id starts with {batch!r}")


def cmd_list(client: Client, args: Any) -> int:
    page = client.tasks(status=args.status, batch_id=_resolve_batch(client, args.batch),
                        limit=args.limit)
    if args.json:
        print(json.dumps(page, ensure_ascii=False, indent=2))
        return 0
    show_table(_table(page["tasks"]))
    if page["total"] > len(page["tasks"]):
        out.print(f"({len(page['tasks'])} of {page['total']}; --limit for more)")
    return 0


def cmd_show(client: Client, args: Any) -> int:
    tid = client.resolve(args.id)
    task, events = client.task(tid), client.events(tid)
    if args.json:
        print(json.dumps({"task": task, "events": events}, ensure_ascii=False, indent=2))
        return 0
    rows = [("id", task["task_id"]), ("status", task["status"]),
            ("stage", f"{task.get('stage') or ''} {progress_text(task)}".strip()),
            ("source", task.get("source") or ""), ("title", task.get("title") or ""),
            ("kind", task["kind"]), ("priority", str(task["priority"])),
            ("attempts", f"{task['attempts']} of {task['max_attempts']}"),
            ("batch", task.get("batch_id") or ""), ("created", task["created_at"]),
            ("started", task.get("started_at") or ""),
            ("completed", task.get("completed_at") or "")]
    if task.get("error"):
        e = task["error"]
        code = f" [{e['code']}]" if e.get("code") else ""
        rows.append(("error", f"{e['type']}{code}: {e['message']}"))
    if task.get("next_attempt_at"):
        rows.append(("next try", str(task["next_attempt_at"])))
    result = task.get("result") or {}
    if result:
        rows += [("duration", duration(task)), ("segments", str(result.get("segments"))),
                 ("stage seconds", ", ".join(f"{k} {v:.1f}" for k, v in
                                             (result.get("stage_seconds") or {}).items())),
                 ("text", (result.get("polished_text") or result.get("text") or "")[:200])]
        if result.get("summary"):
            rows.append(("summary", result["summary"][:300]))
    info = Table(box=None, show_header=False, pad_edge=False)
    info.add_column(style="bold")
    info.add_column(overflow="fold")
    for k, v in rows:
        info.add_row(k, v)
    show_table(info)
    history = Table(box=None, pad_edge=False, title="history", title_justify="left")
    for col in ("at", "event", "from", "to", "worker", "detail"):
        history.add_column(col, overflow="fold")
    for e in events:
        detail = e.get("detail") or {}
        history.add_row(e["at"][:23].replace("T", " "), e["event"], e.get("from_status") or "",
                        e.get("to_status") or "", (e.get("worker_id") or "")[:8],
                        json.dumps(detail, ensure_ascii=False) if detail else "")
    show_table(history)
    return 0


def cmd_watch(client: Client, args: Any) -> int:
    """Follows the API's live feed (one stream, no polling per task); reconnects from
    the last event id when the stream breaks."""
    batch_id = _resolve_batch(client, args.batch)

    def snapshot() -> dict[str, dict[str, Any]]:
        tasks = client.all_tasks(batch_id=batch_id) if batch_id else [
            t for s in ("processing", "pending") for t in client.all_tasks(status=s)]
        return {t["task_id"]: t for t in tasks}

    def render(live: Live, tasks: dict[str, dict[str, Any]]) -> bool:
        active = [t for t in tasks.values() if t["status"] not in TERMINAL]
        table = _table(list(tasks.values()) if batch_id else active)
        table.caption = f"{len(active)} running or waiting, {len(tasks) - len(active)} " \
                        "finished (Ctrl-C stops watching; the tasks keep running)"
        live.update(table, refresh=True)
        return bool(active)

    tasks: dict[str, dict[str, Any]] = {}
    since: int | None = None
    try:
        with Live(console=out, auto_refresh=False) as live:
            while True:
                try:
                    stream = client.follow(since)
                    _, _, hello = next(stream)  # subscribed: now the snapshot is safe
                    if since is None:
                        err.print("following the live feed (Ctrl-C stops watching; the "
                                  "tasks keep running)")
                    since = hello["last_event_id"] if since is None else since
                    tasks = snapshot()
                    if not render(live, tasks):
                        break
                    for kind, eid, data in stream:
                        if kind == "task":
                            since = eid
                            t = data["task"]
                            if batch_id is None or t.get("batch_id") == batch_id:
                                tasks[t["task_id"]] = t
                        elif kind == "progress" and data["task_id"] in tasks:
                            tasks[data["task_id"]].update(
                                stage=data["stage"], progress=data["progress"],
                                message=data["message"], status="processing")
                        if not render(live, tasks):
                            break
                    else:
                        continue  # the stream ended: reconnect
                    break
                except (ClientError, httpx.HTTPError, StopIteration) as exc:
                    if isinstance(exc, ClientError) and (since is None
                                                         or exc.status is not None):
                        raise  # never connected, or refused: say so
                    if since is None:
                        raise ClientError(f"the event stream failed: {exc!r}") from None
                    time.sleep(1.0)  # the service restarts: reconnect from `since`
    except KeyboardInterrupt:
        err.print("stopped watching; the tasks keep running")
        return 130
    failed = [t for t in tasks.values() if t["status"] == "failed"]
    for t in failed:
        err.print(f"{t['task_id']} failed: {(t.get('error') or {}).get('message', '')}")
    return 1 if failed else 0


# ---------------------------------------------------------------- cancel / retry / result
def _each(client: Client, ids: list[str], action: Callable[[str], dict[str, Any]]) -> int:
    code = 0
    for raw in ids:
        try:
            tid = client.resolve(raw)
            got = action(tid)
            out.print(f"{got['task_id']}  {got['status']}")
        except ClientError as exc:
            err.print(f"{raw}: {exc}")
            code = 1
    return code


def cmd_cancel(client: Client, args: Any) -> int:
    return _each(client, args.ids, client.cancel)


def cmd_retry(client: Client, args: Any) -> int:
    return _each(client, args.ids, client.retry)


def cmd_result(client: Client, args: Any) -> int:
    tid = client.resolve(args.id)
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lstrip(".").lower() if args.output else ""
        fmt = None if suffix == "zip" else (suffix if suffix in FORMATS else "txt")
    lang = getattr(args, "lang", None)
    if lang is not None and fmt not in ("srt", "vtt"):
        raise ClientError("--lang goes with --format srt or vtt (or -o NAME.srt)")
    resp = client.download(tid, fmt, lang)  # type: ignore[arg-type]
    if args.output:
        target = Path(args.output)
        if target.is_dir():
            target = target / _filename(resp.headers.get("content-disposition", ""), tid, fmt)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(resp.content)
        tmp.replace(target)
        err.print(f"wrote {target}")
    else:
        if fmt in (None, "pdf", "mp4"):
            raise ClientError(f"a {fmt or 'zip'} goes to a file: add -o PATH.{fmt or 'zip'}")
        sys.stdout.write(resp.text)
        sys.stdout.flush()
    return 0


def _filename(disposition: str, tid: str, fmt: str | None) -> str:
    """The server's suggested file name, reduced to a plain name inside the target
    folder: the server is not trusted to choose where a file goes."""
    from urllib.parse import unquote

    ext = fmt or "zip"
    fallback = f"tingji-{short(tid)}"
    name = ""
    if "filename*=UTF-8''" in disposition:
        name = unquote(disposition.split("filename*=UTF-8''", 1)[1].split(";")[0])
    stem = name[: -len(ext) - 1] if name.lower().endswith(f".{ext}") else name
    return f"{safe_filename(stem, fallback)}.{ext}"


COMMANDS: dict[str, Callable[[Client, Any], int]] = {
    "submit": cmd_submit, "batch": cmd_batch, "parts": cmd_parts, "list": cmd_list,
    "show": cmd_show, "watch": cmd_watch, "cancel": cmd_cancel, "retry": cmd_retry,
    "result": cmd_result,
}
