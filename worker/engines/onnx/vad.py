"""FSMN-VAD without torch: funasr 1.4.16's ``FsmnVADStreaming`` offline decision (a whole
file, cut in funasr's 60-second chunks) with its encoder as an ONNX graph.

funasr runs the file through its streaming frontend chunk by chunk; the frames it
emits are the offline frontend's frames (Kaldi fbank is framed the same way whatever
the chunking, LFR repeats the first and last frames the same way), so they are computed
here once for the file, and only *how many* frames each chunk emits is followed: the
state machine's per-chunk steps (the dynamic end-silence schedule, the last frame of
the file) depend on it.  The state machine itself is funasr's, method for method and
in the same order, with two simplifications that change no decision:

- the waveform buffers it keeps only to hand out audio (``data_buf``) are reduced to
  the frame index they start at, which is all a decision reads of them;
- frames are indexed from the start of the file (funasr drops consumed frames and
  offsets its indexes by the number dropped).

``tests/test_onnx.py`` compares the segments with funasr's own on speech and silence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.engines.onnx.frontend import Frontend
from worker.engines.onnx.graphs import session

# funasr.models.fsmn_vad_streaming.model: (accumulated ms, end silence ms)
SILENCE_SCHEDULE = [(10000, 2000), (20000, 1000), (30000, 800), (40000, 600), (50000, 400),
                    (60000, 200), (float("inf"), 100)]
# VadStateMachine
START_NOT_DETECTED, IN_SPEECH, END_DETECTED = 1, 2, 3
# FrameState
SIL, SPEECH = 0, 1
# AudioChangeState
SPEECH2SPEECH, SPEECH2SIL, SIL2SIL, SIL2SPEECH = 0, 1, 2, 3
MULTIPLE_UTTERANCE = 1  # VadDetectMode


@dataclass
class VadOptions:
    """funasr's ``VADXOptions`` defaults, updated by the model's ``model_conf`` and then
    by the worker's VAD settings (as funasr merges them)."""

    sample_rate: int = 16000
    detect_mode: int = MULTIPLE_UTTERANCE
    max_end_silence_time: int = 800
    max_start_silence_time: int = 3000
    window_size_ms: int = 200
    sil_to_speech_time_thres: int = 150
    speech_to_sil_time_thres: int = 150
    speech_2_noise_ratio: float = 1.0
    do_extend: int = 1
    lookback_time_start_point: int = 200
    lookahead_time_end_point: int = 100
    max_single_segment_time: int = 60000
    snr_thres: float = -100.0
    noise_frame_num_used_for_snr: int = 100
    decibel_thres: float = -100.0
    speech_noise_thres: float = 0.6
    fe_prior_thres: float = 1e-4
    silence_pdf_num: int = 1
    sil_pdf_ids: tuple[int, ...] = (0,)
    frame_in_ms: int = 10
    frame_length_ms: int = 25

    @classmethod
    def of(cls, *confs: dict[str, Any]) -> VadOptions:
        opts = cls()
        for conf in confs:
            for k, v in conf.items():
                if k in cls.__dataclass_fields__:
                    setattr(opts, k, tuple(v) if k == "sil_pdf_ids" else v)
        return opts


class _Window:
    """funasr's ``WindowDetector``."""

    def __init__(self, o: VadOptions) -> None:
        self.size = int(o.window_size_ms / o.frame_in_ms)
        self.sil_to_speech = int(o.sil_to_speech_time_thres / o.frame_in_ms)
        self.speech_to_sil = int(o.speech_to_sil_time_thres / o.frame_in_ms)
        self.reset()

    def reset(self) -> None:
        self.pos = 0
        self.sum = 0
        self.state = [0] * self.size
        self.pre = SIL

    def detect(self, frame_state: int) -> int:
        self.sum -= self.state[self.pos]
        self.sum += frame_state
        self.state[self.pos] = frame_state
        self.pos = (self.pos + 1) % self.size
        if self.pre == SIL and self.sum >= self.sil_to_speech:
            self.pre = SPEECH
            return SIL2SPEECH
        if self.pre == SPEECH and self.sum <= self.speech_to_sil:
            self.pre = SIL
            return SPEECH2SIL
        return SIL2SIL if self.pre == SIL else SPEECH2SPEECH


