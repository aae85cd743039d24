#!/usr/bin/env bash
# Regenerates requirements.lock (the service: core + worker) and requirements-test.lock
# (+ test tools and the onnx extra) from pyproject.toml, with hashes, for Python 3.11 on
# Linux.  torch is left out of both (scripts/setup.sh installs 2.13.0 first; users bring their CUDA build)
# but resolved as 2.13.0, so its CPU dependencies are the ones pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${TMPDIR:-/tmp}/tingji-piptools
[[ -x $tools/bin/pip-compile ]] || { python3.11 -m venv "$tools" && "$tools/bin/pip" install -q pip-tools; }
common=(--quiet --generate-hashes --strip-extras --unsafe-package torch
        --no-emit-index-url --no-emit-find-links --constraint scripts/lock-constraints.txt)
"$tools/bin/pip-compile" "${common[@]}" --extra worker -o requirements.lock pyproject.toml
"$tools/bin/pip-compile" "${common[@]}" --extra worker --extra test --extra onnx \
  --constraint requirements.lock -o requirements-test.lock pyproject.toml
