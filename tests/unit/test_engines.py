"""One conformance suite for every engine (``worker.engines.base.Engine``): the torch
engine (funasr) and the ONNX engine (exported graphs) run the same checks through the
protocol, in process, on tiny random-weight models whose CIF predictor follows the
encoder closely (a frame leaking from padding or from another task shows).

What an engine must do: split a file into speech pieces shortest first, whose seconds
are the VAD's; decode any pieces, alone or batched with other tasks', to the same
results; assemble a file's pieces into time-ordered sentences; give silence an empty
transcript; keep an error with its task.  And the two engines cut the same pieces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("funasr", reason="the worker's packages are not installed")
pytest.importorskip("onnxruntime", reason="the ONNX engine's runtime is not installed")

ENGINES = ("torch", "onnx")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny models, and their graphs exported in process as ``tingji models export-onnx``
    does."""
    from tests.helpers.tiny_funasr import build_asr, build_punc, build_vad
    from worker.engines.onnx.export import export_models

    d = tmp_path_factory.mktemp("engines")
    build_asr(d / "asr", "seaco", "narrow", predictor_gain=0.05, idle_bias=True)
    build_vad(d / "vad")
    build_punc(d / "punc", blocks=2)
    roles = [("ASR", "TINGJI_ASR_MODEL", str(d / "asr")),
             ("VAD", "TINGJI_VAD_MODEL", str(d / "vad")),
             ("punctuation", "TINGJI_PUNC_MODEL", str(d / "punc"))]
    lines: list[str] = []
    assert export_models(roles, d / "data", quantize=False, out=lines.append) == 0, lines
    return {"asr": d / "asr", "vad": d / "vad", "punc": d / "punc", "data": d / "data"}


@pytest.fixture(scope="module", params=ENGINES)
def lane(request: pytest.FixtureRequest, folders: dict[str, Path]) -> Iterator[Any]:
    """The worker's ASR lane on each engine, loaded."""
    from worker.asr import AsrConfig, AsrEngine

    eng = AsrEngine(AsrConfig(model=str(folders["asr"]), vad_model=str(folders["vad"]),
                              punc_model=str(folders["punc"]), device="cpu",
                              engine=request.param, data_dir=folders["data"], ncpu=1,
                              onnx_int8=False))
    eng._load()
    assert eng.engine == request.param
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def short_clips(clips: list[Path]) -> list[Path]:
    return clips[:3]


def _run(lane: Any, jobs: list[Any]) -> None:
    lane._run_group(jobs)
    for job in jobs:
        assert job.error is None, (job.audio.name, job.error)


def _jobs(paths: list[Path], **kw: Any) -> list[Any]:
    from worker.batching import AsrJob

    return [AsrJob(p, **kw) for p in paths]


def test_engine_implements_the_protocol(lane: Any) -> None:
    from worker.engines.base import Engine

    engine = lane.backend
    assert isinstance(engine, Engine)
    assert engine.name in ENGINES and engine.device == "cpu" and engine.describe()
    limits = engine.limits
    assert (limits.pieces > 0) != (engine.name == "torch")  # ONNX never pads
    assert not engine.speakers_loaded


def test_split_gives_speech_pieces_shortest_first(lane: Any, clips: list[Path]) -> None:
    counts = []
    for clip in clips:
        split = lane.backend.split(clip, ())
        lengths = [len(p) for p in split.pieces]
        counts.append(len(lengths))
        assert lengths and lengths == sorted(lengths), clip.name
        # the pieces are the VAD's segments: their seconds, to a sample per piece
        assert abs(sum(lengths) / 16000 - split.speech_s) <= len(lengths) / 16000
    assert max(counts) >= 2


