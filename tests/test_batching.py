"""Cross-task batching (worker.batching) and tingji's Paraformer predictor
(worker.engines.torch.paraformer: padding-invariant, compiled CIF loops), in-process
with real funasr and random-weight models.

The identity checks use an ASR model whose CIF predictor follows the encoder output
closely (``predictor_gain``), so a frame leaking from the padding changes text or
timestamps; the reference is stock funasr decoding each file alone, as it does on a CPU
(one VAD segment per model call, no padding at all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.asr import jobs_for as _jobs
from tests.helpers.asr import owner_of as _owner

pytestmark = pytest.mark.slow


def _load(asr: str, models: dict[str, str], **kw: Any) -> Any:
    from funasr import AutoModel

    return AutoModel(model=asr, vad_model=models["vad"], punc_model=models["punc"],
                     device="cpu", ncpu=1, disable_update=True, disable_pbar=True,
                     log_level="ERROR", **kw)


@pytest.fixture(scope="session")
def stock(sensitive_asr: str, tiny_models: dict[str, str]) -> Any:
    return _load(sensitive_asr, tiny_models)


@pytest.fixture(scope="session")
def reference(stock: Any, clips: list[Path]) -> list[dict[str, Any]]:
    """Stock funasr, one file at a time (as the engines' transcripts: text, sentences
    with their character timestamps)."""
    from worker.engines.base import assembled

    return [assembled(stock.generate(input=str(c), sentence_timestamp=True)[0])
            for c in clips]


@pytest.fixture
def engine(sensitive_asr: str, tiny_models: dict[str, str]) -> Any:
    """tingji's engine on the same model, batching as on a GPU (padded seconds bound)."""
    from worker.asr import AsrConfig, AsrEngine

    eng = AsrEngine(AsrConfig(model=sensitive_asr, vad_model=tiny_models["vad"],
                              punc_model=tiny_models["punc"], device="cpu", ncpu=1))
    eng._load()
    eng.batcher.max_ms = 300_000  # type: ignore[union-attr]
    yield eng
    eng.close()


def _same(result: Any, ref: Any) -> bool:
    return result is not None and result == ref and bool(ref.segments)


# ---------------------------------------------------------------- padding
def test_padded_decoding_equals_decoding_alone(stock: Any, sensitive_asr: str,
                                               tiny_models: dict[str, str],
                                               clips: list[Path]) -> None:
    import soundfile as sf

    from worker.engines.torch.paraformer import make_padding_invariant

    segs = []
    for c in clips:
        speech, _ = sf.read(c, dtype="float32")
        vad = stock.inference(str(c), model=stock.vad_model, kwargs=stock.vad_kwargs)
        segs += [speech[int(a * 16):int(b * 16)] for a, b in vad[0]["value"]]
    assert len(segs) >= 10
    longest = max(segs, key=len)

    def changed(model: Any) -> int:
        """How many segments decode otherwise in one batch, padded to the longest."""
        kwargs = dict(model.kwargs, batch_size=10**6)

        def decode(batch: list[Any]) -> list[dict[str, Any]]:
            return model.inference(batch, model=model.model, kwargs=kwargs)  # type: ignore
        alone = [decode([s])[0] for s in segs]
        padded = decode(segs)
        return sum((p["text"], p["timestamp"]) != (a["text"], a["timestamp"])
                   for s, p, a in zip(segs, padded, alone, strict=True) if s is not longest)

    # stock funasr: padding leaks into the last frames (the test can see a leak) ...
    assert changed(stock) > 0
    # ... tingji's predictor: none
    fixed = _load(sensitive_asr, tiny_models)
    assert make_padding_invariant(fixed.model) == "TingjiCifPredictorV3"
    assert changed(fixed) == 0


