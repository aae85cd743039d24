"""The command line for people and overnight batches: submit, batch, list, show, watch,
cancel, retry, result.  Every command talks to a running service over HTTP
(``TINGJI_URL``, ``TINGJI_API_TOKEN``), so a batch lives in the durable queue and
survives reboots."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from tingji.client import TERMINAL, Client, ClientError, Task
from tingji.formats import FORMATS, safe_filename
from tingji.hotwords import check_hotwords, read_hotwords_file, split_hotwords
from tingji.urls import looks_like_url, parse_parts, url_problem

# Piped output keeps whole lines (rich would wrap at 80 columns).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True,
              width=None if sys.stderr.isatty() else 200)


class UsageError(Exception):
    """Bad input from the user: nothing was submitted."""


def classify(source: str) -> tuple[str, str | Path]:
    """('url', url) or ('file', path); UsageError says why neither."""
    if looks_like_url(source):
        why = url_problem(source)
        if why:
            raise UsageError(why)
        return "url", source
    path = Path(source).expanduser()
    if path.is_file():
        if path.stat().st_size == 0:
            raise UsageError(f"{source}: the file is empty")
        return "file", path
    if path.exists():
        raise UsageError(f"{source}: not a regular file")
    raise UsageError(f"{source}: not an http(s) URL and no such file")


def options(args: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {"summarize": bool(args.summarize), "priority": args.priority}
    if args.no_polish:
        opts["polish"] = False
    if getattr(args, "callback_url", None):
        opts["callback_url"] = args.callback_url
    if getattr(args, "speakers", None):
        opts["speakers"] = args.speakers if args.speakers == "auto" else \
            int(args.speakers) if args.speakers.isdigit() else args.speakers
    words = split_hotwords(getattr(args, "hotwords", None) or "")
    if getattr(args, "hotwords_file", None):
        try:
            words += read_hotwords_file(Path(args.hotwords_file))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"--hotwords-file: {exc}") from None
    if words:
        try:
            opts["hotwords"] = check_hotwords(words)
        except ValueError as exc:
            raise UsageError(f"--hotwords: {exc}") from None
    return opts


def url_options(args: Any) -> dict[str, Any]:
    """What only URL sources take: parts of a multi-part video, and list expansion."""
    opts: dict[str, Any] = {}
    if getattr(args, "parts", None):
        try:
            opts["parts"] = parse_parts(args.parts)
        except ValueError as exc:
            raise UsageError(f"--parts: {exc}") from None
    if getattr(args, "expand", None) is not None:
        opts["expand"] = args.expand
    return opts


def source_key(kind: str, src: str | Path, opts: dict[str, Any]) -> str:
    """A stable idempotency key for one source with these options: the URL, or the
    file's contents (hashed in 1 MiB blocks), so the same command again names the same
    tasks; a moved or renamed file is still the same source."""
    h = hashlib.sha256(json.dumps([kind, opts], sort_keys=True).encode())
    if kind == "url":
        h.update(str(src).encode())
    else:
        with open(src, "rb") as fh:
            while block := fh.read(2**20):
                h.update(block)
    return f"cli-{kind}-{h.hexdigest()[:40]}"


def _submitted(got: dict[str, Any], src: str | Path) -> None:
    """One line per source: the task id, and whether it was already there."""
    if got.get("kind") == "list" and got.get("created", True):
        out.print(f"{got['task_id']}  {src}  (a list: its entries become batch "
                  f"{got['batch_id']})")
    elif got.get("created", True):
        out.print(f"{got['task_id']}  {src}")
    else:
        out.print(f"{got['task_id']}  {src}  (already submitted: {got['status']})")


def short(task_id: str) -> str:
    return task_id[:8]


def _source(t: dict[str, Any]) -> str:
    return str(t.get("title") or t.get("source") or "")


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone().strftime("%m-%d %H:%M")


def _duration(t: dict[str, Any]) -> str:
    return _clock((t.get("result") or {}).get("duration_s"))


def _clock(secs: float | None) -> str:
    if secs is None:
        return ""
    m, s = divmod(int(round(secs)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _progress_text(t: dict[str, Any]) -> str:
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


def cmd_parts(client: Client, args: Any) -> int:
    doc = client.parts(args.url)
    kind = "a list: submitting it makes one task per video" if doc["is_list"] else \
        "one video: submitting it transcribes these parts (choose with --parts)"
    out.print(f"{doc['title']}  ({doc['count']} entries; {kind})")
    for part in doc["parts"]:
        out.print(f"{part['number']:>4}  {_clock(part['duration_s']):>8}  {part['title']}")
    return 0


def cmd_submit(client: Client, args: Any) -> int:
    try:
        sources = [classify(s) for s in args.sources]
        only_urls = url_options(args)
        if only_urls and any(kind != "url" for kind, _ in sources):
            raise UsageError("--parts and --expand apply to URLs, not files")
        opts = options(args)
    except UsageError as exc:
        err.print(f"tingji submit: {exc}; nothing submitted")
        return 2
    ids: list[str] = []
    labels: dict[str, str] = {}
    for kind, src in sources:
        o = {**opts, **only_urls} if kind == "url" else opts
        o = o if args.no_dedupe else {**o, "idempotency_key": source_key(kind, src, o)}
        got = client.submit_url(str(src), **o) if kind == "url" else \
            client.submit_file(Path(src), **o)
        ids.append(got["task_id"])
        labels[got["task_id"]] = str(src)
        _submitted(got, src)
    sys.stdout.flush()
    return wait_for(client, ids, labels) if args.wait else 0


def parse_batch_file(path: Path) -> list[tuple[int, str, str | Path]]:
    """[(line number, kind, source)]; UsageError lists every bad line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    entries, problems = [], []
    seen: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            kind, src = classify(line)
        except UsageError as exc:
            problems.append(f"line {n}: {exc}")
            continue
        key = str(Path(src).resolve()) if kind == "file" else str(src)
        if key in seen:
            problems.append(f"line {n}: duplicate of line {seen[key]}")
            continue
        seen[key] = n
        entries.append((n, kind, src))
    if problems:
        raise UsageError("\n".join(problems))
    if not entries:
        raise UsageError(f"{path} lists no URLs or files")
    return entries


