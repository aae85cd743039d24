#!/usr/bin/env bash
# Runs the test suite (SQLite and the PostgreSQL at 127.0.0.1:5432, database `test`),
# setting up what it needs first.  Extra arguments go to pytest.
#   scripts/test.sh           everything, as CI runs it
#   scripts/test.sh --fast    the fast tier: tests/unit (in process, no database server)
#                             and the queue suite on SQLite; under two minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [[ ${1:-} == --fast ]]; then fast=1; shift; fi
scripts/setup.sh --test
.venv/bin/ruff check --quiet .
if (( fast )); then
  TINGJI_TEST_PG_URL=skip exec .venv/bin/python -m pytest -n 2 --dist loadfile \
    tests/unit tests/test_queue.py "$@"
fi
# two processes, each taking whole test files (module fixtures are built once), each with
# its own PostgreSQL database (tests/conftest.py); "-n 0" in the arguments runs one
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
