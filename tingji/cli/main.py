"""The ``tingji`` command: its arguments, and which function runs each subcommand
(``tingji.cli.local`` for what runs here, ``tingji.cli.commands`` for what talks to a
running service)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from tingji.cli.local import (
    cmd_client,
    cmd_db,
    cmd_doctor,
    cmd_mcp,
    cmd_models,
    cmd_prune,
    cmd_run,
    cmd_serve,
    cmd_service,
    cmd_worker,
)
from tingji.formats import FORMATS


def _task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--summarize", action="store_true", help="also write a summary (LLM)")
    p.add_argument("--chapters", action="store_true",
                   help="chapters with titles and one-line summaries, each starting on a "
                        "sentence (LLM)")
    p.add_argument("--mindmap", action="store_true", help="a mind map of the content (LLM)")
    p.add_argument("--burn-subtitles", action="store_true",
                   help="also a video with the subtitles burned in (download format mp4)")
    p.add_argument("--subtitles-first", action="store_true",
                   help="URLs: a video's own Chinese subtitles become the transcript (no ASR) "
                        "where it has them")
    p.add_argument("--translate", metavar="LANG",
                   help="translate sentence by sentence into LANG (en, ja, ...): translated "
                        "and bilingual subtitles (LLM)")
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


EXAMPLES = """\
examples:
  tingji run                                    the API and one worker (the service)
  tingji submit lecture.mp3 https://www.bilibili.com/video/BV1xx411c7mD --wait
  tingji batch urls.txt --summarize             one URL or file per line, one batch
  tingji watch                                  live progress of what is running
  tingji result 3f2a9c1e -o lecture.srt         a transcript as subtitles
  tingji result 3f2a9c1e --format srt --lang bilingual   Chinese and the translation
  tingji doctor                                 check the installation, with fixes

