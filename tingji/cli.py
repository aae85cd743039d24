"""The ``tingji`` command.  Settings are read here, once, and passed down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tingji", description="tingji (听记): restart-safe transcription of Chinese audio")
    sub = parser.add_subparsers(dest="command", required=True)

    p_db = sub.add_parser("db", help="database schema (Alembic)")
    db_sub = p_db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="bring the database to the latest schema")
    db_sub.add_parser("current", help="show the database's schema revision")
    p_db.set_defaults(func=cmd_db)
    return parser


def _unreachable(exc: BaseException) -> bool:
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OSError | OperationalError) or type(exc).__module__.startswith(
        "asyncpg")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if _unreachable(exc):
            print(f"tingji: cannot reach the database: {str(exc).splitlines()[0]}",
                  file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