def cmd_batch(client: Client, args: Any) -> int:
    try:
        entries = parse_batch_file(Path(args.file))
        opts = options(args)
    except UsageError as exc:
        err.print(f"tingji batch: {args.file}:\n{exc}\nnothing submitted")
        return 2
    if not args.no_dedupe:
        return _batch_deduped(client, args, entries, opts)
    urls = [str(src) for _, kind, src in entries if kind == "url"]
    ids: list[str] = []
    labels: dict[str, str] = {}
    batch_id = None
    if urls:
        got = client.submit_batch(urls, **opts)
        batch_id = got["batch_id"]
        ids += got["task_ids"]
        labels.update(zip(got["task_ids"], urls, strict=True))
    import uuid
    batch_id = batch_id or str(uuid.uuid4())
    for n, kind, src in entries:
        if kind == "file":
            try:
                got = client.submit_file(Path(src), batch_id=batch_id, **opts)
            except ClientError as exc:
                err.print(f"line {n}: {src}: {exc} (the other {len(ids)} task(s) are queued "
                          f"in batch {batch_id})")
                out.print(batch_id)
                return 1
            ids.append(got["task_id"])
            labels[got["task_id"]] = str(src)
    out.print(batch_id)
    err.print(f"{len(ids)} task(s) queued in batch {batch_id}; follow them with "
              f"`tingji watch --batch {short(batch_id)}`")
    sys.stdout.flush()
    return wait_for(client, ids, labels) if args.wait else 0


def _batch_deduped(client: Client, args: Any, entries: list[tuple[int, str, str | Path]],
                   opts: dict[str, Any]) -> int:
    """Each line its own stable key, the batch a stable id (from the file's path and the
    options): running the same file again, after a crash or a reboot, submits only the
    lines that are missing and reports the others' status."""
    import uuid

    batch_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "tingji-batch:" + json.dumps(
        [str(Path(args.file).resolve()), opts], sort_keys=True)))
    ids: list[str] = []
    labels: dict[str, str] = {}
    already = 0
    for n, kind, src in entries:
        o = {**opts, "idempotency_key": source_key(kind, src, opts)}
        try:
            got = client.submit_url(str(src), batch_id=batch_id, **o) if kind == "url" else \
                client.submit_file(Path(src), batch_id=batch_id, **o)
        except ClientError as exc:
            err.print(f"line {n}: {src}: {exc} (the other {len(ids)} task(s) are in batch "
                      f"{batch_id}; run the same command again to retry the rest)")
            out.print(batch_id)
            return 1
        ids.append(got["task_id"])
        labels[got["task_id"]] = str(src)
        if not got.get("created", True):
            already += 1
            err.print(f"line {n}: {src}: already submitted ({got['status']}, "
                      f"{short(got['task_id'])})")
    out.print(batch_id)
    err.print(f"{len(ids) - already} task(s) queued, {already} already submitted, in batch "
              f"{batch_id}; follow them with `tingji watch --batch {short(batch_id)}`")
    sys.stdout.flush()
    return wait_for(client, ids, labels) if args.wait else 0


# ---------------------------------------------------------------- list / show / watch
def _table(tasks: Iterable[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("id", "status", "stage", "progress", "source / title", "created", "duration"):
        table.add_column(col, no_wrap=col != "source / title", overflow="fold")
    for t in tasks:
        pct = f"{t['progress'] * 100:.0f}%" if t["status"] == "processing" else ""
        table.add_row(short(t["task_id"]), t["status"], t.get("stage") or "", pct,
                      _source(t), _when(t["created_at"]), _duration(t))
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
    out.print(_table(page["tasks"]))
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
            ("stage", f"{task.get('stage') or ''} {_progress_text(task)}".strip()),
            ("source", task.get("source") or ""), ("title", task.get("title") or ""),
            ("kind", task["kind"]), ("priority", str(task["priority"])),
            ("attempts", f"{task['attempts']} of {task['max_attempts']}"),
            ("batch", task.get("batch_id") or ""), ("created", task["created_at"]),
            ("started", task.get("started_at") or ""),
            ("completed", task.get("completed_at") or "")]
    if task.get("error"):
        rows.append(("error", f"{task['error']['type']}: {task['error']['message']}"))
    result = task.get("result") or {}
    if result:
        rows += [("duration", _duration(task)), ("segments", str(result.get("segments"))),
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
    out.print(info)
    history = Table(box=None, pad_edge=False, title="history", title_justify="left")
    for col in ("at", "event", "from", "to", "worker", "detail"):
        history.add_column(col, overflow="fold")
    for e in events:
        detail = e.get("detail") or {}
        history.add_row(e["at"][:23].replace("T", " "), e["event"], e.get("from_status") or "",
                        e.get("to_status") or "", (e.get("worker_id") or "")[:8],
                        json.dumps(detail, ensure_ascii=False) if detail else "")
    out.print(history)
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
    resp = client.download(tid, fmt)  # type: ignore[arg-type]
    if args.output:
        target = Path(args.output)
        if target.is_dir():
            target = target / _filename(resp.headers.get("content-disposition", ""), tid, fmt)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(resp.content)
        tmp.replace(target)
        err.print(f"wrote {target}")
    else:
        if fmt is None:
            raise ClientError("a zip goes to a file: add -o PATH.zip")
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