class _Decoder:
    """One file's pass through funasr's VAD state machine (its ``Stats`` and the
    methods that change them), over precomputed decibels and silence posteriors."""

    def __init__(self, o: VadOptions, decibel: list[float], silence: list[float],
                 speech_noise_thres: float) -> None:
        self.o = o
        self.decibel, self.silence = decibel, silence
        self.window = _Window(o)
        self.max_end_sil = o.max_end_silence_time - o.speech_to_sil_time_thres
        self.speech_noise_thres = speech_noise_thres
        # the file's: frames decided, the first frame not yet written out, the running
        # noise level, the segments so far ([start_ms, end_ms, has_start, has_end])
        self.frames_seen, self.buffer_start, self.noise_db = 0, 0, -100.0
        self.ends_found, self.output_offset = 0, 0
        self.output: list[list[Any]] = []
        self.reset()  # and the utterance's

    # -------------------------------------------------------------- frame decision
    def frame_state(self, t: int) -> int:
        """Speech or silence for frame ``t`` (the decision of ``TingjiFsmnVAD`` with one
        silence pdf: the same float operations in the same order); a silent frame moves
        the running noise level."""
        o = self.o
        if t >= self.frames_seen or self.decibel[t] < o.decibel_thres:
            return SIL
        level = self.decibel[t]
        noise_logp = math.log(self.silence[t]) * o.speech_2_noise_ratio
        speech_logp = math.log(1.0 - self.silence[t])
        if math.exp(speech_logp) >= math.exp(noise_logp) + self.speech_noise_thres:
            return SPEECH if level - self.noise_db >= o.snr_thres else SIL
        n = o.noise_frame_num_used_for_snr
        self.noise_db = level if self.noise_db < -99.9 else (
            level + self.noise_db * (n - 1)) / n
        return SIL

    # -------------------------------------------------------------- output buffer
    def pop_till(self, frame: int) -> None:
        self.buffer_start = max(self.buffer_start, frame)

    def pop_to_output(self, start: int, count: int, first_is_start: bool,
                      last_is_end: bool) -> None:
        self.pop_till(start)
        ms = self.o.frame_in_ms
        if not self.output or first_is_start:
            self.output.append([start * ms, start * ms, False, False])
        seg = self.output[-1]
        self.buffer_start += count
        seg[1] = (start + count) * ms
        if first_is_start:
            seg[2] = True
        if last_is_end:
            seg[3] = True

    def on_silence(self, frame: int) -> None:
        self.last_silence = frame
        if self.state == START_NOT_DETECTED:
            self.pop_till(frame)

    def on_voice(self, frame: int) -> None:
        self.last_speech = frame
        self.pop_to_output(frame, 1, False, False)

    def on_voice_start(self, frame: int, fake: bool = False) -> None:
        if self.start_frame == -1:
            self.start_frame = frame
        if not fake and self.state == START_NOT_DETECTED:
            self.pop_to_output(self.start_frame, 1, True, False)

    def on_voice_end(self, frame: int, fake: bool, is_last: bool) -> None:
        for t in range(self.last_speech + 1, frame):
            self.on_voice(t)
        if self.end_frame == -1:
            self.end_frame = frame
        if not fake:
            self.pop_to_output(self.end_frame, 1, False, True)
        self.ends_found += 1

    def maybe_end_if_last(self, is_final: bool, frame: int) -> None:
        if is_final:
            self.on_voice_end(frame, False, True)
            self.state = END_DETECTED

    def latency(self) -> int:
        frames = self.window.size
        if self.o.do_extend:
            frames += int(self.o.lookback_time_start_point / self.o.frame_in_ms)
        return frames

    def reset(self) -> None:
        """A new utterance: nothing confirmed yet, no silence counted, the window empty."""
        self.state = START_NOT_DETECTED
        self.start_frame = self.end_frame = self.last_silence = -1
        self.last_speech = self.silent_frames = 0
        self.window.reset()

    # -------------------------------------------------------------- one frame
    def detect(self, frame_state: int, t: int, is_final: bool) -> None:  # noqa: C901
        o = self.o
        ms = o.frame_in_ms
        too_long = t - self.start_frame + 1 > o.max_single_segment_time / ms
        change = self.window.detect(SPEECH if frame_state == SPEECH and 1.0 > o.fe_prior_thres
                                    else SIL)
        if change == SIL2SPEECH:
            self.silent_frames = 0
            if self.state == START_NOT_DETECTED:
                start = max(self.buffer_start, t - self.latency())
                self.on_voice_start(start)
                self.state = IN_SPEECH
                for f in range(start + 1, t + 1):
                    self.on_voice(f)
            elif self.state == IN_SPEECH:
                for f in range(self.last_speech + 1, t):
                    self.on_voice(f)
                self._continue(t, is_final, too_long)
        elif change in (SPEECH2SIL, SPEECH2SPEECH):
            self.silent_frames = 0
            if self.state == IN_SPEECH:
                self._continue(t, is_final, too_long)
        elif change == SIL2SIL:
            self.silent_frames += 1
            silent_ms = self.silent_frames * ms
            if self.state == START_NOT_DETECTED:
                if ((o.detect_mode == 0 and silent_ms > o.max_start_silence_time)
                        or (is_final and self.ends_found == 0)):
                    for f in range(self.last_silence + 1, t):
                        self.on_silence(f)
                    self.on_voice_start(0, True)
                    self.on_voice_end(0, True, False)
                    self.state = END_DETECTED
                elif t >= self.latency():
                    self.on_silence(t - self.latency())
            elif self.state == IN_SPEECH:
                if silent_ms >= self.max_end_sil:
                    lookback = int(self.max_end_sil / ms)
                    if o.do_extend:
                        lookback -= int(o.lookahead_time_end_point / ms)
                        lookback -= 1
                        lookback = max(0, lookback)
                    self.on_voice_end(t - lookback, False, False)
                    self.state = END_DETECTED
                elif too_long:
                    self.on_voice_end(t, False, False)
                    self.state = END_DETECTED
                elif o.do_extend and not is_final:
                    if self.silent_frames <= int(o.lookahead_time_end_point / ms):
                        self.on_voice(t)
                else:
                    self.maybe_end_if_last(is_final, t)
        if self.state == END_DETECTED and o.detect_mode == MULTIPLE_UTTERANCE:
            self.reset()

    def _continue(self, t: int, is_final: bool, too_long: bool) -> None:
        """Speech goes on at frame t: the segment ends when too long or at the last frame
        of the file, else the frame is speech."""
        if too_long:
            self.on_voice_end(t, False, False)
            self.state = END_DETECTED
        elif not is_final:
            self.on_voice(t)
        else:
            self.maybe_end_if_last(is_final, t)

    # -------------------------------------------------------------- one chunk
    def chunk(self, frames: int, is_final: bool) -> list[list[int]]:
        """funasr's ``forward`` for a chunk that emitted ``frames`` frames: its decisions,
        then the segments complete so far (all of them at the end of the file)."""
        if frames <= 0:
            return []
        first = self.frames_seen
        self.frames_seen += frames
        if self.state != END_DETECTED:
            for t in range(first, self.frames_seen):
                self.detect(self.frame_state(t), t, is_final and t == self.frames_seen - 1)
        out = []
        for seg in self.output[self.output_offset:]:
            if not is_final and not (seg[2] and seg[3]):
                continue
            out.append([seg[0], seg[1]])
            self.output_offset += 1
        return out