def test_both_engines_cut_the_same_pieces(folders: dict[str, Path],
                                          clips: list[Path]) -> None:
    import numpy as np

    from worker.asr import AsrConfig
    from worker.engines.loading import load_engine

    def config(engine: str) -> Any:
        return AsrConfig(model=str(folders["asr"]), vad_model=str(folders["vad"]),
                         punc_model=None, device="cpu", engine=engine,
                         data_dir=folders["data"], ncpu=1, onnx_int8=False)
    torch_engine, onnx_engine = load_engine(config("torch")), load_engine(config("onnx"))
    try:
        for clip in clips:
            a, b = torch_engine.split(clip, ()), onnx_engine.split(clip, ())
            assert a.speech_s == b.speech_s
            assert len(a.pieces) == len(b.pieces)
            assert all(np.array_equal(np.asarray(x), np.asarray(y))
                       for x, y in zip(a.pieces, b.pieces, strict=True))
    finally:
        torch_engine.close()
        onnx_engine.close()


def test_decoding_alone_equals_decoding_in_a_batch(lane: Any, short_clips: list[Path]
                                                   ) -> None:
    engine = lane.backend
    pieces = [p for clip in short_clips for p in engine.split(clip, ()).pieces]
    alone = [engine.decode([p], ())[0] for p in pieces]
    together = engine.decode(pieces, ())
    keys = ("text", "timestamp")
    assert [{k: r.get(k) for k in keys} for r in together] == \
        [{k: r.get(k) for k in keys} for r in alone]
    assert sum(len(r["text"]) for r in alone) > 10


def test_a_group_gives_each_task_what_it_gets_alone(lane: Any, clips: list[Path]) -> None:
    """Identity: one task alone, and the same task in a group with the others, sharing
    model calls (a padded batch on torch, several pieces in flight on ONNX)."""
    alone = []
    for clip in clips:
        [job] = _jobs([clip])
        _run(lane, [job])
        alone.append(job.result)
    together = _jobs(clips)
    calls: list[set[int]] = []

    def hook(pieces: list[Any]) -> None:
        calls.append({n for n, job in enumerate(together)
                      for p in pieces if any(p is q for q in job.pieces)})
    lane.batcher.decode_hook = hook
    try:
        stats = lane._run_group(together)
    finally:
        lane.batcher.decode_hook = None
    assert all(j.error is None for j in together)
    assert [j.result for j in together] == alone
    assert max(len(c) for c in calls) >= 2  # tasks really shared model calls
    assert stats.calls == len(calls) < stats.segments


def test_sentences_are_in_time_order_within_the_audio(lane: Any,
                                                      short_clips: list[Path]) -> None:
    import soundfile as sf

    jobs = _jobs(short_clips)
    _run(lane, jobs)
    for job in jobs:
        segs = job.result.segments
        assert segs and job.result.text
        duration_ms = sf.info(str(job.audio)).duration * 1000
        assert [s.start_ms for s in segs] == sorted(s.start_ms for s in segs)
        assert all(0 <= s.start_ms <= s.end_ms <= duration_ms + 100 for s in segs)
        chars = [c for s in segs for c in s.chars or []]
        assert chars and all(a <= b for a, b in chars)


def test_silence_gives_an_empty_transcript(lane: Any, tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros(16000 * 3, np.float32), 16000)
    split = lane.backend.split(quiet, ())
    assert split.pieces == [] and split.speech_s == 0
    [job] = _jobs([quiet])
    _run(lane, [job])
    assert job.result.text == "" and job.result.segments == []


