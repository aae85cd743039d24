"""FSMN-VAD's per-frame decision without a tensor operation per frame.

funasr's ``FsmnVADStreaming.GetFrameState`` runs once per 10 ms frame (57,600 times for
a 9.6-minute clip) and reads the frame's silence posterior as
``scores[0][t][pdf].item()``: three tensor indexings and a conversion per frame, plus a
``len()`` of the scores tensor for an assertion.  ``TingjiFsmnVAD`` reads the same
float32 values from a Python list made once per scores tensor (funasr replaces the tensor
when a chunk arrives or frames are dropped, so the list follows it by identity) and
otherwise runs funasr's arithmetic in funasr's order: the same frame states, hence the
same segments (a test compares them with stock funasr's on speech and on silence).

``make_fast_vad`` switches a loaded model in place, as ``worker.engines.torch.paraformer``
does for the predictor; it adds no parameters and edits nothing in site-packages.
"""

from __future__ import annotations

import math
from typing import Any

from funasr.models.fsmn_vad_streaming.model import (
    E2EVadFrameProb,
    FrameState,
    FsmnVADStreaming,
)


def _silence_posteriors(cache: dict[str, Any]) -> list[float] | list[list[float]]:
    """The silence pdfs' posteriors of the current scores tensor, one Python float per
    frame (per pdf when there are several), converted once per tensor."""
    stats = cache["stats"]
    held = cache.get("tingji_silence")
    if held is not None and held[0] is stats.scores:
        return held[1]  # type: ignore[no-any-return]
    ids = stats.sil_pdf_ids
    scores = stats.scores
    if len(scores) != 1:  # funasr's own assertion: batch size 1 only
        raise AssertionError("FSMN-VAD decodes one stream at a time")
    if len(ids) == 1:
        values: Any = scores[0, :, ids[0]].tolist()
    else:
        values = [scores[0, :, i].tolist() for i in ids]
    cache["tingji_silence"] = (scores, values)  # the tensor is held: identity is stable
    return values  # type: ignore[no-any-return]


class TingjiFsmnVAD(FsmnVADStreaming):
    def GetFrameState(self, t: int, cache: dict[str, Any] | None = None) -> FrameState:  # noqa: N802
        """Speech or silence for frame ``t``, as ``FsmnVADStreaming.GetFrameState`` decides
        it (the same float operations in the same order, so the same decisions), with the
        silence posteriors read from a list made once per chunk instead of a tensor
        indexed per frame."""
        stats, opts = (cache if cache is not None else {})["stats"], self.vad_opts
        if t >= len(stats.decibel) or stats.decibel[t] < opts.decibel_thres:
            return FrameState.kFrameStateSil
        level = stats.decibel[t]
        pdfs = stats.sil_pdf_ids
        assert len(pdfs) == opts.silence_pdf_num
        speech_score, noise_logp = 0.0, 0.0
        if pdfs:
            posteriors = _silence_posteriors(cache)  # type: ignore[arg-type]
            silence = (posteriors[t] if len(pdfs) == 1
                       else sum(column[t] for column in posteriors))  # type: ignore[union-attr]
            noise_logp = math.log(silence) * opts.speech_2_noise_ratio
            speech_score = 1.0 - silence
        speech_logp = math.log(speech_score)
        if opts.output_frame_probs:
            record = E2EVadFrameProb()
            record.noise_prob, record.speech_prob = noise_logp, speech_logp
            record.score, record.frame_id = speech_score, t
            stats.frame_probs.append(record)
        # exp(log(x)) and not x: funasr compares these, and so must the same floats
        if math.exp(speech_logp) >= math.exp(noise_logp) + stats.speech_noise_thres:
            loud = level - stats.noise_average_decibel >= opts.snr_thres
            return FrameState.kFrameStateSpeech if loud else FrameState.kFrameStateSil
        n = opts.noise_frame_num_used_for_snr
        stats.noise_average_decibel = level if stats.noise_average_decibel < -99.9 else (
            level + stats.noise_average_decibel * (n - 1)) / n
        return FrameState.kFrameStateSil


def make_fast_vad(model: Any) -> str | None:
    """Switch a loaded FSMN-VAD module to ``TingjiFsmnVAD`` in place; the class name, or
    None for another VAD (left as it is)."""
    if model is None:
        return None
    if type(model) is TingjiFsmnVAD:
        return TingjiFsmnVAD.__name__
    if type(model) is not FsmnVADStreaming:
        return None
    model.__class__ = TingjiFsmnVAD
    return TingjiFsmnVAD.__name__


__all__ = ["TingjiFsmnVAD", "make_fast_vad"]