def test_decode_scope_leaves_out_only_the_unused_timestamp_head(
        sensitive_asr: str, tiny_models: dict[str, str]) -> None:
    """Inside tingji's decode calls the predictor's forward skips the timestamp head
    (its ``token_num2`` is thrown away by funasr's inference): the outputs funasr uses
    are equal bit for bit, and the bidirectional LSTM does not run."""
    import torch

    from worker.engines.torch.paraformer import decode_scope, make_padding_invariant

    model = _load(sensitive_asr, tiny_models)
    assert make_padding_invariant(model.model) == "TingjiCifPredictorV3"
    predictor = model.model.predictor.eval()
    runs: list[int] = []
    hook = predictor.blstm.register_forward_hook(lambda *a: runs.append(1))
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 40, predictor.cif_output.in_features, generator=g)
    mask = torch.ones(3, 1, 40, dtype=torch.bool)
    mask[1, :, 31:] = False
    mask[2, :, 17:] = False
    with torch.no_grad():
        full = predictor(hidden, None, mask)
        assert len(runs) == 1 and full[4] is not None
        with decode_scope():
            lean = predictor(hidden, None, mask)
        assert len(runs) == 1 and lean[4] is None
        for a, b in zip(full[:4], lean[:4], strict=True):
            assert torch.equal(a, b)
        # the timestamps (funasr asks for them separately) still run the head
        with decode_scope():
            predictor.get_upsample_timestamp(hidden, mask, full[1])
        assert len(runs) == 2
    hook.remove()


@pytest.mark.parametrize("seed", range(6))
def test_compiled_cif_loops_equal_funasr_bit_for_bit(seed: int) -> None:
    import torch
    from funasr.models.bicif_paraformer.cif_predictor import cif, cif_wo_hidden

    from worker.engines.torch.paraformer import fast_cif, fast_cif_wo_hidden

    g = torch.Generator().manual_seed(seed)
    b, t, d = 1 + seed, 40 + 97 * seed, 8 + 5 * seed
    alphas = torch.rand(b, t, generator=g) * (0.15 + 0.15 * seed)
    alphas[:, t - t // (2 + seed):] = 0.0  # a padded tail
    hidden = torch.randn(b, t, d, generator=g)
    embeds, fires = cif(hidden, alphas, 1.0)
    fast_embeds, fast_fires = fast_cif(hidden, alphas, 1.0)
    assert torch.equal(embeds, fast_embeds) and torch.equal(fires, fast_fires)
    assert embeds.shape[1] > 0
    up = torch.rand(b, 3 * t, generator=g) * 0.1
    assert torch.equal(cif_wo_hidden(up, 1.0 - 1e-4), fast_cif_wo_hidden(up, 1.0 - 1e-4))


@pytest.mark.parametrize("seed", range(6))
def test_decode_scope_equals_funasr(seed: int) -> None:
    """funasr's ``ts_prediction_lfr6_standard`` with its fallback loop compiled: the same
    timestamps; only on the thread inside the block (funasr elsewhere stays stock, even
    meanwhile), and stock again after it."""
    import threading

    import torch
    from funasr.utils import timestamp_tools

    from worker.engines.torch import paraformer
    from worker.engines.torch.paraformer import decode_scope

    g = torch.Generator().manual_seed(100 + seed)
    frames = 60 + 150 * seed
    tokens = [chr(0x4E00 + i) for i in range(5 + 7 * seed)]
    alphas = torch.rand(1, frames, generator=g) * 0.3
    peaks = torch.rand(1, frames, generator=g)  # fires that do not match the tokens:
    assert (peaks >= 1.0 - 1e-4).sum() != len(tokens) + 1  # the fallback runs

    calls: list[tuple[str, str]] = []
    fast, stock_loop = paraformer.fast_cif_wo_hidden, paraformer.STOCK_CIF_WO_HIDDEN

    def spy(which: str, fn: Any) -> Any:
        def call(*a: Any) -> Any:
            calls.append((threading.current_thread().name, which))
            return fn(*a)
        return call

    def predict() -> Any:
        return timestamp_tools.ts_prediction_lfr6_standard(
            alphas.clone(), peaks.clone(), list(tokens), force_time_shift=-3.0)
    stock = predict()
    paraformer.fast_cif_wo_hidden = spy("compiled", fast)
    paraformer.STOCK_CIF_WO_HIDDEN = spy("funasr", stock_loop)
    other: list[Any] = []
    try:
        with decode_scope():
            compiled = predict()
            t = threading.Thread(target=lambda: other.append(predict()), name="other")
            t.start()
            t.join()
        after = predict()
    finally:
        paraformer.fast_cif_wo_hidden, paraformer.STOCK_CIF_WO_HIDDEN = fast, stock_loop
    assert compiled == stock == other[0] == after and len(stock[1]) >= len(tokens)
    main = threading.current_thread().name
    assert calls == [(main, "compiled"), ("other", "funasr"), (main, "funasr")]


@pytest.mark.parametrize("silence_pdfs", [[0], [0, 2]])
def test_fast_vad_decision_gives_funasr_segments(silence_pdfs: list[int], clips: list[Path],
                                                 tiny_models: dict[str, str],
                                                 tmp_path: Path) -> None:
    """``worker.engines.torch.fsmnvad``: the per-frame decision read from lists gives stock funasr's
    segments, on speech, on silence and on noise, with one silence pdf or several."""
    import numpy as np
    import soundfile as sf
    from funasr import AutoModel

    from worker.engines.torch.fsmnvad import TingjiFsmnVAD, make_fast_vad

    rng = np.random.default_rng(7)
    speech = np.concatenate([sf.read(c, dtype="float32")[0] for c in clips[:3]])
    noisy = tmp_path / "noisy.wav"  # speech with noise bursts and a quiet stretch
    sf.write(noisy, np.concatenate([speech, np.zeros(16000 * 3, np.float32),
                                    rng.normal(0, 0.2, 16000 * 2).astype(np.float32),
                                    speech[: 16000 * 5]]), 16000)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 4, np.float32), 16000)
    inputs = [str(c) for c in clips] + [str(noisy), str(silent)]

    def load() -> Any:
        m = AutoModel(model=tiny_models["vad"], device="cpu", ncpu=1, disable_update=True,
                      disable_pbar=True, log_level="ERROR", max_end_silence_time=300)
        m.model.vad_opts.sil_pdf_ids = silence_pdfs
        m.model.vad_opts.silence_pdf_num = len(silence_pdfs)
        return m
    stock, fast = load(), load()
    assert make_fast_vad(fast.model) == "TingjiFsmnVAD"
    assert type(fast.model) is TingjiFsmnVAD and type(stock.model) is not TingjiFsmnVAD
    # chunk_size: several chunks per file, so the scores tensor is replaced mid-file
    got = [fast.generate(input=i, chunk_size=3000)[0]["value"] for i in inputs]
    want = [stock.generate(input=i, chunk_size=3000)[0]["value"] for i in inputs]
    assert got == want
    assert all(got[:5]) and not got[-1] and len(got[5]) > len(got[2])


