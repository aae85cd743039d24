#!/usr/bin/env bash
# Starts tingji (API + one worker) on the embedded SQLite default, setting up first.
# --demo: on the small model trained here (tests/fixtures/trained), no model hub needed.
# Other arguments go to `tingji run` (e.g. --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
args=()
for a in "$@"; do
  if [[ $a == --demo ]]; then
    settings=$(.venv/bin/tingji models demo)  # fails (and so does this) without the model
    echo "$settings"
    while IFS= read -r line; do
      [[ $line == TINGJI_* ]] && export "${line?}"
    done <<< "$settings"
  else
    args+=("$a")
  fi
done
exec .venv/bin/tingji run "${args[@]}"