environment (all settings: the README's Settings table):
  TINGJI_DATA_DIR    where the database, uploads and results live
                     (default: the user data folder, %(data)s)
  TINGJI_URL         where the commands that talk to the service find it
                     (default http://127.0.0.1:8000)
  TINGJI_API_TOKEN   the bearer token the API requires, and the commands send
"""

# The environment each command reads, shown under its --help.
SERVICE_ENV = ("TINGJI_DATA_DIR, TINGJI_DATABASE_URL, TINGJI_HOST, TINGJI_PORT, "
               "TINGJI_API_TOKEN, TINGJI_ASR_MODEL, TINGJI_DEVICE, TINGJI_LLM_BASE_URL, "
               "TINGJI_LLM_MODEL, TINGJI_LOG_FORMAT and the rest of the README's Settings")
CLIENT_ENV = "TINGJI_URL (default http://127.0.0.1:8000), TINGJI_API_TOKEN"
DB_ENV = "TINGJI_DATA_DIR, TINGJI_DATABASE_URL"


def _sub(sub: Any, name: str, help: str, env: str, examples: str = "") -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its examples and the variables it reads."""
    epilog = (f"examples:\n{examples}\n" if examples else "") + f"environment: {env}"
    return sub.add_parser(name, help=help, description=help, epilog=epilog,  # type: ignore
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from tingji import __version__
    from tingji.settings import default_data_dir

    parser = argparse.ArgumentParser(
        prog="tingji", description="tingji (听记): restart-safe transcription of Chinese audio",
        epilog=EXAMPLES % {"data": default_data_dir()},
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tingji {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_db = _sub(sub, "db", "database schema (Alembic)", DB_ENV,
                "  tingji db current\n  tingji db upgrade")
    db_sub = p_db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="bring the database to the latest schema")
    db_sub.add_parser("current", help="show the database's schema revision")
    p_db.set_defaults(func=cmd_db)

    p_prune = _sub(sub, "prune", "delete finished tasks older than N days, with their files",
                   DB_ENV, "  tingji prune --older-than 30")
    p_prune.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                         help="finished (completed, failed, cancelled) more than DAYS ago; "
                              "0.5 is twelve hours")
    p_prune.set_defaults(func=cmd_prune)

    p = _sub(sub, "doctor", "check the installation: one line per check, with the fix for "
             "each problem (exit code 1 if any)", SERVICE_ENV, "  tingji doctor")
    p.set_defaults(func=cmd_doctor)

    p = _sub(sub, "models", "the ASR, VAD, punctuation and speaker models", SERVICE_ENV,
             "  tingji models download --to /media/usb/tingji-models\n"
             "  tingji models export-onnx --quantize\n  tingji models demo")
    models_sub = p.add_subparsers(dest="models_command", required=True)
    dl = models_sub.add_parser("download", help="fetch the configured models once (to carry "
                               "to an offline machine) and print the settings that use them")
    dl.add_argument("--to", metavar="DIR", help="a folder per model in DIR (default: the "
                    "ModelScope cache)")
    ex = models_sub.add_parser(
        "export-onnx", help="export the ASR, VAD and punctuation models to ONNX once (into "
        "<data>/onnx/), each graph checked against torch with ONNX Runtime")
    ex.add_argument("--quantize", action="store_true",
                    help="also write int8 graphs (model_quant.onnx)")
    ex.add_argument("--force", action="store_true", help="export again even if done before")
    models_sub.add_parser(
        "demo", help="print the settings that run the small model trained here on "
        "synthetic Mandarin (a checkout's tests/fixtures/trained: no hub needed), and a "
        "clip it transcribes; scripts/start.sh --demo starts the service with them")
    p.set_defaults(func=cmd_models)

    p = _sub(sub, "service", "run `tingji run` as a systemd service that survives reboots",
             SERVICE_ENV + " (the ones set now go to the service's environment file)",
             "  tingji service install --user\n  sudo tingji service install\n"
             "  tingji service status --user")
    svc = p.add_subparsers(dest="service_command", required=True)
    for name, text in (("install", "write and enable the unit and its environment file"),
                       ("uninstall", "stop, disable and remove it (the data stays)"),
                       ("status", "systemctl status of the service")):
        sp = svc.add_parser(name, help=text)
        sp.add_argument("--user", action="store_true",
                        help="a user service (~/.config/systemd/user), not a system one")
        if name == "install":
            sp.add_argument("--dry-run", action="store_true",
                            help="print the unit and environment file instead")
    p.set_defaults(func=cmd_service)

    p_serve = _sub(sub, "serve", "run the HTTP API", SERVICE_ENV,
                   "  tingji serve --port 8000")
    p_serve.add_argument("--host", help="address to bind (default TINGJI_HOST, 127.0.0.1)")
    p_serve.add_argument("--port", type=int, help="port (default TINGJI_PORT, 8000)")
    p_serve.set_defaults(func=cmd_serve)

    p_worker = _sub(sub, "worker", "run a worker (transcribes tasks)", SERVICE_ENV,
                    "  TINGJI_DATABASE_URL=postgresql://user@dbhost/tingji tingji worker")
    p_worker.add_argument("--preload", action="store_true",
                          help="load the ASR model at start instead of at the first task")
    p_worker.set_defaults(func=cmd_worker)

    p_run = _sub(sub, "run", "run the API and one worker (Ctrl-C stops both)", SERVICE_ENV,
                 "  tingji run\n  TINGJI_API_TOKEN=... tingji run --host 0.0.0.0")
    p_run.add_argument("--host", help="API address (default TINGJI_HOST, 127.0.0.1)")
    p_run.add_argument("--port", type=int, help="API port (default TINGJI_PORT, 8000)")
    p_run.add_argument("--no-preload", action="store_true",
                       help="load the model at the first task, not at start")
    p_run.set_defaults(func=cmd_run)

    # Commands that talk to a running service (TINGJI_URL, TINGJI_API_TOKEN).
    p = _sub(sub, "submit", "submit URLs or local files", CLIENT_ENV,
             "  tingji submit talk.mp3 --wait\n"
             "  tingji submit 'https://www.bilibili.com/video/BV1xx411c7mD' --parts 2-5\n"
             "  tingji submit meeting.m4a --speakers auto --hotwords '张三 听记'")
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

    p = _sub(sub, "parts", "list a video's parts, or a list's videos, without submitting",
             CLIENT_ENV, "  tingji parts https://www.bilibili.com/video/BV1xx411c7mD")
    p.add_argument("url", metavar="URL")
    p.set_defaults(func=cmd_client)

    p = _sub(sub, "batch", "submit every URL or file listed in FILE as one batch", CLIENT_ENV,
             "  tingji batch urls.txt --summarize --wait")
    p.add_argument("file", metavar="FILE",
                   help="one URL or path per line; blank lines and # comments are ignored")
    _task_options(p)
    p.set_defaults(func=cmd_client)

    p = _sub(sub, "list", "list tasks, newest first", CLIENT_ENV,
             "  tingji list --status failed\n  tingji list --json | jq '.tasks[].task_id'")
    p.add_argument("--status", choices=["pending", "processing", "completed", "failed",
                                        "cancelled"])
    p.add_argument("--batch", metavar="ID", help="only this batch (full or short id)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_client)

    p = _sub(sub, "show", "one task in full, with its history", CLIENT_ENV,
             "  tingji show 3f2a9c1e")
    p.add_argument("id", metavar="ID", help="task id (or its first 8 characters)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_client)

    p = _sub(sub, "watch", "follow running and pending tasks until all finish", CLIENT_ENV,
             "  tingji watch --batch 5d1e")
    p.add_argument("--batch", metavar="ID", help="only this batch (full or short id)")
    p.set_defaults(func=cmd_client)

    p = _sub(sub, "cancel", "cancel tasks", CLIENT_ENV, "  tingji cancel 3f2a9c1e")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_client)

    p = _sub(sub, "retry", "run failed or cancelled tasks again", CLIENT_ENV,
             "  tingji retry 3f2a9c1e 77b0c2d4")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_client)

    p = _sub(sub, "mcp", "an MCP server for agents (stdio; --http for streamable HTTP), "
             "talking to the running service", CLIENT_ENV,
             "  tingji mcp\n  tingji mcp --http --port 8765")
    p.add_argument("--http", action="store_true",
                   help="serve streamable HTTP on HOST:PORT/mcp instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="with --http (loopback only)")
    p.add_argument("--port", type=int, default=8765, help="with --http (default 8765)")
    p.set_defaults(func=cmd_mcp)

    p = _sub(sub, "result", "print or save a completed task's result", CLIENT_ENV,
             "  tingji result 3f2a9c1e\n  tingji result 3f2a9c1e -o talk.srt\n"
             "  tingji result 3f2a9c1e --format chapters\n"
             "  tingji result 3f2a9c1e --format srt --lang en -o talk.en.srt\n"
             "  tingji result 3f2a9c1e -o all.zip")
    p.add_argument("id", metavar="ID")
    p.add_argument("--format", choices=list(FORMATS),
                   help="default: txt, or what -o's suffix says (.zip: all of them); "
                        "chapters: the list for a video's description; mindmap: Mermaid")
    p.add_argument("--lang", metavar="LANG|bilingual",
                   help="srt or vtt in the task's translation, or both languages a cue")
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
