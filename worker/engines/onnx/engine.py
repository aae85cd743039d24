"""The ONNX engine (``TINGJI_ENGINE=onnx``): VAD, ASR and punctuation through ONNX
Runtime, with int8 weights when the export has them, and neither torch nor funasr
imported (a worker installed with ``tingji[worker-onnx]`` has neither).

The graphs are those ``tingji models export-onnx`` writes (``export``), or a model
folder's own ``model.onnx`` (the hub's ``-onnx`` models).  Around them, tingji's own
code gives funasr's answers without torch: the frontend and token timestamps
(``frontend``), the VAD state machine and the cutting of segments (``vad``), the
result text and sentences (``text``) and the punctuation windows (``punctuation``).
``OnnxEngine`` implements the ``Engine`` protocol (``worker.engines.base``) with them:
``split`` is the VAD, ``decode`` the Paraformer graph on any pieces, ``assemble``
funasr's merge of one file's pieces, punctuation and sentences.

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
from typing import Any

import numpy as np

from worker.engines.base import (
    AsrConfig,
    Assembled,
    BatchLimits,
    ModelLoadError,
    Split,
    assembled,
    says_out_of_memory,
    speech_seconds,
    vad_segments,
)
from worker.engines.onnx.frontend import load_audio
from worker.engines.onnx.graphs import EXPORT_HINT, GraphsMissing, graph_file, read_config
from worker.engines.onnx.models import OrtParaformer, OrtPunctuation
from worker.engines.onnx.text import (
    join_segment_texts,
    sentences_from_punctuation,
    sentences_from_segments,
)
from worker.engines.onnx.vad import FsmnVad

log = logging.getLogger("tingji.worker.onnx")

SAMPLES_PER_MS = 16


class _State:
    """What ``split`` keeps for ``assemble``: the file's VAD segments (ms, time order)
    and the order its pieces were handed out in (shortest first)."""

    def __init__(self, key: str, vad: list[list[int]], order: list[int]) -> None:
        self.key, self.vad, self.order = key, vad, order


class OnnxEngine:
    name = "onnx"
    device = "cpu"  # ONNX Runtime's CPU provider

    def __init__(self, graphs: dict[str, Path], config: AsrConfig) -> None:
        threads = config.ncpu
        self.config = config
        self.asr = OrtParaformer(graphs["ASR"], int8=config.onnx_int8, threads=threads)
        self.vad: FsmnVad | None = None
        self.punc: OrtPunctuation | None = None
        if "VAD" in graphs:
            folder = graphs["VAD"]
            self.vad = FsmnVad(folder, graph_file(folder, False), read_config(folder),
                               config.vad_kwargs(), threads)
        if "punctuation" in graphs:
            self.punc = OrtPunctuation(graphs["punctuation"], int8=config.onnx_int8,
                                       threads=threads)
        # unpadded: one graph call per piece, two per lane in flight
        self.limits = BatchLimits(pieces=2 * self.asr.lanes)
        self.speakers: Any = None  # worker.engines.torch.speakers.SpeakerModel, on demand

    @classmethod
    def load(cls, config: AsrConfig, graphs: dict[str, Path]) -> OnnxEngine:
        """Neither torch nor funasr is imported."""
        try:
            return cls(graphs, config)
        except GraphsMissing as exc:
            raise ModelLoadError(str(exc)) from None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ModelLoadError(f"cannot load the ONNX graphs: {type(exc).__name__}: "
                                 f"{first} (`{EXPORT_HINT} --force` exports them again)"
                                 ) from exc

    # ------------------------------------------------------------------ protocol
    @property
    def speakers_loaded(self) -> bool:
        return self.speakers is not None

    def describe(self) -> str:
        done = [f"ASR {self.asr.path}"]
        if self.vad is not None:
            done.append(f"VAD {self.vad.path}")
        if self.punc is not None:
            done.append(f"punctuation {self.punc.path}")
        return ", ".join(done)

    def split(self, audio: Path, hotwords: tuple[str, ...],
              vad: list[dict[str, Any]] | None = None) -> Split:
        speech = load_audio(audio)
        if self.vad is None:  # the file whole, as funasr without a VAD model
            return Split([speech], len(speech) / 1000 / SAMPLES_PER_MS, None)
        segments = vad_segments(vad) if vad is not None else self.vad(speech)
        order = sorted(range(len(segments)), key=lambda i: segments[i][1] - segments[i][0])
        pieces = [speech[int(segments[i][0] * SAMPLES_PER_MS):
                         min(int(segments[i][1] * SAMPLES_PER_MS), len(speech))]
                  for i in order]
        return Split(pieces, speech_seconds(segments), _State(audio.stem, segments, order),
                     vad=[{"key": audio.stem, "value": segments}])

    def decode(self, pieces: list[Any], hotwords: tuple[str, ...]) -> list[Any]:
        return self.asr(pieces, hotwords)

    def assemble(self, audio: Path, split: Split, decoded: list[Any],
                 hotwords: tuple[str, ...], speakers: int | str | None) -> Assembled:
        state: _State | None = split.state
        if state is None:  # no VAD: one piece, no punctuation (funasr's generate)
            return assembled(decoded[0] if decoded else {"text": "", "timestamp": []})
        return assembled(self._merge(state, split.pieces, decoded, speakers))

    def load_speakers(self) -> None:
        from worker.engines.torch.speakers import load_speaker_model

        self.speakers = load_speaker_model(self.config, self.device)

    def out_of_memory(self, exc: BaseException) -> bool:
        return says_out_of_memory(exc)

    def free_memory(self) -> None:
        return None

    def close(self) -> None:
        self.asr.close()

    # ------------------------------------------------------------------ one file
    def _merge(self, state: _State, pieces: list[Any], decoded: list[Any],  # noqa: C901
               speakers: int | str | None) -> dict[str, Any]:
        """funasr's ``AutoModel.inference_with_vad`` after its ASR calls: the pieces'
        results back in time order, timestamps moved by their segment's start, the text
        punctuated, sentences (labelled by speaker when asked)."""
        vad, n = state.vad, len(state.vad)
        if not n:
            return {"key": state.key, "text": "", "timestamp": []}
        restored: list[dict[str, Any]] = [{}] * n
        in_time: list[Any] = [None] * n
        for j, i in enumerate(state.order):
            restored[i], in_time[i] = decoded[j], pieces[j]
        labels = speakers is not None and self.speakers is not None
        result: dict[str, Any] = {}
        for j in range(n):
            for k, v in restored[j].items():
                if k.startswith("timestamp"):
                    result.setdefault(k, [])
                    for t in v:
                        t[0] = int(t[0]) + int(vad[j][0])
                        t[1] = int(t[1]) + int(vad[j][0])
                    result[k].extend(v)
                elif "text" in k:
                    result[k] = v if k not in result else result[k] + " " + v
                elif k != "key":
                    result[k] = v if k not in result else result[k] + v
        if not len(result["text"].strip()):
            return {}
        punc_array = punc_text = None
        if self.punc is not None:
            punc_text = join_segment_texts(item.get("text", "") for item in restored)
            punctuated = self.punc(punc_text)
            punc_array = punctuated.get("punc_array")
            result["text"] = punctuated["text"]
        stamps = result.get("timestamp", [])
        misaligned = punc_array is not None and len(punc_array) != len(stamps)
        if misaligned:
            punc_array = None
        if labels:
            result["sentence_info"] = self._speaker_sentences(
                result, restored, in_time, vad, punc_array, punc_text, speakers)
        elif not len(result["text"].strip()):
            result["sentence_info"] = []
        elif self.punc is None:  # funasr: sentences by VAD segment without timestamps
            result["sentence_info"] = [] if stamps else sentences_from_segments(restored, vad)
        elif misaligned:
            result["sentence_info"] = sentences_from_segments(restored, vad)
        else:
            result["sentence_info"] = sentences_from_punctuation(punc_array, stamps,
                                                                 punc_text)
        result["key"] = state.key
        return result

    # ------------------------------------------------------------------ speakers (torch)
    def _speaker_sentences(self, result: dict[str, Any], restored: list[dict[str, Any]],
                           pieces: list[Any], vad: list[list[int]], punc_array: Any,
                           punc_text: str | None, speakers: int | str | None
                           ) -> list[dict[str, Any]]:
        """funasr's speaker step of ``inference_with_vad``: each VAD segment in 1.5 s
        chunks (``sv_chunk``), one CAM++ embedding per chunk, clustered (``speakers``
        of them when known), and each sentence given the speaker that covers most of it;
        sentences by punctuation, or by VAD segment without a punctuation model."""
        import torch
        from funasr.models.campplus.utils import distribute_spk, postprocess, sv_chunk

        chunks: list[list[Any]] = []
        embeddings = []
        with torch.no_grad():
            for (start, end), piece in zip(vad, pieces, strict=True):
                mine = sv_chunk([[start / 1000.0, end / 1000.0, np.array(piece)]])
                chunks.extend(mine)
                embeddings.extend(r["spk_embedding"] for r in self._embed([c[2] for c in mine]))
        embedding = torch.cat(embeddings, dim=0)
        labels = self.speakers.cluster(embedding.cpu(), oracle_num=speakers
                                       if isinstance(speakers, int) else None)
        sv_output = postprocess(sorted(chunks, key=lambda x: x[0]), None, labels,
                                embedding.detach().cpu().numpy())
        if self.punc is None:
            sentences = [{"start": seg[0], "end": seg[1], "text": rest["text"],
                          "sentence": rest["text"], "timestamp": rest.get("timestamp", [])}
                         for rest, seg in zip(restored, vad, strict=False)]
        else:
            sentences = sentences_from_punctuation(punc_array, result.get("timestamp", []),
                                                   punc_text)
        distribute_spk(sentences, sv_output)
        return sentences

    def _embed(self, chunks: list[Any]) -> list[dict[str, Any]]:
        """The speaker model's ``inference`` on batches of chunks (funasr's batch size,
        1 unless configured)."""
        kw = self.speakers.kwargs
        size = max(1, int(kw.get("batch_size", 1)))
        out: list[dict[str, Any]] = []
        for n in range(0, len(chunks), size):
            batch = chunks[n:n + size]
            res = self.speakers.model.inference(
                data_in=batch, key=[f"spk{n + i}" for i in range(len(batch))], **kw)
            out.extend(res[0] if isinstance(res, (list, tuple)) else res)
        return out


__all__ = ["OnnxEngine"]
