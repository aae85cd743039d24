#!/usr/bin/env bash
# Runs the whole test suite (SQLite and the PostgreSQL at 127.0.0.1:5432, database
# `test`), setting up what it needs first.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest "$@"
