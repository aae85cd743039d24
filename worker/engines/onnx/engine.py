"""The ONNX engine (``TINGJI_ENGINE=onnx``): VAD, ASR and punctuation through ONNX
Runtime, with int8 weights when the export has them, and neither torch nor funasr
imported (a worker installed with ``tingji[worker-onnx]`` has neither).

The graphs are those ``tingji models export-onnx`` writes (``export``), or a model
folder's own ``model.onnx`` (the hub's ``-onnx`` models).  Around them, tingji's own
code gives funasr's answers without torch: the frontend and token timestamps
(``frontend``), the VAD state machine and the cutting of segments (``vad``), the
result text and sentences (``text``) and the punctuation windows (``punctuation``).
``OnnxModels`` answers
the calls the worker makes of funasr's ``AutoModel`` (``generate``, and ``inference``
with the VAD, ASR or punctuation model), so ``worker.batching``'s cross-task groups,
progress and cancellation between model calls, time limits and one load per worker
hold unchanged.

- **ASR**: one ONNX Runtime call per VAD segment, batch size 1, several segments at
  once on one-thread lanes.  An exported Paraformer graph is not padding-invariant,
  so segments are never padded together: every task gets the text it gets alone, by
  construction.
- **VAD**: the FSMN encoder's fp32 graph (the model is small; its time is the
  per-frame state machine's, and fp32 keeps torch's segments exactly).
- **punctuation**: CT-Transformer's forward is the graph; the windowing around it is
  tingji's own, giving funasr's answers (``punctuation``).

SeACo-Paraformer's graph always runs its hotword path; with no hotwords it gets the
``<s>`` entry alone, as FunASR's own ONNX runtime does (a trained model then biases
nothing; torch skips the path).  Speaker labels need the CAM++ model, which runs on
torch: where torch and funasr are installed, a task that asks for them gets funasr's
speaker step around this engine's segments (torch is imported then, not before); without
them (``tingji[worker-onnx]``) it fails with a message that says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.engines.onnx.frontend import load_audio
from worker.engines.onnx.graphs import (
    graph_file,
    read_config,
)
from worker.engines.onnx.text import (
    join_segment_texts,
    sentences_from_punctuation,
    sentences_from_segments,
)

if TYPE_CHECKING:
    from worker.engines.onnx.vad import FsmnVad

from worker.engines.onnx.models import OrtParaformer, OrtPunctuation

log = logging.getLogger("tingji.worker.onnx")


class OnnxModels:
    """Stands in for funasr's ``AutoModel`` (VAD + ASR + punctuation): ``generate`` runs
    funasr's ``inference_with_vad`` steps and asks ``inference`` for each model call,
    as funasr does, so ``worker.batching`` can record and replay those calls."""

    def __init__(self, graphs: dict[str, Path], *, int8: bool, threads: int,
                 vad_kwargs: dict[str, Any]) -> None:
        from worker.engines.onnx.vad import FsmnVad

        self.model = OrtParaformer(graphs["ASR"], int8=int8, threads=threads)
        self.vad_model: FsmnVad | None = None
        self.punc_model: OrtPunctuation | None = None
        if "VAD" in graphs:
            folder = graphs["VAD"]
            self.vad_model = FsmnVad(folder, graph_file(folder, False), read_config(folder),
                                     vad_kwargs, threads)
        if "punctuation" in graphs:
            self.punc_model = OrtPunctuation(graphs["punctuation"], int8=int8,
                                             threads=threads)
        self.kwargs: dict[str, Any] = {"device": "cpu", "batch_size": 1}
        self.vad_kwargs = dict(vad_kwargs)
        self.punc_kwargs: dict[str, Any] = {}
        # speaker labels: funasr's CAM++ on torch, attached by worker.asr when a task asks
        # for them and torch is installed (``None`` otherwise), with its cluster backend
        self.spk_model: Any = None
        self.spk_kwargs: dict[str, Any] = {}
        self.cb_model: Any = None
        self.spk_mode = "punc_segment"

    def paths(self) -> list[str]:
        done = [f"ASR {self.model.path}"]
        if self.vad_model is not None:
            done.append(f"VAD {self.vad_model.path}")
        if self.punc_model is not None:
            done.append(f"punctuation {self.punc_model.path}")
        return done

    def close(self) -> None:
        self.model.close()

    # ------------------------------------------------------------------ funasr's calls
    def inference(self, input: Any, input_len: Any = None, model: Any = None,  # noqa: A002
                  kwargs: dict[str, Any] | None = None, **cfg: Any) -> list[dict[str, Any]]:
        """One model call, as ``AutoModel.inference``: the VAD's segments of a file,
        the ASR results of a list of segments (or of a file), or the punctuation of
        a text."""
        if model is not None and model is self.vad_model:
            audio = load_audio(Path(input))
            return [{"key": Path(input).stem, "value": model(audio)}]
        if model is not None and model is self.punc_model:
            return [{"key": "punc", **model(input)}]
        if model is not None and model is self.spk_model:
            return self._spk_inference(input)
        inputs = input if isinstance(input, list) else [input]
        return self.model(inputs, cfg.get("hotword"), cfg.get("begin_time", 0))

    def generate(self, input: str, **cfg: Any) -> list[dict[str, Any]]:  # noqa: A002
        if self.vad_model is None:
            return self.inference(input, model=self.model, kwargs=self.kwargs, **cfg)
        return self._with_vad(input, **cfg)

    def _with_vad(self, input: str, **cfg: Any) -> list[dict[str, Any]]:  # noqa: A002, C901
        """funasr's ``AutoModel.inference_with_vad`` on a CPU (one segment per ASR call,
        shortest first), with speaker labels when a speaker model is attached."""
        res = self.inference(input, model=self.vad_model, kwargs=self.vad_kwargs, **cfg)
        kwargs = {**self.kwargs, **cfg}
        key, vadsegments = res[0]["key"], res[0]["value"]
        speech = load_audio(Path(input))
        n = len(vadsegments)
        if not n:
            return [{"key": key, "text": "", "timestamp": []}]
        order = sorted(range(n), key=lambda i: vadsegments[i][1] - vadsegments[i][0])
        results_sorted: list[dict[str, Any]] = []
        sv_segments: list[list[Any]] = []  # speakers: [start_s, end_s, samples] chunks
        for i in order:
            start, end = vadsegments[i]
            piece = speech[int(start * 16):min(int(end * 16), len(speech))]
            results = self.inference([piece], model=self.model, kwargs=kwargs, **cfg)
            if self.spk_model is not None:
                results[0]["spk_embedding"] = self._embed(start, end, piece, sv_segments, cfg)
            results_sorted.extend(results)
        if len(results_sorted) != n:
            return [{"key": key, "text": "", "timestamp": []}]
        restored: list[dict[str, Any]] = [{}] * n
        for j, i in enumerate(order):
            restored[i] = results_sorted[j]
        result: dict[str, Any] = {}
        for j in range(n):
            for k, v in restored[j].items():
                if k.startswith("timestamp"):
                    result.setdefault(k, [])
                    for t in v:
                        t[0] = int(t[0]) + int(vadsegments[j][0])
                        t[1] = int(t[1]) + int(vadsegments[j][0])
                    result[k].extend(v)
                elif k == "spk_embedding":
                    result[k] = v if k not in result else _cat(result[k], v)
                elif "text" in k:
                    result[k] = v if k not in result else result[k] + " " + v
                else:
                    result[k] = v if k not in result else result[k] + v
        if not len(result["text"].strip()):
            return []
        punc_res = None
        punc_array = None
        punc_input_text = None
        if self.punc_model is not None:
            punc_input_text = join_segment_texts(item.get("text", "") for item in restored)
            punc_res = self.inference(punc_input_text, model=self.punc_model,
                                      kwargs=self.punc_kwargs, **cfg)
            punc_array = punc_res[0].get("punc_array")
            result["text"] = punc_res[0]["text"]
        sentence_timestamps = result.get("timestamp", [])
        alignment_failed = False
        if punc_res is not None:
            length = len(punc_array) if punc_array is not None else -1
            if punc_array is not None and length != len(sentence_timestamps):
                punc_array = None
                alignment_failed = True
        if self.spk_model is not None and kwargs.get("return_spk_res", True):
            result["sentence_info"] = self._speaker_sentences(
                result, restored, vadsegments, sv_segments, punc_res, punc_array,
                punc_input_text, kwargs)
        elif kwargs.get("sentence_timestamp", False):
            if not len(result["text"].strip()):
                sentences: list[dict[str, Any]] = []
            elif self.punc_model is None and not sentence_timestamps:
                sentences = sentences_from_segments(restored, vadsegments)
            elif punc_res is None:
                log.warning("punctuation is required for sentence timestamps")
                sentences = []
            elif alignment_failed:
                sentences = sentences_from_segments(restored, vadsegments)
            else:
                sentences = sentences_from_punctuation(punc_array, sentence_timestamps,
                                               punc_input_text)
            result["sentence_info"] = sentences
        result.pop("spk_embedding", None)
        result["key"] = key
        return [result]

    # ------------------------------------------------------------------ speakers (torch)
    def _spk_inference(self, chunks: list[Any]) -> list[dict[str, Any]]:
        """``AutoModel.inference`` with the speaker model: its own ``inference`` on each
        batch of chunks (funasr's batch size, 1 unless configured), gradients off."""
        import torch

        kw = self.spk_kwargs
        size = max(1, int(kw.get("batch_size", 1)))
        out: list[dict[str, Any]] = []
        with torch.no_grad():
            for n in range(0, len(chunks), size):
                batch = chunks[n:n + size]
                res = self.spk_model.inference(
                    data_in=batch, key=[f"spk{n + i}" for i in range(len(batch))], **kw)
                out.extend(res[0] if isinstance(res, (list, tuple)) else res)
        return out

    def _embed(self, start: int, end: int, piece: Any, sv_segments: list[list[Any]],
               cfg: dict[str, Any]) -> Any:
        """funasr's speaker step for one VAD segment: 1.5 s chunks (``sv_chunk``), one
        CAM++ embedding each, concatenated."""
        import torch
        from funasr.models.campplus.utils import sv_chunk

        chunks = sv_chunk([[start / 1000.0, end / 1000.0, np.array(piece)]])
        sv_segments.extend(chunks)
        res = self.inference([c[2] for c in chunks], model=self.spk_model,
                             kwargs=self.spk_kwargs, **cfg)
        return torch.cat([r["spk_embedding"] for r in res], dim=0)

    def _speaker_sentences(self, result: dict[str, Any], restored: list[dict[str, Any]],
                           vadsegments: list[list[int]], sv_segments: list[list[Any]],
                           punc_res: Any, punc_array: Any, punc_input_text: str | None,
                           kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """funasr's speaker block of ``inference_with_vad``: cluster the chunks'
        embeddings (``preset_spk_num`` speakers when known) and give each sentence the
        speaker that covers most of it; sentences by punctuation, or by VAD segment when
        there is no punctuation model."""
        from funasr.models.campplus.utils import distribute_spk, postprocess

        mode = self.spk_mode if punc_res is not None else "vad_segment"
        embedding = result["spk_embedding"]
        labels = self.cb_model(embedding.cpu(), oracle_num=kwargs.get("preset_spk_num"))
        sv_output = postprocess(sorted(sv_segments, key=lambda x: x[0]), None, labels,
                                embedding.detach().cpu().numpy())
        if mode == "vad_segment":
            sentences = [{"start": seg[0], "end": seg[1], "text": rest["text"],
                          "sentence": rest["text"], "timestamp": rest.get("timestamp", [])}
                         for rest, seg in zip(restored, vadsegments, strict=False)]
        else:
            sentences = sentences_from_punctuation(punc_array, result.get("timestamp", []),
                                           punc_input_text)
        distribute_spk(sentences, sv_output)
        return sentences


def _cat(a: Any, b: Any) -> Any:
    import torch

    return torch.cat([a, b], dim=0)


__all__ = ["OnnxModels", "OrtParaformer", "OrtPunctuation"]
