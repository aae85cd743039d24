"""The ONNX engine's frontend (``worker.engines.onnx.frontend``) against funasr's, which
the torch engine runs: the token timestamps against ``ts_prediction_lfr6_standard``
(random firing weights and peaks, with peaks that match the tokens and peaks that do
not: funasr's fallback then fires the weights again), low frame rate against
``apply_lfr``, the CMVN file against ``load_cmvn``, and whole features against
``WavFrontend`` on the trained model's own configuration and speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engines.onnx.frontend import Frontend, apply_lfr, load_cmvn, token_times

torch = pytest.importorskip("torch")
timestamp_tools = pytest.importorskip("funasr.utils.timestamp_tools")
wav_frontend = pytest.importorskip("funasr.frontends.wav_frontend")

TRAINED = Path(__file__).resolve().parents[1] / "fixtures" / "trained"


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


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 6),
       st.integers(1, 11), st.integers(1, 8))
def test_low_frame_rate_is_funasrs(seed: int, frames: int, dim: int, lfr_m: int,
                                   lfr_n: int) -> None:
    inputs = np.random.default_rng(seed).standard_normal((frames, dim)).astype(np.float32)
    want = wav_frontend.apply_lfr(torch.from_numpy(inputs.copy()), lfr_m, lfr_n).numpy()
    got = apply_lfr(inputs, lfr_m, lfr_n)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)


def test_cmvn_reads_as_funasrs(tmp_path: Path) -> None:
    from tests.helpers.tiny_funasr import cmvn_text

    written = tmp_path / "am.mvn"
    written.write_text(cmvn_text(7, -1.25, 0.5), encoding="utf-8")
    for path in (TRAINED / "asr" / "am.mvn", written):
        want = np.asarray(wav_frontend.load_cmvn(str(path)))
        got = load_cmvn(path)
        assert got.shape == want.shape and got.shape[0] == 2
        assert np.array_equal(got, want)


def test_features_are_wavfrontends() -> None:
    """Whole clips and short ones (down to 20 ms, where funasr shortens the window) give
    funasr's features: fbank, LFR and CMVN, with the trained model's configuration."""
    import soundfile as sf
    import yaml

    conf = yaml.safe_load((TRAINED / "asr" / "config.yaml").read_text())["frontend_conf"]
    cmvn = TRAINED / "asr" / "am.mvn"
    theirs = wav_frontend.WavFrontend(**{**conf, "cmvn_file": str(cmvn)}).eval()
    ours = Frontend(conf, cmvn)
    audio, rate = sf.read(TRAINED / "demo.wav", dtype="float32")
    assert rate == 16000
    for clip in (audio, audio[:320], audio[:400], audio[1234:9999]):
        feats, n = theirs(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
        want = feats[0, :int(n[0])].numpy()
        got = ours(clip)
        assert got.shape == want.shape and want.shape[0] > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