# ---------------------------------------------------------------- groups
def test_group_gives_every_task_its_own_transcript(engine: Any, clips: list[Path],
                                                   reference: list[Any]) -> None:
    jobs = _jobs(clips)
    owner = _owner(jobs)
    mixed: list[set[int]] = []
    engine.batcher.decode_hook = lambda segs: mixed.append({owner(s) for s in segs})
    stats = engine.batcher.run(jobs)
    assert all(j.error is None for j in jobs)
    for job, ref in zip(jobs, reference, strict=True):
        assert _same(job.result, ref), (job.audio.name, job.result, ref)
    # it really batched across tasks, in few model calls
    assert max(len(s) for s in mixed) >= 3
    assert stats.calls == len(mixed) < stats.segments
    assert stats.tasks == 5 and max(stats.sizes) > 1
    # the phases the benchmark reports are parts of the group's time
    phases = (stats.split_s, stats.decode_s, stats.assemble_s)
    assert all(p > 0 for p in phases) and sum(phases) <= stats.seconds


def test_batched_as_on_a_cpu_gives_the_same(engine: Any, clips: list[Path],
                                            reference: list[Any]) -> None:
    engine.batcher.max_ms = 0  # one segment per model call
    jobs = _jobs(clips)
    stats = engine.batcher.run(jobs)
    assert stats.sizes == [1] * stats.segments
    assert all(_same(j.result, r) for j, r in zip(jobs, reference, strict=True))