def test_an_error_stays_with_its_task(lane: Any, short_clips: list[Path],
                                      tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not a wave file" * 64)
    jobs = _jobs([short_clips[0], bad, short_clips[1]])
    lane._run_group(jobs)
    assert jobs[1].error is not None and jobs[1].result is None
    assert jobs[0].result is not None and jobs[2].result is not None
    assert jobs[0].result.text and jobs[2].result.text


def test_a_stopped_task_gets_no_transcript(lane: Any, short_clips: list[Path]) -> None:
    from worker.asr import transcript_of
    from worker.errors import TaskCancelled

    jobs = _jobs(short_clips[:2])
    jobs[0].stop.set()
    lane._run_group(jobs)
    with pytest.raises(TaskCancelled):
        transcript_of(jobs[0])
    assert transcript_of(jobs[1]).text


def test_hotwords_never_share_a_call_with_other_tasks(lane: Any,
                                                      short_clips: list[Path]) -> None:
    """A group mixing hotword and plain tasks gives each the text it gets alone."""
    words = ("听记", "转写服务")
    alone = {}
    for clip in short_clips[:2]:
        for hw in ((), words):
            [job] = _jobs([clip], hotwords=hw)
            _run(lane, [job])
            alone[clip, hw] = job.result
    mixed = [j for clip in short_clips[:2] for hw in (words, ())
             for j in _jobs([clip], hotwords=hw)]
    _run(lane, mixed)
    assert all(j.result == alone[j.audio, j.hotwords] for j in mixed)


def test_a_resumed_transcription_equals_an_uninterrupted_one(lane: Any,
                                                             clips: list[Path]) -> None:
    """Checkpoints inside transcription (``worker.checkpoints``): a run stopped after
    some pieces keeps them and what the VAD found, through JSON as the database keeps
    them; a run that resumes with them splits again with that VAD (the same pieces),
    decodes only the missing ones, and assembles the transcript an uninterrupted run
    gives."""
    import json

    from worker.batching import Resume

    clip = max(clips, key=lambda c: len(lane.backend.split(c, ()).pieces))
    [whole] = _jobs([clip])
    _run(lane, [whole])

    [first] = _jobs([clip], keep=True)
    decoded: list[int] = []

    def stop_midway(pieces: list[Any]) -> None:
        decoded.append(len(pieces))
        if sum(decoded) > len(first.pieces) // 2:
            first.stop.set()  # as a shutdown or a kill between two batches
    lane.batcher.decode_hook = stop_midway
    saved_pieces = lane.batcher.pieces_per_call, lane.batcher.max_ms
    lane.batcher.pieces_per_call, lane.batcher.max_ms = (1, 0) if lane.engine == "onnx" \
        else (0, 0)  # one piece per call: the stop lands midway
    try:
        lane._run_group([first])
    finally:
        lane.batcher.decode_hook = None
        lane.batcher.pieces_per_call, lane.batcher.max_ms = saved_pieces
    assert first.result is None and first.found_vad is not None
    kept = json.loads(json.dumps(dict(first.fresh)))  # what the database gives back
    n = len(first.piece_s)
    assert 0 < len(kept) < n, (len(kept), n)

    calls: list[int] = []
    [again] = _jobs([clip], vad=json.loads(json.dumps(first.found_vad)),
                    resume=Resume(first.key, n, {int(i): r for i, r in kept.items()}))
    lane.batcher.decode_hook = lambda pieces: calls.append(len(pieces))
    try:
        _run(lane, [again])
    finally:
        lane.batcher.decode_hook = None
    assert again.resumed == len(kept)
    assert sum(calls) == n - len(kept)  # only the missing pieces were decoded
    assert again.result == whole.result and again.result.text

    # a checkpoint made by another decoding (engine, models, hotwords) is not used
    calls.clear()
    [other] = _jobs([clip], vad=first.found_vad,
                    resume=Resume("another", n, {int(i): r for i, r in kept.items()}))
    lane.batcher.decode_hook = lambda pieces: calls.append(len(pieces))
    try:
        _run(lane, [other])
    finally:
        lane.batcher.decode_hook = None
    assert other.resumed == 0 and sum(calls) == n and other.result == whole.result


def test_tokens_joined_without_a_punctuation_model_lose_their_spaces() -> None:
    """funasr joins tokens with spaces when no punctuation model runs: Chinese
    characters come back together, Latin words keep theirs."""
    from worker.engines.base import assembled

    got = assembled({"text": "不 我 门 进 tingji is 好 用 ", "timestamp": []})
    assert got.text == "不我门进 tingji is 好用"
