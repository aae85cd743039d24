"""The ``tingji`` command.  Settings are read here, once, and passed down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tingji.formats import FORMATS
from tingji.settings import Settings, SettingsError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"tingji: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_db(args: argparse.Namespace) -> int:
    from db import migrate

    settings = _settings()
    if args.db_command == "upgrade":
        rev = migrate.upgrade(settings.database_url)
        print(f"database at revision {rev} (head {migrate.head_revision()})")
    elif args.db_command == "current":
        rev = migrate.current(settings.database_url)
        head = migrate.head_revision()
        state = "up to date" if rev == head else f"behind head {head}; run `tingji db upgrade`"
        print(f"{rev or 'empty (no revision)'}: {state}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete finished tasks older than N days, with their results, work files and
    uploads.  Talks to the database directly (like `tingji db`)."""
    import asyncio
    from datetime import timedelta

    from db.engine import make_engine
    from db.queue import Queue
    from tingji.taskfiles import TaskFiles

    settings = _settings()
    if args.older_than < 0:
        print("tingji prune: --older-than must be 0 or more days", file=sys.stderr)
        return 2

    async def run() -> list[tuple[str, dict]]:  # type: ignore[type-arg]
        engine = make_engine(settings.database_url,
                             sqlite_synchronous=settings.sqlite_synchronous)
        try:
            return await Queue.from_settings(engine, settings).prune(
                timedelta(days=args.older_than))
        finally:
            await engine.dispose()

    pruned = asyncio.run(run())
    for task_id, payload in pruned:
        TaskFiles.of(settings.data_dir, task_id, payload).remove(upload=True, results=True)
    print(f"pruned {len(pruned)} finished task(s) older than {args.older_than} day(s)")
    return 0