def test_cancelled_task_leaves_the_next_batches(engine: Any, clips: list[Path],
                                                reference: list[Any]) -> None:
    from worker.asr import transcript_of
    from worker.errors import TaskCancelled

    engine.batcher.max_ms = 12_000  # many small batches
    jobs = _jobs(clips)
    owner = _owner(jobs)
    seen: list[set[int]] = []

    def hook(segs: list[Any]) -> None:
        seen.append({owner(s) for s in segs})
        if len(seen) == 1:
            jobs[4].stop.set()  # cancelled while the first batch decodes
    engine.batcher.decode_hook = hook
    engine.batcher.run(jobs)
    assert len(seen) > 2 and all(4 not in s for s in seen[1:])
    with pytest.raises(TaskCancelled):
        transcript_of(jobs[4])
    for job, ref in zip(jobs[:4], reference[:4], strict=True):
        assert _same(job.result, ref)


def test_undecodable_file_fails_alone(engine: Any, clips: list[Path], tmp_path: Path,
                                      reference: list[Any]) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 100)
    jobs = _jobs([clips[0], bad, clips[1]])
    engine.batcher.run(jobs)
    assert jobs[1].error is not None and jobs[1].result is None
    assert _same(jobs[0].result, reference[0]) and _same(jobs[2].result, reference[1])


def test_decode_error_is_narrowed_down_to_its_task(engine: Any, clips: list[Path],
                                                  reference: list[Any]) -> None:
    jobs = _jobs(clips)
    owner = _owner(jobs)

    def hook(segs: list[Any]) -> None:
        if any(owner(s) == 2 for s in segs):
            raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")
    engine.batcher.decode_hook = hook
    engine.batcher.run(jobs)
    assert "CUDNN" in str(jobs[2].error)
    for n in (0, 1, 3, 4):
        assert jobs[n].error is None and _same(jobs[n].result, reference[n])


def test_out_of_memory_splits_the_batch_and_fails_nothing(
        engine: Any, clips: list[Path], reference: list[Any]) -> None:
    import torch

    sizes: list[int] = []

    def hook(segs: list[Any]) -> None:
        padded_s = max(len(s) for s in segs) * len(segs) / 16000
        if padded_s > 40:  # this "GPU" holds 40 padded seconds
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(len(segs))
    engine.batcher.decode_hook = hook
    jobs = _jobs(clips)
    stats = engine.batcher.run(jobs)
    assert stats.oom_splits >= 1 and stats.sizes == sizes and max(sizes) > 1
    assert all(p <= 40 for p in stats.padded_s)
    assert engine.batcher.max_ms <= 40_000  # later batches start smaller
    assert all(j.error is None and _same(j.result, r)
               for j, r in zip(jobs, reference, strict=True))


def test_single_segment_out_of_memory_fails_only_its_task(
        engine: Any, clips: list[Path], reference: list[Any]) -> None:
    import torch

    from worker.errors import RetryableTaskError

    jobs = _jobs(clips)
    owner = _owner(jobs)
    alone: list[int] = []

    def hook(segs: list[Any]) -> None:
        if any(owner(s) == 0 for s in segs):
            if len(segs) == 1:
                alone.append(1)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    engine.batcher.decode_hook = hook
    engine.batcher.run(jobs)
    # tried alone twice (once more after freeing memory), then a retryable task error
    assert len(alone) == 2
    assert isinstance(jobs[0].error, RetryableTaskError) and jobs[0].error.retryable
    assert "out of memory" in jobs[0].error.message
    assert all(_same(j.result, r) for j, r in zip(jobs[1:], reference[1:], strict=True))


