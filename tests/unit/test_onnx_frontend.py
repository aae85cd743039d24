"""The ONNX engine's token timestamps (``worker.engines.onnx.frontend.token_times``) against
funasr's ``ts_prediction_lfr6_standard``, which the torch engine runs: random firing
weights and peaks, with peaks that match the tokens and peaks that do not (funasr's
fallback then fires the weights again)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engines.onnx.frontend import token_times

torch = pytest.importorskip("torch")
timestamp_tools = pytest.importorskip("funasr.utils.timestamp_tools")


def funasr_times(alphas: np.ndarray, peaks: np.ndarray, tokens: list[str],
                 offset: float) -> object:
    try:
        return timestamp_tools.ts_prediction_lfr6_standard(
            torch.from_numpy(alphas.copy()), torch.from_numpy(peaks.copy()), list(tokens),
            vad_offset=offset)[1]
    except IndexError:
        return IndexError


def ours(alphas: np.ndarray, peaks: np.ndarray, tokens: list[str], offset: float) -> object:
    try:
        return token_times(alphas.copy(), peaks.copy(), list(tokens), offset_ms=offset)
    except IndexError:
        return IndexError


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(20, 400),
       st.sampled_from([0.0, 0.0, 1530.0, 61_000.5]), st.booleans(), st.booleans())
def test_token_times_are_funasrs(seed: int, n_tokens: int, frames: int, offset: float,
                                 matching: bool, end_token: bool) -> None:
    rng = np.random.default_rng(seed)
    tokens = [chr(0x4E00 + i) for i in range(n_tokens)] + (["</s>"] if end_token else [])
    alphas = (rng.random(frames) * 0.4).astype(np.float32)
    peaks = (rng.random(frames) * 0.9).astype(np.float32)
    if matching:  # one peak more than tokens, at random places, some far apart
        places = np.sort(rng.choice(frames, size=min(frames, n_tokens + 1), replace=False))
        peaks[places] = 1.0
    assert ours(alphas, peaks, tokens, offset) == funasr_times(alphas, peaks, tokens, offset)


def test_silence_and_long_tokens() -> None:
    """Speech after 0.2 s of silence, a token held 0.5 s (cut at 12 frames), a long
    tail: the spans funasr gives, the silences left out."""
    peaks = np.zeros(100, np.float32)
    peaks[[10, 14, 40, 45]] = 1.0
    alphas = np.full(100, 0.1, np.float32)
    tokens = ["今", "天", "好"]
    times = token_times(alphas, peaks, tokens)
    assert times == funasr_times(alphas, peaks, tokens, 0.0)
    assert len(times) == 3 and times[1][1] - times[1][0] == 240  # 12 frames of 20 ms
