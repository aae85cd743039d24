"""Submitting work from the command line: ``submit`` (URLs and local files, which are
uploaded), ``batch`` (a file of them, resumable: what was submitted is not submitted
again) and ``parts``.  Each source gets a stable idempotency key, so running a command
again after a crash submits only what is missing."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from tingji.cli.console import UsageError, clock, err, out, short, wait_for
from tingji.client import Client, ClientError
from tingji.hotwords import check_hotwords, read_hotwords_file, split_hotwords
from tingji.languages import check_language
from tingji.urls import looks_like_url, parse_parts, url_problem


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
    for name in ("chapters", "mindmap", "subtitles_first", "burn_subtitles"):
        if getattr(args, name, False):
            opts[name] = True
    if getattr(args, "translate", None):
        try:
            opts["translate"] = check_language(args.translate)
        except ValueError as exc:
            raise UsageError(f"--translate: {exc}") from None
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


def cmd_parts(client: Client, args: Any) -> int:
    doc = client.parts(args.url)
    kind = "a list: submitting it makes one task per video" if doc["is_list"] else \
        "one video: submitting it transcribes these parts (choose with --parts)"
    out.print(f"{doc['title']}  ({doc['count']} entries; {kind})")
    for part in doc["parts"]:
        out.print(f"{part['number']:>4}  {clock(part['duration_s']):>8}  {part['title']}")
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