def _refuse_public_without_token(host: str, settings: Settings) -> bool:
    """A listener off loopback needs TINGJI_API_TOKEN; says so and returns True if not."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or settings.api_token:
        return False
    print(f"tingji: refusing to listen on {host} without TINGJI_API_TOKEN; "
          "set a token or bind 127.0.0.1", file=sys.stderr)
    return True


def _prepare(settings: Settings) -> None:
    """Directories and schema, before a service starts."""
    from db import migrate

    for d in (settings.data_dir, settings.uploads_dir, settings.results_dir, settings.work_dir):
        d.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.database_url)


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    settings = _settings()
    settings = dataclasses.replace(settings, host=args.host or settings.host,
                                   port=args.port or settings.port)
    if _refuse_public_without_token(settings.host, settings):
        return 2
    _prepare(settings)
    import uvicorn

    from server.app import create_app

    app = create_app(settings)
    print(f"tingji API on http://{settings.host}:{settings.port} "
          f"(database {settings.database_url.split('://')[0]}, data {settings.data_dir})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=5)
    return 0


def _logging() -> None:
    import logging

    # funasr logs chatty INFO lines on the root logger: keep those at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S")
    logging.getLogger("tingji").setLevel(logging.INFO)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    _prepare(settings)
    _logging()
    from worker.main import run_worker

    return run_worker(settings, preload=args.preload)


def cmd_run(args: argparse.Namespace) -> int:
    from tingji.supervise import supervise

    settings = _settings()
    host, port = args.host or settings.host, args.port or settings.port
    if _refuse_public_without_token(host, settings):
        return 2
    _prepare(settings)
    _logging()
    return supervise(host, port, preload=not args.no_preload)


def cmd_client(args: argparse.Namespace) -> int:
    from tingji.client import Client, ClientError
    from tingji.commands import COMMANDS

    settings = _settings()
    with Client(settings.url, settings.api_token) as client:
        try:
            return COMMANDS[args.command](client, args)
        except ClientError as exc:
            print(f"tingji {args.command}: {exc}", file=sys.stderr)
            return 1


def cmd_mcp(args: argparse.Namespace) -> int:
    from tingji.mcp_server import serve

    settings = _settings()
    return serve(settings.url, settings.api_token, http=args.http, host=args.host,
                 port=args.port)


def _task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--summarize", action="store_true", help="also write a summary (LLM)")
    p.add_argument("--no-polish", action="store_true",
                   help="keep the raw transcript (no LLM polish)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--wait", action="store_true",
                   help="show live progress; exit 0 only if every task completed")
    p.add_argument("--hotwords", metavar="WORDS",
                   help="names and terms to favour, separated by spaces or commas "
                        "(\"张三 听记\"); SeACo-Paraformer (paraformer-zh) only")
    p.add_argument("--hotwords-file", metavar="FILE",
                   help="hotwords from a file, one or more per line (# comments)")
    p.add_argument("--speakers", metavar="N|auto",
                   help="label who speaks: auto, or the number of speakers (2-16)")
    p.add_argument("--callback-url", metavar="URL",
                   help="a webhook for these tasks (POSTed when each finishes, signed with "
                        "TINGJI_WEBHOOK_SECRET)")
    p.add_argument("--no-dedupe", action="store_true",
                   help="submit new tasks even for sources already submitted with the same "
                        "options (by default each source gets a stable idempotency key, so "
                        "running the same command again submits only what is missing)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tingji", description="tingji (听记): restart-safe transcription of Chinese audio")
    sub = parser.add_subparsers(dest="command", required=True)

    p_db = sub.add_parser("db", help="database schema (Alembic)")
    db_sub = p_db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="bring the database to the latest schema")
    db_sub.add_parser("current", help="show the database's schema revision")
    p_db.set_defaults(func=cmd_db)

    p_prune = sub.add_parser("prune", help="delete finished tasks older than N days, "
                             "with their files")
    p_prune.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    p_prune.set_defaults(func=cmd_prune)

    p_serve = sub.add_parser("serve", help="run the HTTP API")
    p_serve.add_argument("--host", help="address to bind (default TINGJI_HOST, 127.0.0.1)")
    p_serve.add_argument("--port", type=int, help="port (default TINGJI_PORT, 8000)")
    p_serve.set_defaults(func=cmd_serve)

    p_worker = sub.add_parser("worker", help="run a worker (transcribes tasks)")
    p_worker.add_argument("--preload", action="store_true",
                          help="load the ASR model at start instead of at the first task")
    p_worker.set_defaults(func=cmd_worker)

    p_run = sub.add_parser("run", help="run the API and one worker (Ctrl-C stops both)")
    p_run.add_argument("--host", help="API address (default TINGJI_HOST, 127.0.0.1)")
    p_run.add_argument("--port", type=int, help="API port (default TINGJI_PORT, 8000)")
    p_run.add_argument("--no-preload", action="store_true",
                       help="load the model at the first task, not at start")
    p_run.set_defaults(func=cmd_run)

    # Commands that talk to a running service (TINGJI_URL, TINGJI_API_TOKEN).
    p = sub.add_parser("submit", help="submit URLs or local files")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="an http(s) URL or a file")
    _task_options(p)
    p.add_argument("--parts", metavar="SPEC",
                   help="parts of a multi-part video, e.g. 2-5,7 (default: all; see "
                        "`tingji parts URL`)")
    listing = p.add_mutually_exclusive_group()
    listing.add_argument("--expand", dest="expand", action="store_true", default=None,
                         help="the URL is a list (favourites, collection, playlist, feed): "
                              "one task per entry, as a batch (Bilibili and YouTube list "
                              "pages are recognised without it)")
    listing.add_argument("--no-expand", dest="expand", action="store_false",
                         help="read a list URL as one video (its entries as parts)")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("parts", help="list a video's parts, or a list's videos, without "
                                     "submitting")
    p.add_argument("url", metavar="URL")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("batch", help="submit every URL or file listed in FILE as one batch")
    p.add_argument("file", metavar="FILE",
                   help="one URL or path per line; blank lines and # comments are ignored")
    _task_options(p)
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("list", help="list tasks, newest first")
    p.add_argument("--status", choices=["pending", "processing", "completed", "failed",
                                        "cancelled"])
    p.add_argument("--batch", metavar="ID", help="only this batch (full or short id)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("show", help="one task in full, with its history")
    p.add_argument("id", metavar="ID", help="task id (or its first 8 characters)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("watch", help="follow running and pending tasks until all finish")
    p.add_argument("--batch", metavar="ID", help="only this batch (full or short id)")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("cancel", help="cancel tasks")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("retry", help="run failed or cancelled tasks again")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("mcp", help="an MCP server for agents (stdio; --http for streamable "
                                   "HTTP), talking to the running service")
    p.add_argument("--http", action="store_true",
                   help="serve streamable HTTP on HOST:PORT/mcp instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="with --http (loopback only)")
    p.add_argument("--port", type=int, default=8765, help="with --http (default 8765)")
    p.set_defaults(func=cmd_mcp)

    p = sub.add_parser("result", help="print or save a completed task's result")
    p.add_argument("id", metavar="ID")
    p.add_argument("--format", choices=list(FORMATS),
                   help="default: txt, or what -o's suffix says (.zip: all of them)")
    p.add_argument("-o", "--output", metavar="PATH", help="write to PATH (a file or folder)")
    p.set_defaults(func=cmd_client)
    return parser


def _unreachable(exc: BaseException) -> bool:
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, ConnectionError | OperationalError) or \
        type(exc).__module__.startswith("asyncpg")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tingji list | head`: the reader went away; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if _unreachable(exc):
            print(f"tingji: cannot reach the database: {str(exc).splitlines()[0]}",
                  file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
