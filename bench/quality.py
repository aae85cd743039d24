"""Quality figures on a trained model (``tests/fixtures/trained/asr`` once
``bench/train_fixture.py`` has built it there; ``--model`` for another) and its
held-out set (``bench/synth.py``: sentences, seeds, speaking rates, pitches and noise
not in training), through tingji's engines.

    python -m bench.quality --json          # one JSON object
    python -m bench.quality --count 100     # fewer utterances

- ``cer_torch``, ``cer_onnx_fp32``, ``cer_onnx_int8``: character error rate against the
  sentences spoken, each engine decoding every clip whole (no VAD, no punctuation);
- ``cer_int8_vs_fp32``: the int8 graphs' text against the fp32 graphs';
- ``batch_identity``: texts and timestamps of each clip decoded alone equal those of the
  same clip decoded in one model call with 7 others (torch engine, CPU), and
  ``batch_identity_onnx`` likewise;
- ``timestamp_fallback_rate``: the share of decoded clips for which funasr's timestamp
  fallback ran (the timestamp head's peaks did not number tokens + 1);
- ``vad_segments_equal``: tingji's VAD (ONNX engine) cuts the same segments as funasr's
  (torch engine) on a long clip of held-out sentences with pauses; the VAD is the tiny
  energy detector of ``tests/helpers/tiny_funasr.py`` (no trained VAD here);
- ``hotword_recall_with`` / ``_without``: how many names planted in held-out sentences
  come back, with and without the names given as hotwords (SeACo's bias decoder).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import synth

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "trained" / "asr"


def edits(ref: str, hyp: str) -> int:
    """Levenshtein distance between two strings."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def cer(refs: list[str], hyps: list[str]) -> float:
    return sum(edits(r, h) for r, h in zip(refs, hyps, strict=True)) / max(
        1, sum(len(r) for r in refs))


def plain(text: str) -> str:
    return "".join(ch for ch in text if "\u4e00" <= ch <= "\u9fff")


def held_out(work: Path, count: int) -> list[dict[str, Any]]:
    """The held-out utterances, rendered once into ``work`` (same seeds every time)."""
    listing = work / "test" / "test.jsonl"
    if listing.exists():
        rows = [json.loads(line) for line in listing.read_text(encoding="utf-8").splitlines()]
        if len(rows) >= count:
            return rows[:count]
    synth.build(synth.HELD_OUT, count, work / "test", "test")
    return [json.loads(line) for line in listing.read_text(encoding="utf-8").splitlines()]


def named(work: Path, count: int) -> list[tuple[dict[str, Any], str]]:
    """Held-out sentences each with a name planted in it: three characters of the
    vocabulary that form no word of the lexicon; (row, name)."""
    rng = random.Random(7)
    chars = list(synth.vocabulary())
    words = set(synth.lexicon()[0])
    folder = work / "named"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, u in enumerate(synth.utterances(replace(synth.HELD_OUT, seed=3), count, "name")):
        while True:
            name = "".join(rng.sample(chars[100:], 3))
            if not any(name[a:b] in words for a in range(3) for b in range(a + 2, 4)):
                break
        cut = rng.randint(2, max(2, len(u.text) - 2))
        text = u.text[:cut] + name + u.text[cut:]
        vocab = synth.vocabulary()
        u = replace(u, text=text, pinyin=" ".join(vocab[ch] for ch in text))
        row = synth._make((u, str(folder), 9_000 + i))  # noqa: SLF001
        out.append((row, name))
    return out


def lane(asr: Path, engine: str, data: Path, *, int8: bool = False, vad: Path | None = None,
         threads: int = 2) -> Any:
    from worker.asr import AsrConfig, AsrEngine

    lane = AsrEngine(AsrConfig(model=str(asr), vad_model=str(vad) if vad else None,
                               punc_model=None, device="cpu", engine=engine, data_dir=data,
                               ncpu=threads, onnx_int8=int8, vad_max_end_silence_ms=500))
    lane._load()  # noqa: SLF001
    return lane


def transcribe(lane: Any, paths: list[Path], hotwords: tuple[str, ...] = ()) -> list[str]:
    from worker.batching import AsrJob

    texts = []
    for p in paths:
        job = AsrJob(p, hotwords=hotwords)
        lane._run_group([job])  # noqa: SLF001
        if job.error is not None:
            raise job.error
        texts.append(plain(job.result.text))
    return texts


def samples(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16) / np.float32(32768)


def _shape(result: dict[str, Any]) -> tuple[str, list[list[int]]]:
    stamps = result.get("timestamp") or []
    return str(result.get("text", "")), [[int(a), int(b)] for a, b in stamps]


def batch_identity(lane: Any, paths: list[Path], group: int = 8) -> tuple[bool, int]:
    """Each clip decoded alone against the same clip decoded with ``group - 1`` others
    in one call of the engine's ``decode``; (all equal, how many differ)."""
    engine = lane.backend
    pieces = [samples(p).astype(np.float32) for p in paths]
    differ = 0
    for start in range(0, len(pieces) - group + 1, group):
        batch = pieces[start:start + group]
        together = engine.decode(batch, ())
        for one, with_others in zip(batch, together, strict=True):
            alone = engine.decode([one], ())[0]
            differ += _shape(alone) != _shape(with_others)
    return differ == 0, differ


