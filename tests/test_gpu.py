"""Cross-task batching on CUDA (skipped without a GPU; CI has none).

On a GPU, batched matrix kernels are chosen per shape, so the check here is the one that
matters for users: a group of tasks gives every task the transcript it gets in a group
of its own, and the engine's batches really are shared across tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.asr import jobs_for, owner_of

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def cuda_engine(sensitive_asr: str, tiny_models: dict[str, str]) -> Any:
    from worker.asr import AsrConfig, AsrEngine

    eng = AsrEngine(AsrConfig(model=sensitive_asr, vad_model=tiny_models["vad"],
                              punc_model=tiny_models["punc"], device="cuda"))
    eng._load()
    yield eng
    eng.close()


def test_group_on_cuda_equals_each_task_alone(cuda_engine: Any,
                                              clips: list[Path]) -> None:
    alone = []
    for c in clips:
        [job] = jobs_for([c])
        cuda_engine.batcher.run([job])
        alone.append(job.result)
    jobs = jobs_for(clips)
    owner = owner_of(jobs)
    mixed: list[set[int]] = []
    cuda_engine.batcher.decode_hook = lambda segs: mixed.append({owner(s) for s in segs})
    torch.cuda.reset_peak_memory_stats()
    stats = cuda_engine.batcher.run(jobs)
    assert all(j.error is None for j in jobs)
    assert max(len(s) for s in mixed) >= 3 and stats.calls < stats.segments
    for job, ref in zip(jobs, alone, strict=True):
        assert job.result == ref and ref.segments
    assert torch.cuda.max_memory_allocated() > 0
