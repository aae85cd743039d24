#!/usr/bin/env bash
# bench/gpu.py on the lent GPU machine (Python 3.12, torch+CUDA already there, no network).
#
#   bash bench/gpu_device.sh prepare   # here: wheels funasr needs there + speech, in .whl/
#   bash bench/gpu_device.sh run       # there: the device tool's command, carry [".whl"]
#
# `prepare` downloads CPython 3.12 manylinux wheels of what the GPU machine lacks (the list
# of ../shared/notes/gpu-funasr.md, plus SQLAlchemy for worker.asr's imports), at the
# versions of this checkout's .venv, and speaks the source speech with espeak-ng (the GPU
# machine has none).  `run` installs them under /tmp/site and runs the benchmark; its
# figures land in $OUT/gpu.json and $OUT/log.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  mkdir -p .whl
  names="funasr antlr4-python3-runtime audioread cffi decorator hydra-core jaconv jamo
         kaldi-native-fbank kaldiio librosa omegaconf platformdirs pooch pycparser rapidfuzz
         soundfile soxr tensorboardX torch-complex websockets SQLAlchemy greenlet lazy-loader
         msgpack"
  freeze=$(.venv/bin/pip freeze 2>/dev/null)
  specs=()
  for n in $names; do
    v=$(grep -i "^${n//-/[-_]}==" <<<"$freeze" | head -1 | cut -d= -f3)
    specs+=("$n${v:+==$v}")
  done
  rm -f .whl/*.whl
  plat=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  for spec in "${specs[@]}"; do
    # a pure-Python sdist (antlr4-python3-runtime 4.9.3 has no wheel): build its wheel here
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d .whl \
      "$spec" 2>/dev/null || .venv/bin/python -m pip wheel -q --no-deps -w .whl "$spec"
  done
  .venv/bin/python - <<'EOF'
import sys
sys.path.insert(0, ".")
from pathlib import Path
import soundfile as sf
from tests.helpers import media as m
wav = m.speech_wav(Path(".whl/speech.wav"), m.SENTENCES * 2, pause_s=1.5)
audio, sr = sf.read(wav, dtype="float32")
sf.write(".whl/speech.flac", audio, sr)
wav.unlink()
EOF
  du -sh .whl
  ;;
run)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  out=${OUT:-/tmp}
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  python3 bench/gpu.py --source .whl/speech.flac --models /tmp/tingji-bench \
    --repeat 3 --json "$out/gpu.json" "${@:2}" 2>&1 | grep -v "INFO\|WARNING\|Warn" | tee "$out/log"
  ;;
*)
  echo "usage: $0 prepare|run [bench/gpu.py options]" >&2
  exit 2
  ;;
esac
