"""funasr 1.4.16's result building, without torch: what the ONNX engine needs around
its graphs (``worker.engines.onnx.engine``) so that a worker runs with no torch and no funasr
installed.

The text steps (tokens to text, punctuation windows, sentences) are ``worker.engines.onnx.text``.
Here are the parts ported, torch operations replaced by NumPy ones on float32 in the
same order: the frontend (Kaldi fbank through kaldi-native-fbank, which is also what
funasr computes with when torchaudio is absent, then LFR and CMVN), the CIF fire loop,
token timestamps (``token_times``), audio loading and the token list.

``tests/test_onnx.py`` runs the same clips through the torch engine (funasr itself)
and the ONNX engine and compares texts, segments and timestamps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numba
import numpy as np

# ----------------------------------------------------------------------------- CIF
# The loop of funasr.models.bicif_paraformer.cif_predictor.cif_wo_hidden, one sequence
# at a time, in float32 like the tensors there: every value is produced by the same
# IEEE operations in the same order, so the results are equal bit for bit.


@numba.njit(cache=True)
def fires_kernel(alphas: np.ndarray, threshold: np.float32, step: np.float32
                 ) -> np.ndarray:  # pragma: no cover - compiled
    b_size, t_size = alphas.shape
    fires = np.empty((b_size, t_size), dtype=np.float32)
    for b in range(b_size):
        integrate = np.float32(0.0)
        for t in range(t_size):
            integrate = integrate + alphas[b, t]
            fires[b, t] = integrate
            if integrate >= threshold:
                integrate = integrate - step
    return fires


_EDGE_FRAMES = 5  # leading or trailing frames beyond which silence is its own span
_LONGEST_TOKEN = 12  # upsampled frames (0.24 s) a token may last; the rest is silence


def token_times(us_alphas: np.ndarray, us_peaks: np.ndarray, tokens: list[str],
                offset_ms: float = 0.0, shift: float = -1.5, upsample: int = 3
                ) -> list[list[int]]:
    """[start, end] milliseconds of each token, from the timestamp head's upsampled
    firing weights and peaks (funasr's ``ts_prediction_lfr6_standard`` answers).

    A token lasts from its peak to the next, 1.5 frames early; a token longer than 12
    frames keeps 12 and leaves the rest as silence, and so does the speech before the
    first peak.  The last token ends halfway to the end of the segment when more than
    5 frames remain, else at its end.  When the peaks do not number one more than the
    tokens, the weights are spread evenly and fired again."""
    if not len(tokens):
        return []
    if tokens[-1] == "</s>":
        tokens = tokens[:-1]
    seconds = 10.0 * 6 / 1000 / upsample  # one upsampled frame of the 60 ms LFR frames
    peaks = np.asarray(us_peaks, dtype=np.float32)
    fires = np.where(peaks >= 1.0 - 1e-4)[0] + shift
    if len(fires) != len(tokens) + 1:
        weights = np.array(us_alphas, dtype=np.float32)
        weights /= weights.sum(dtype=np.float32) / np.float32(len(tokens) + 1)
        level = np.float32(1.0 - 1e-4)
        peaks = fires_kernel(weights[None, :], level, level)[0]
        fires = np.where(peaks >= 1.0 - 1e-4)[0] + shift
    frames = peaks.shape[0]
    silence = "<sil>"  # spans without a token; a token spelled so is left out too
    spans: list[tuple[str, list[float]]] = []  # (token, [start_s, end_s])
    if fires[0] > _EDGE_FRAMES:
        spans.append((silence, [0.0, fires[0] * seconds]))
    for n, (here, there) in enumerate(zip(fires[:-1], fires[1:], strict=True)):
        token = tokens[n]  # more peaks than tokens: IndexError, as in funasr
        if there - here <= _LONGEST_TOKEN:
            spans.append((token, [here * seconds, there * seconds]))
            continue
        cut = here + _LONGEST_TOKEN
        spans += [(token, [here * seconds, cut * seconds]),
                  (silence, [cut * seconds, there * seconds])]
    if frames - fires[-1] > _EDGE_FRAMES:
        half = (frames + fires[-1]) * 0.5
        spans[-1][1][1] = half * seconds
        spans.append((silence, [half * seconds, frames * seconds]))
    elif spans:
        spans[-1][1][1] = frames * seconds
    extra = offset_ms / 1000.0
    return [[int((a + extra) * 1000), int((b + extra) * 1000)] for token, (a, b) in spans
            if token != silence]


# ----------------------------------------------------------------------------- frontend
def load_cmvn(path: Path) -> np.ndarray:
    """The (2, dim) shift and scale of a Kaldi nnet1 text CMVN file (``am.mvn``), as
    funasr's ``load_cmvn`` reads it: the bracketed numbers after ``<LearnRateCoef>`` in
    the ``<AddShift>`` and the ``<Rescale>`` component (``tests/unit/test_onnx_frontend.py``)."""
    found: dict[str, list[str]] = {"<AddShift>": [], "<Rescale>": []}
    component = None
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] in found:
            component = words[0]
        elif component and words[0] == "<LearnRateCoef>":
            # <LearnRateCoef> 0 [ v1 v2 ... vn ]: the values sit between the brackets
            found[component] = words[3:-1]
            component = None
        else:
            component = None
    return np.array([np.array(found["<AddShift>"], dtype=np.float32),
                     np.array(found["<Rescale>"], dtype=np.float32)])


class Frontend:
    """funasr's ``WavFrontend`` (offline: the ASR model's) for 16 kHz audio in [-1, 1]:
    Kaldi fbank with kaldi-native-fbank, then LFR and CMVN.  Streaming VAD computes the
    same frames chunk by chunk (``worker.engines.onnx.vad`` counts them)."""

    def __init__(self, conf: dict[str, Any], cmvn: Path | None) -> None:
        self.fs = int(conf.get("fs", 16000))
        self.window = str(conf.get("window", "hamming"))
        self.n_mels = int(conf.get("n_mels", 80))
        self.frame_length = float(conf.get("frame_length", 25))
        self.frame_shift = float(conf.get("frame_shift", 10))
        self.lfr_m = int(conf.get("lfr_m", 1))
        self.lfr_n = int(conf.get("lfr_n", 1))
        self.dither = float(conf.get("dither", 1.0))
        self.snip_edges = bool(conf.get("snip_edges", True))
        self.upscale = bool(conf.get("upsacle_samples", True))  # funasr's spelling
        self.cmvn = load_cmvn(cmvn) if cmvn is not None and cmvn.is_file() else None

    def fbank(self, waveform: np.ndarray, frame_length: float | None = None) -> np.ndarray:
        import kaldi_native_fbank as knf

        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = float(self.fs)
        opts.frame_opts.frame_length_ms = float(frame_length or self.frame_length)
        opts.frame_opts.frame_shift_ms = self.frame_shift
        opts.frame_opts.dither = self.dither
        opts.frame_opts.snip_edges = self.snip_edges
        opts.frame_opts.window_type = self.window
        opts.mel_opts.num_bins = self.n_mels
        opts.energy_floor = 0.0
        fb = knf.OnlineFbank(opts)
        wav = np.asarray(waveform, dtype=np.float32)
        if self.upscale:
            wav = wav * np.float32(1 << 15)
        fb.accept_waveform(float(self.fs), wav)
        fb.input_finished()
        n = fb.num_frames_ready
        if n == 0:
            return np.zeros((0, self.n_mels), dtype=np.float32)
        return np.stack([fb.get_frame(i) for i in range(n)]).astype(np.float32, copy=False)

    def lfr_cmvn(self, mat: np.ndarray) -> np.ndarray:
        if self.lfr_m != 1 or self.lfr_n != 1:
            mat = apply_lfr(mat, self.lfr_m, self.lfr_n)
        if self.cmvn is not None:  # in place, as funasr: shift, then scale
            dim = mat.shape[1]
            mat = np.array(mat, dtype=np.float32, copy=not mat.flags.writeable)
            mat += self.cmvn[0, :dim]
            mat *= self.cmvn[1, :dim]
        return mat.astype(np.float32, copy=False)

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """The features of one utterance: (frames, dim) float32."""
        # funasr shortens the window for clips under 25 ms
        length = min(self.frame_length, len(waveform) / self.fs * 1000)
        return self.lfr_cmvn(self.fbank(waveform, length))


def apply_lfr(inputs: np.ndarray, lfr_m: int, lfr_n: int) -> np.ndarray:
    """Low frame rate, as funasr's frontend computes it: output frame ``i`` is input
    frames ``i * lfr_n - (lfr_m - 1) // 2`` onwards, ``lfr_m`` of them side by side, an
    index before the first frame reading the first and one past the last the last;
    ``ceil(frames / lfr_n)`` of them (``tests/unit/test_onnx_frontend.py``)."""
    frames, dim = inputs.shape
    out = -(-frames // lfr_n)
    if out == 0:
        return np.zeros((0, lfr_m * dim), np.float32)
    first = np.arange(out)[:, None] * lfr_n - (lfr_m - 1) // 2
    rows = np.clip(first + np.arange(lfr_m)[None, :], 0, frames - 1)
    return np.ascontiguousarray(inputs[rows].reshape(out, lfr_m * dim), dtype=np.float32)


def load_audio(path: Path) -> np.ndarray:
    """A (normalized, 16 kHz mono) audio file as float32 samples in [-1, 1], read as
    funasr reads it when torchaudio is absent (soundfile)."""
    import soundfile as sf

    data, _ = sf.read(str(path), dtype="float32")
    if data.ndim > 1:
        data = data.mean(-1)
    return np.ascontiguousarray(data, dtype=np.float32)


class Tokens:
    """A model's token list (``tokens.json`` or ``tokens.txt``) as funasr's
    ``BaseTokenizer`` uses it: ids to tokens, tokens to ids with ``<unk>``."""

    def __init__(self, folder: Path) -> None:
        if (folder / "tokens.json").is_file():
            tokens = json.loads((folder / "tokens.json").read_text(encoding="utf-8"))
        else:
            tokens = [line.rstrip("\n") for line in
                      (folder / "tokens.txt").read_text(encoding="utf-8").splitlines()]
        self.tokens: list[str] = list(tokens)
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.unk = self.ids.get("<unk>", len(self.tokens) - 1)

    def ids2tokens(self, ids: list[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def tokens2ids(self, tokens: list[str]) -> list[int]:
        return [self.ids.get(t, self.unk) for t in tokens]
