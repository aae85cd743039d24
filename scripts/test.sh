#!/usr/bin/env bash
# Runs the whole test suite (SQLite and the PostgreSQL at 127.0.0.1:5432, database
# `test`), setting up what it needs first.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check --quiet .
# two processes, each taking whole test files (module fixtures are built once), each with
# its own PostgreSQL database (tests/conftest.py); "-n 0" in the arguments runs one
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
