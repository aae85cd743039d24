"""The ``tingji`` commands that run here, on this machine's settings: the service (``run``,
``serve``, ``worker``), the database (``db``, ``prune``), ``doctor``, ``models``,
``service`` and ``mcp``.  Settings are read here, once, and passed down; the commands
that talk to a running service over HTTP are ``tingji.cli.commands``."""

from __future__ import annotations

import argparse
import sys

from tingji.settings import Settings, SettingsError


def _settings(*, uses_data: bool = True) -> Settings:
    """The settings, read once; ``uses_data``: the command reads or writes the data
    folder here (the client commands talk to a service instead)."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"tingji: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if uses_data:
        _tell_about_old_data(settings)
    return settings


def _tell_about_old_data(settings: Settings) -> None:
    """tingji once kept its data in ``./data`` of whatever folder it ran from.  If such
    a database is here and no setting chooses a place, say once (per old folder) where
    the data lives now and how to keep the old place."""
    import os
    from pathlib import Path

    if os.environ.get("TINGJI_DATA_DIR") or os.environ.get("TINGJI_DATABASE_URL"):
        return
    old = Path("data").resolve()
    if old == settings.data_dir or not (old / "tingji.db").is_file():
        return
    marker = settings.data_dir / ".old-data-noticed"
    try:
        told = set(marker.read_text(encoding="utf-8").splitlines())
    except OSError:
        told = set()
    if str(old) in told:
        return
    print(f"tingji: the data now lives in {settings.data_dir}, wherever tingji is run from; "
          f"{old / 'tingji.db'} is not used. To keep using that folder, set "
          f"TINGJI_DATA_DIR={old} (or move its contents to {settings.data_dir}).",
          file=sys.stderr)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text("".join(f"{p}\n" for p in sorted(told | {str(old)})),
                          encoding="utf-8")
    except OSError:
        pass


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
    from tingji.settings import is_loopback

    if is_loopback(host) or settings.api_token:
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
    import logging

    import uvicorn

    from server.app import create_app

    _logging(settings)
    app = create_app(settings)
    logging.getLogger("tingji.server").info(
        "tingji API on http://%s:%s (database %s, data %s)", settings.host, settings.port,
        settings.database_url.split("://")[0], settings.data_dir)
    # log_config=None: uvicorn's own lines go through tingji's handler (and format)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                log_config=None, access_log=False, timeout_graceful_shutdown=5)
    return 0


def _logging(settings: Settings) -> None:
    from tingji.logs import configure

    configure(settings.log_format)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    _prepare(settings)
    _logging(settings)
    from worker.main import run_worker

    return run_worker(settings, preload=args.preload)


def cmd_run(args: argparse.Namespace) -> int:
    from tingji.supervise import supervise

    settings = _settings()
    host, port = args.host or settings.host, args.port or settings.port
    if _refuse_public_without_token(host, settings):
        return 2
    _prepare(settings)
    _logging(settings)
    return supervise(host, port, preload=not args.no_preload)


def cmd_client(args: argparse.Namespace) -> int:
    from tingji.cli.commands import COMMANDS
    from tingji.client import Client, ClientError

    settings = _settings(uses_data=False)  # the service has its own data folder
    with Client(settings.url, settings.api_token) as client:
        try:
            return COMMANDS[args.command](client, args)
        except ClientError as exc:
            print(f"tingji {args.command}: {exc}", file=sys.stderr)
            return 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from tingji.cli.doctor import doctor

    return doctor(_settings())


def cmd_models(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    if args.models_command == "demo":
        return demo()
    settings = _settings()
    if args.models_command == "export-onnx":
        try:
            from worker.engines.onnx.export import export_models
        except ImportError as exc:  # the worker's packages are not installed here
            print(f"exporting needs the worker's packages ({exc.name}): "
                  "pip install 'tingji[worker,onnx]'", file=sys.stderr)
            return 1
        from tingji.cli.doctor import model_roles
        from worker.engines.onnx.graphs import GRAPH_ROLES

        roles = [r for r in model_roles(settings) if r[0] in GRAPH_ROLES]
        return export_models(roles, settings.data_dir, quantize=args.quantize,
                             force=args.force, threads=os.cpu_count() or 1)

    from tingji.cli.doctor import download_models

    return download_models(settings, Path(args.to).expanduser() if args.to else None)


DEMO_SETTINGS = ("TINGJI_VAD_MODEL=", "TINGJI_PUNC_MODEL=", "TINGJI_SPK_MODEL=")


def demo() -> int:
    """``tingji models demo``: the settings that point the service at the model trained
    here (``bench/train_fixture.py``), which needs no hub; it has no VAD, punctuation or
    speaker model of its own, so those are off."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "trained"
    if not (root / "asr" / "model.pt").is_file():
        print(f"tingji: no demo model at {root}: it comes with a checkout of tingji's "
              "repository (tests/fixtures/trained), not with the package", file=sys.stderr)
        return 1
    about = json.loads((root / "demo.json").read_text(encoding="utf-8"))
    print(f"# a {about['parameters'] / 1e6:.1f} M-parameter SeACo-Paraformer trained here on "
          f"synthetic Mandarin ({about['characters']} characters, espeak-ng's voice): it "
          "transcribes that, not real speech")
    for line in (f"TINGJI_ASR_MODEL={root / 'asr'}", *DEMO_SETTINGS):
        print(line)
    print(f"# try: tingji submit {root / about['file']} --wait")
    print(f"# it says: {about['text']}")
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    from tingji.cli import service

    if args.service_command == "install":
        return service.install(_settings(), user=args.user, dry_run=args.dry_run)
    if args.service_command == "uninstall":
        return service.uninstall(user=args.user)
    return service.status(user=args.user)


def cmd_mcp(args: argparse.Namespace) -> int:
    from tingji.cli.mcp_server import serve

    settings = _settings()
    return serve(settings.url, settings.api_token, http=args.http, host=args.host,
                 port=args.port, mcp_token=settings.mcp_token,
                 file_roots=settings.mcp_file_roots)