class FsmnVad:
    """FSMN-VAD from an exported folder (its ``model.onnx``, ``config.yaml``,
    ``am.mvn``): a file's speech segments as [start_ms, end_ms] pairs, as funasr's
    ``AutoModel`` with that VAD model and ``vad_kwargs`` gives them."""

    def __init__(self, folder: Path, graph: Path, conf: dict[str, Any],
                 vad_kwargs: dict[str, Any], threads: int) -> None:
        self.kwargs = dict(vad_kwargs)
        self.opts = VadOptions.of(conf.get("model_conf") or {}, self.kwargs)
        self.frontend = Frontend(conf.get("frontend_conf") or {}, folder / "am.mvn")
        self.path = graph
        self.session = session(graph, threads)
        inputs = self.session.get_inputs()
        self.speech = inputs[0].name
        self.caches = [(i.name, tuple(d if isinstance(d, int) else 1 for d in i.shape))
                       for i in inputs[1:]]
        self.chunk_ms = int(self.kwargs.get("chunk_size", 60000))

    def emitted(self, samples: int) -> list[int]:
        """Frames funasr's streaming frontend emits per chunk of a file this long (its
        fbank frames, less the LFR right context until the last chunk)."""
        f = self.frontend
        stride = int(self.chunk_ms * f.fs / 1000)
        win = int(f.frame_length * f.fs / 1000)
        shift = int(f.frame_shift * f.fs / 1000)
        context = (f.lfr_m - 1) // 2 if f.lfr_m > 1 else 0
        n = samples // stride + 1  # the last (possibly empty) chunk is the final one

        def fbank_frames(upto: int) -> int:
            return (upto - win) // shift + 1 if upto >= win else 0

        total = -(-fbank_frames(samples) // f.lfr_n) if f.lfr_n > 1 else fbank_frames(samples)
        out, done = [], 0
        for k in range(n):
            ready = total if k == n - 1 else max(0, fbank_frames((k + 1) * stride) - context)
            ready = max(ready, done)
            out.append(ready - done)
            done = ready
        return out

    def scores(self, feats: np.ndarray, counts: list[int]) -> np.ndarray:
        """The encoder's silence posteriors, chunk by chunk with its caches carried."""
        caches = [np.zeros(shape, np.float32) for _, shape in self.caches]
        out, pos = [], 0
        for count in counts:
            if count <= 0:
                continue
            feed = {self.speech: feats[None, pos:pos + count]}
            feed.update({name: c for (name, _), c in zip(self.caches, caches, strict=True)})
            res = self.session.run(None, feed)
            caches = res[1:]
            out.append(res[0][0])
            pos += count
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def decibels(self, audio: np.ndarray, frames: int) -> list[float]:
        """funasr's ``ComputeDecibel``: 10·log10 of each frame's energy, on the raw
        samples, frames of ``frame_length_ms`` every ``lfr_n`` fbank shifts."""
        o, f = self.opts, self.frontend
        win = int(o.frame_length_ms * o.sample_rate / 1000)
        shift = int(o.frame_in_ms * o.sample_rate / 1000) * f.lfr_n
        if frames <= 0:
            return []
        framed = np.lib.stride_tricks.sliding_window_view(audio, win)[::shift][:frames]
        return (10 * np.log10(np.sum(np.square(framed), axis=1) + 0.000001)).tolist()

    def __call__(self, audio: np.ndarray) -> list[list[int]]:
        if not len(audio):
            return []
        counts = self.emitted(len(audio))
        total = sum(counts)
        if total <= 0:
            return []
        feats = self.frontend.lfr_cmvn(self.frontend.fbank(audio))[:total]
        scores = self.scores(feats, counts)
        ids = list(self.opts.sil_pdf_ids)
        silence = (scores[:, ids].sum(axis=1) if len(ids) > 1 else scores[:, ids[0]])
        opts = self.opts
        decoder = _Decoder(opts, self.decibels(audio, total), silence.tolist(),
                           float(self.kwargs.get("speech_noise_thres",
                                                 opts.speech_noise_thres)))
        dynamic = self.kwargs.get("dynamic_silence",
                                  self.kwargs.get("max_end_silence_time") is None)
        schedule = self.kwargs.get("silence_schedule", SILENCE_SCHEDULE)
        accumulated, in_speech = 0, False
        segments: list[list[int]] = []
        for k, count in enumerate(counts):
            if dynamic:
                if decoder.state == IN_SPEECH or in_speech:
                    accumulated += self.chunk_ms
                    in_speech = True
                for limit_ms, silence_ms in schedule:
                    if accumulated <= limit_ms:
                        decoder.max_end_sil = max(silence_ms - opts.speech_to_sil_time_thres, 0)
                        decoder.speech_noise_thres = 0.5
                        break
            found = decoder.chunk(count, k == len(counts) - 1)
            if found:
                segments.extend(found)
                if dynamic:
                    accumulated, in_speech = 0, False
        return segments


__all__ = ["FsmnVad", "VadOptions"]
