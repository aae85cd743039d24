#!/usr/bin/env bash
# What needs no torch (the queue on both backends, the API, the command line, settings,
# migrations, metrics) on the other Pythons tingji supports: 3.12 and 3.13.  Each gets
# its own virtual environment (.venv-3.12, ...) with tingji and its test tools, not the
# worker's packages (torch for those Pythons would be gigabytes of downloads here).
#   scripts/test-pythons.sh [pytest args]     TINGJI_OTHER_PYTHONS="3.12 3.13" by default
# With TINGJI_TEST_PG_URL unset, each Python uses its own PostgreSQL database
# (test_py312, ...), so these runs may go on beside the main suite's.
set -euo pipefail
cd "$(dirname "$0")/.."
find_python() {  # python3.12 on PATH, else pyenv's
  local v=$1 exe
  for exe in "$(command -v "python$v" 2>/dev/null)" "$HOME"/.pyenv/versions/"$v".*/bin/"python$v"; do
    [[ -n $exe && -x $exe ]] && "$exe" -c "" 2>/dev/null && { echo "$exe"; return; }
  done
  PYENV_VERSION=$(ls -d "$HOME"/.pyenv/versions/"$v".* 2>/dev/null | tail -1 | xargs -r basename) \
    pyenv which "python$v" 2>/dev/null || true
}
FILES=(tests/test_queue.py tests/unit/test_settings.py tests/test_migrations.py
       tests/unit/test_api.py tests/test_api_server.py tests/test_feed.py tests/test_cli.py
       tests/test_ops.py tests/test_metrics.py tests/unit/test_structure.py)
status=0
for v in ${TINGJI_OTHER_PYTHONS:-3.12 3.13}; do
  py=$(find_python "$v")
  if [[ -z $py ]]; then
    echo "test-pythons: Python $v not found; skipped" >&2
    continue
  fi
  venv=".venv-$v"
  [[ -x $venv/bin/python ]] || "$py" -m venv "$venv"
  sig="$(cat pyproject.toml | sha1sum | cut -c1-16)"
  if ! grep -qx -- "$sig" "$venv/.tingji-installed" 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]"
    echo "$sig" > "$venv/.tingji-installed"
  fi
  pg=${TINGJI_TEST_PG_URL:-}
  if [[ -z $pg ]]; then
    db="test_py${v/./}"
    psql -h 127.0.0.1 -U postgres -qtAc "SELECT 1 FROM pg_database WHERE datname = '$db'" \
      | grep -q 1 || createdb -h 127.0.0.1 -U postgres "$db"
    pg="postgresql://postgres@127.0.0.1:5432/$db"
  fi
  echo "== Python $v ($("$venv/bin/python" -V 2>&1)): ${FILES[*]}"
  TINGJI_TEST_PG_URL=$pg "$venv/bin/python" -m pytest -p no:cacheprovider "${FILES[@]}" "$@" \
    || status=1
done
exit $status
