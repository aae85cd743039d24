#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment with tingji and its
# worker dependencies (torch 2.13.0 first, from the local wheel where there is one).
#   scripts/setup.sh          service dependencies
#   scripts/setup.sh --test   plus test tools, Debian's espeak-ng/ffmpeg for test media and
#                             Chromium for the web page's browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

PY=${TINGJI_PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.tingji-installed"
extras="worker"
lock="requirements.lock"
if [[ $want_test == 1 ]]; then extras="worker,test,onnx"; lock="requirements-test.lock"; fi
pyver=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
signature() { echo "$(cat pyproject.toml "$2" | sha1sum | cut -c1-16)-$1-$pyver"; }
sig=$(signature "$extras" "$lock")
# the test install holds the service's packages too (its lock is constrained by the
# service's): scripts/start.sh after scripts/test.sh installs nothing
test_sig=$(signature "worker,test,onnx" requirements-test.lock)
if [[ ! -f $stamp ]] || ! grep -qx -e "$sig" -e "$test_sig" "$stamp" 2>/dev/null; then
  echo "setup: installing tingji and its packages into .venv (a few minutes, once)" >&2
  pip=(.venv/bin/pip install -q --disable-pip-version-check)
  if [[ $pyver == 3.11 ]]; then
    # torch before the rest: a bare `torch` requirement would pull a multi-GB CUDA build.
    "${pip[@]}" "torch==2.13.0"
    # exactly the locked versions (with their hashes), so installs a month apart agree
    "${pip[@]}" --no-deps --require-hashes -r "$lock"
    "${pip[@]}" --no-deps -e .
    .venv/bin/pip check --disable-pip-version-check >/dev/null
  else
    # the locks are resolved for Python 3.11: elsewhere, pyproject.toml's ranges
    echo "setup: Python $pyver: $lock is for 3.11; resolving pyproject.toml's ranges" >&2
    "${pip[@]}" -e ".[$extras]"
  fi
  echo "$sig" > "$stamp"
fi

missing=()
# PDF notes: WeasyPrint lays them out with Pango, in a font with Chinese glyphs
ldconfig -p 2>/dev/null | grep -q libpangoft2-1.0 || missing+=(libpango-1.0-0 libpangoft2-1.0-0)
fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk" || missing+=(fonts-wqy-zenhei)
if [[ $want_test == 1 ]]; then
  command -v espeak-ng >/dev/null || missing+=(espeak-ng)
  command -v ffmpeg >/dev/null || missing+=(ffmpeg)
  command -v ffprobe >/dev/null || missing+=(ffmpeg)
  # the web page's browser tests (driven by Playwright, no browser download)
  [[ -x /usr/bin/chromium ]] || missing+=(chromium chromium-driver)
  # the PDF test reads the text back and renders the first page
  command -v pdftotext >/dev/null || missing+=(poppler-utils)
fi
if (( ${#missing[@]} )); then
  if [[ $(id -u) == 0 ]]; then
    (apt-get install -y -q "${missing[@]}" || { apt-get update -q && apt-get install -y -q "${missing[@]}"; }) >/dev/null
  else
    echo "setup: please install ${missing[*]} (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