def test_vad_in_a_process_pool_gives_the_same_segments_and_transcripts(
        engine: Any, clips: list[Path], reference: list[Any],
        tiny_models: dict[str, str]) -> None:
    import asyncio

    from worker.asr import AsrConfig
    from worker.engines.torch.vad_pool import VadPool

    config = AsrConfig(vad_model=tiny_models["vad"], vad_max_end_silence_ms=None)
    pool = VadPool(tiny_models["vad"], config.vad_kwargs(), 2, config.generate_kw)

    async def detect_all() -> list[Any]:
        await pool.start()
        return await asyncio.gather(*(pool.detect(c) for c in clips))
    try:
        vads = asyncio.run(detect_all())
    finally:
        pool.close()
    jobs = _jobs(clips)
    for job, vad in zip(jobs, vads, strict=True):
        assert vad[0]["value"], vad
        job.vad = vad
    engine.batcher.run(jobs)
    # the lane ran no VAD of its own, and every transcript is stock funasr's
    assert all(job.vad is vad for job, vad in zip(jobs, vads, strict=True))
    for job, ref in zip(jobs, reference, strict=True):
        assert _same(job.result, ref)


# ---------------------------------------------------------------- hotwords
def test_hotwords_bias_the_decoder_and_groups_keep_them_apart(engine: Any,
                                                              clips: list[Path]) -> None:
    """SeACo's bias path runs with the task's hotwords (funasr builds the bias list from
    the file tingji wrote), changes the text, and a group mixing hotword and plain tasks
    gives each the text it gets alone."""
    from worker.batching import AsrJob

    words = ("听记", "转写服务", "Paraformer")
    seaco = engine.backend.model.model
    built: list[Any] = []
    original = seaco.generate_hotwords_list

    def spy(hotwords: Any, **kw: Any) -> Any:
        out = original(hotwords, **kw)
        built.append(out)
        return out
    seaco.generate_hotwords_list = spy
    try:
        alone = {}
        for clip in clips[1:3]:
            for hw in ((), words):
                job = AsrJob(clip, hotwords=hw)
                engine.batcher.run([job])
                assert job.error is None
                alone[clip, hw] = job.result
        biased = [b for b in built if b is not None]
        assert biased and all(len(b) == len(words) + 1 for b in biased)  # + funasr's <s>
        assert any(alone[c, ()].text != alone[c, words].text for c in clips[1:3])

        built.clear()
        mixed = [AsrJob(c, hotwords=hw) for c in clips[1:3] for hw in (words, ())]
        engine.batcher.run(mixed)
        for job in mixed:
            assert job.error is None
            assert _same(job.result, alone[job.audio, job.hotwords]), job.audio.name
        assert any(b is None for b in built) and any(b is not None for b in built)
    finally:
        del seaco.generate_hotwords_list


# ---------------------------------------------------------------- speakers
def test_speakers_label_sentences_and_load_only_when_asked(tiny_models: dict[str, str],
                                                           tmp_path: Path) -> None:
    """funasr's own diarization (CAM++ embeddings of the sentences, clustered) runs for
    the tasks that ask for it, loaded the first time one does; a task without speakers
    in the same group is untouched."""
    from tests.helpers import media as m
    from worker.asr import AsrConfig, AsrEngine
    from worker.batching import AsrJob

    two = m.speech_wav(tmp_path / "two.wav", m.SENTENCES[:6], pause_s=0.9,
                       voices=("cmn", "cmn+f4"))
    eng = AsrEngine(AsrConfig(model=tiny_models["asr"], vad_model=tiny_models["vad"],
                              punc_model=tiny_models["punc"], spk_model=tiny_models["spk"],
                              device="cpu", ncpu=1))
    eng._load()
    try:
        plain = AsrJob(two)
        eng._run_group([plain])
        assert not eng.backend.speakers_loaded and eng.spk_loads == 0  # never loaded
        assert all(s.speaker is None for s in plain.result.segments)

        labelled, other = AsrJob(two, speakers=2), AsrJob(two)
        eng._run_group([labelled, other])
        assert labelled.error is None and other.error is None
        assert eng.spk_loads == 1
        assert {s.speaker for s in labelled.result.segments} == {0, 1}
        assert all(s.speaker is None for s in other.result.segments)
        assert other.result.text == plain.result.text == labelled.result.text

        auto = AsrJob(two, speakers="auto")
        eng._run_group([auto])
        assert all(s.speaker is not None for s in auto.result.segments)
        assert eng.spk_loads == 1  # once per worker
    finally:
        eng.close()