class FallbackCounter:
    """Counts the runs of funasr's timestamp fallback: ``ts_prediction_lfr6_standard``
    calls ``timestamp_tools.cif_wo_hidden`` only when the peaks do not number
    tokens + 1, so its calls are the fallback's."""

    def __init__(self) -> None:
        from funasr.utils import timestamp_tools

        self.module = timestamp_tools
        self.inner = timestamp_tools.cif_wo_hidden
        self.calls = 0

    def __enter__(self) -> FallbackCounter:
        def counted(*a: Any, **k: Any) -> Any:
            self.calls += 1
            return self.inner(*a, **k)
        self.module.cif_wo_hidden = counted
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.cif_wo_hidden = self.inner


def long_clip(rows: list[dict[str, Any]], out: Path) -> Path:
    rng = np.random.default_rng(11)
    parts = []
    for row in rows:
        parts.append(samples(Path(row["source"])))
        parts.append(rng.normal(0, 0.002, int(rng.uniform(0.9, 1.6) * synth.RATE)))
    synth.write_wav(out, np.concatenate(parts).astype(np.float32))
    return out


def vad_segments_equal(asr: Path, data: Path, clip: Path, vad: Path) -> tuple[bool, int]:
    found = []
    for engine in ("torch", "onnx"):
        ln = lane(asr, engine, data, vad=vad)
        split = ln.backend.split(clip, ())
        found.append([seg for item in split.vad or [] for seg in item["value"]])
        ln.close()
    return found[0] == found[1], len(found[0])


def measure(asr: Path, work: Path, count: int, names: int) -> Iterator[tuple[str, Any]]:
    from tests.helpers.tiny_funasr import build_vad
    from worker.engines.onnx.export import export_models

    rows = held_out(work, count)
    refs = [row["target"].replace(" ", "") for row in rows]
    paths = [Path(row["source"]) for row in rows]
    yield "model", str(asr)
    yield "utterances", len(rows)
    yield "audio_s", round(sum(row["source_len"] for row in rows) / 100, 1)
    data = work / "data"
    vad = work / "vad"
    if not (vad / "model.pt").exists():
        build_vad(vad)
    roles = [("ASR", "TINGJI_ASR_MODEL", str(asr)), ("VAD", "TINGJI_VAD_MODEL", str(vad))]
    lines: list[str] = []
    if export_models(roles, data, quantize=True, out=lines.append):
        raise SystemExit("\n".join(lines))

    torch_lane = lane(asr, "torch", data)
    with FallbackCounter() as fallback:
        hyp_torch = transcribe(torch_lane, paths)
    yield "cer_torch", round(cer(refs, hyp_torch), 4)
    yield "timestamp_fallback_rate", round(fallback.calls / len(paths), 4)
    same, differ = batch_identity(torch_lane, paths[:64])
    yield "batch_identity", same
    yield "batch_differences", differ
    if names:
        planted = named(work, names)
        without = with_ = 0
        for row, name in planted:
            clip = Path(row["source"])
            without += name in transcribe(torch_lane, [clip])[0]
            with_ += name in transcribe(torch_lane, [clip], (name,))[0]
        yield "hotword_recall_without", round(without / names, 3)
        yield "hotword_recall_with", round(with_ / names, 3)
    torch_lane.close()

    fp32 = lane(asr, "onnx", data, int8=False)
    hyp_fp32 = transcribe(fp32, paths)
    yield "cer_onnx_fp32", round(cer(refs, hyp_fp32), 4)
    same, _ = batch_identity(fp32, paths[:32])
    yield "batch_identity_onnx", same
    fp32.close()
    int8 = lane(asr, "onnx", data, int8=True)
    hyp_int8 = transcribe(int8, paths)
    int8.close()
    yield "cer_onnx_int8", round(cer(refs, hyp_int8), 4)
    yield "cer_int8_vs_fp32", round(cer(hyp_fp32, hyp_int8), 4)
    equal, segments = vad_segments_equal(asr, data, long_clip(rows[:20], work / "long.wav"), vad)
    yield "vad_segments_equal", equal
    yield "vad_segments", segments


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--model", type=Path, default=FIXTURE)
    ap.add_argument("--count", type=int, default=300, help="held-out utterances")
    ap.add_argument("--names", type=int, default=40, help="sentences with a planted name")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tingji-quality")
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    began = time.monotonic()
    figures: dict[str, Any] = {}
    import contextlib

    # funasr prints its version on stdout when imported: keep stdout for the figures
    with contextlib.redirect_stdout(sys.stderr):
        for key, value in measure(a.model, a.work, a.count, a.names):
            figures[key] = value
            if not a.json:
                print(f"{key:26} {value}", file=sys.__stdout__, flush=True)
    figures["seconds"] = round(time.monotonic() - began)
    if a.json:
        json.dump(figures, sys.stdout, ensure_ascii=False)
        print()


if __name__ == "__main__":
    main()
