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
        """``FsmnVADStreaming.GetFrameState`` with the posterior read from a list; the
        same operations on the same values otherwise."""
        if cache is None:
            cache = {}
        stats, opts = cache["stats"], self.vad_opts
        if t >= len(stats.decibel):
            return FrameState.kFrameStateSil
        cur_decibel = stats.decibel[t]
        cur_snr = cur_decibel - stats.noise_average_decibel
        if cur_decibel < opts.decibel_thres:
            return FrameState.kFrameStateSil

        sum_score = 0.0
        noise_prob = 0.0
        ids = stats.sil_pdf_ids
        assert len(ids) == opts.silence_pdf_num
        if len(ids) > 0:
            post = _silence_posteriors(cache)
            if len(ids) > 1:
                sum_score = sum(column[t] for column in post)  # type: ignore[union-attr]
            else:
                sum_score = post[t]  # type: ignore[assignment]
            noise_prob = math.log(sum_score) * opts.speech_2_noise_ratio
            total_score = 1.0
            sum_score = total_score - sum_score
        speech_prob = math.log(sum_score)
        if opts.output_frame_probs:
            frame_prob = E2EVadFrameProb()
            frame_prob.noise_prob = noise_prob
            frame_prob.speech_prob = speech_prob
            frame_prob.score = sum_score
            frame_prob.frame_id = t
            stats.frame_probs.append(frame_prob)
        if math.exp(speech_prob) >= math.exp(noise_prob) + stats.speech_noise_thres:
            if cur_snr >= opts.snr_thres and cur_decibel >= opts.decibel_thres:
                return FrameState.kFrameStateSpeech
            return FrameState.kFrameStateSil
        if stats.noise_average_decibel < -99.9:
            stats.noise_average_decibel = cur_decibel
        else:
            stats.noise_average_decibel = (
                cur_decibel
                + stats.noise_average_decibel * (opts.noise_frame_num_used_for_snr - 1)
            ) / opts.noise_frame_num_used_for_snr
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
