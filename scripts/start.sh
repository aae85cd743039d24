#!/usr/bin/env bash
# Starts tingji (API + one worker) on the embedded SQLite default, setting up first.
# Extra arguments go to `tingji run` (e.g. --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/tingji run "$@"
