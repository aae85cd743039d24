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
  funasr's.

SeACo-Paraformer's graph always runs its hotword path; with no hotwords it gets the
``<s>`` entry alone, as FunASR's own ONNX runtime does (a trained model then biases
nothing; torch skips the path).  Speaker labels need the CAM++ model, which runs on
torch: where torch and funasr are installed, a task that asks for them gets funasr's
speaker step around this engine's segments (torch is imported then, not before); without
them (``tingji[worker-onnx]``) it fails with a message that says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.engines.onnx.frontend import Frontend, Tokens, load_audio, token_times
from worker.engines.onnx.graphs import (
    EXPORT_HINT,
    GraphsMissing,
    graph_file,
    read_config,
    session,
)
from worker.engines.onnx.punctuation import punctuate, read_seg_dict, words_for_punctuation
from worker.engines.onnx.text import (
    join_segment_texts,
    sentences_from_punctuation,
    sentences_from_segments,
    tokens_to_text,
)

if TYPE_CHECKING:
    from worker.engines.onnx.vad import FsmnVad

log = logging.getLogger("tingji.worker.onnx")


_HAN_OR_DIGITS = re.compile(r"[\u4E00-\u9FA50-9]+")


def _hotword_seg_tokenize(words: list[str], seg_dict: dict[str, str]) -> list[str]:
    """A hotword line's tokens as SeACo-Paraformer spells hotwords (funasr's
    ``generate_hotwords_list``, not the tokenizer's own split): a word the seg_dict
    knows as it spells it, a word of Chinese characters or digits character by
    character (``<unk>`` for one it does not know), any other word ``<unk>``."""
    tokens: list[str] = []
    for word in (w.lower() for w in words):
        if word in seg_dict:
            tokens += seg_dict[word].split()
        elif _HAN_OR_DIGITS.fullmatch(word):
            for char in word:
                tokens += seg_dict[char].split() if char in seg_dict else ["<unk>"]
        else:
            tokens.append("<unk>")
    return tokens


class OrtParaformer:
    """Paraformer (or SeACo-Paraformer) as its graph: features, one graph call per
    segment, funasr's result for each (text, character timestamps)."""

    def __init__(self, folder: Path, *, int8: bool, threads: int) -> None:
        self.folder = folder
        conf = read_config(folder)
        self.path = graph_file(folder, int8)
        self.int8 = self.path.name == "model_quant.onnx"
        self.frontend = Frontend(conf.get("frontend_conf") or {}, folder / "am.mvn")
        self.tokens = Tokens(folder)
        seg = folder / "seg_dict"
        self.seg_dict = read_seg_dict(seg) if seg.is_file() else None
        model_conf = conf.get("model_conf") or {}
        self.sos = int(model_conf.get("sos", 1))
        self.eos = int(model_conf.get("eos", 2))
        self.blank_id = int(model_conf.get("blank_id", 0))
        # segments in parallel, one thread each (ONNX Runtime releases the GIL): on 2
        # cores 1.4x the throughput of one call at a time on 2 threads
        self.lanes = max(1, threads)
        self.session = session(self.path, 1)
        self._pool = (ThreadPoolExecutor(self.lanes, thread_name_prefix="tingji-onnx")
                      if self.lanes > 1 else None)
        names = {i.name for i in self.session.get_inputs()}
        self.seaco = "bias_embed" in names
        self.eb = None
        if self.seaco:
            eb = folder / "model_eb.onnx"
            if not eb.is_file():
                raise GraphsMissing(f"{folder} has no model_eb.onnx (SeACo-Paraformer's "
                                    f"hotword embedder): run `{EXPORT_HINT} --force`")
            self.eb = session(eb, threads)
        self._bias_cache: dict[tuple[tuple[int, ...], ...], np.ndarray] = {}

    @property
    def description(self) -> str:
        return f"onnx {'int8' if self.int8 else 'fp32'}"

    # ------------------------------------------------------------------ hotwords
    def hotword_ids(self, hotword: str | None) -> list[list[int]]:
        """funasr's tokenization of a hotword file (one per line, ``<s>`` last), or
        ``<s>`` alone when there are none."""
        if not hotword or not (hotword.endswith(".txt") and os.path.exists(hotword)):
            return [[self.sos]]
        ids = []
        with open(hotword, encoding="utf-8") as fin:
            for line in fin.readlines():
                words = line.strip().split()
                if self.seg_dict is not None:
                    words = _hotword_seg_tokenize(words, self.seg_dict)
                ids.append(self.tokens.tokens2ids(words))
        ids.append([self.sos])
        return ids

    def bias(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """The bias embedding (1, hotwords, width): the hotword LSTM's output at each
        hotword's last token, as SeACo-Paraformer selects it."""
        key = tuple(tuple(h) for h in ids)
        cached = self._bias_cache.get(key)
        if cached is not None:
            return cached
        assert self.eb is not None
        feed = self.eb.get_inputs()[0]
        # funasr's exporter fixes the token axis (10); longer hotwords are cut there
        width = feed.shape[1] if isinstance(feed.shape[1], int) else max(map(len, ids))
        pad = np.zeros((len(ids), width), dtype=np.int32)
        last = []
        for n, h in enumerate(ids):
            h = list(h)[:width]
            pad[n, :len(h)] = h
            last.append(max(len(h) - 1, 0))
        out = self.eb.run(None, {feed.name: pad})[0]  # (tokens, hotwords, width)
        selected = out[last, np.arange(len(ids))]  # (hotwords, width)
        bias = np.ascontiguousarray(selected[None].astype(np.float32))
        if len(self._bias_cache) > 16:
            self._bias_cache.clear()
        self._bias_cache[key] = bias
        return bias

    # ------------------------------------------------------------------ decoding
    def forward(self, feats: np.ndarray, bias: np.ndarray | None
                ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """One segment's features (frames, dims) -> token ids (blank, <s>, </s> left
        out) and the timestamp head's upsampled alphas and peaks."""
        feed = {"speech": feats[None].astype(np.float32, copy=False),
                "speech_lengths": np.array([feats.shape[0]], dtype=np.int32)}
        if self.seaco:
            feed["bias_embed"] = bias
        outs = self.session.run(None, feed)
        logits, token_num = outs[0], int(outs[1][0])
        ids = logits[0, :max(token_num, 0)].argmax(-1).tolist()
        ids = [i for i in ids if i not in (self.eos, self.sos, self.blank_id)]
        frames = feats.shape[0] * 3
        us_alphas = outs[2][0, :frames] if len(outs) > 3 else np.zeros(0, np.float32)
        us_peaks = outs[3][0, :frames] if len(outs) > 3 else np.zeros(0, np.float32)
        return ids, us_alphas, us_peaks

    def decode(self, audio: np.ndarray, bias: np.ndarray | None, key: str,
               begin_ms: float = 0.0) -> dict[str, Any]:
        """One segment's samples -> funasr's result for it."""
        result: dict[str, Any] = {"key": key, "text": "", "timestamp": []}
        if len(audio) == 0:
            return result
        ids, us_alphas, us_peaks = self.forward(self.frontend(audio), bias)
        if not ids:
            return result
        token = self.tokens.ids2tokens(ids)
        if not len(us_alphas):
            result["text"] = tokens_to_text(token)[0]
            return result
        stamps = token_times(us_alphas, us_peaks, list(token), offset_ms=begin_ms)
        text, stamps, _ = tokens_to_text(token, stamps)
        result.update(text=text, timestamp=stamps)
        return result

    def __call__(self, inputs: list[Any], hotword: str | None, begin_ms: float = 0.0
                 ) -> list[dict[str, Any]]:
        """A list of segments (sample arrays, or a file path for a whole file)."""
        samples = [load_audio(Path(a)) if isinstance(a, (str, Path)) else np.asarray(
            a, dtype=np.float32) for a in inputs]
        bias = self.bias(self.hotword_ids(hotword)) if self.seaco else None

        def one(n: int) -> dict[str, Any]:
            return self.decode(samples[n], bias, f"seg{n}", begin_ms)

        if self._pool is None or len(samples) < 2:
            return [one(n) for n in range(len(samples))]
        return list(self._pool.map(one, range(len(samples))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class OrtPunctuation:
    """CT-Transformer with its forward as a graph: funasr's ``CTTransformer.inference``
    (mini-sentences of 20 words, the cache of the unfinished sentence, the final
    full stop), on a text."""

    def __init__(self, folder: Path, *, int8: bool, threads: int) -> None:
        conf = read_config(folder)
        model_conf = conf.get("model_conf") or {}
        self.punc_list = list(model_conf.get("punc_list") or [])
        if not self.punc_list:
            raise GraphsMissing(f"{folder}/config.yaml names no punc_list")
        self.sentence_end_id = int(model_conf.get("sentence_end_id", 3))
        self.tokens = Tokens(folder)
        self.path = graph_file(folder, int8)
        self.session = session(self.path, threads)
        self.jieba = None
        user_dict = self._jieba_dict(folder, conf)
        if user_dict is not None:
            import jieba

            self.jieba = jieba.Tokenizer()
            self.jieba.load_userdict(str(user_dict))

    @staticmethod
    def _jieba_dict(folder: Path, conf: dict[str, Any]) -> Path | None:
        """The word-level model's jieba user dictionary, as funasr finds it (named in
        ``configuration.json`` or the config)."""
        names = [conf.get("jieba_usr_dict")]
        meta = folder / "configuration.json"
        if meta.is_file():
            try:
                names.append(json.loads(meta.read_text(encoding="utf-8"))
                             .get("file_path_metas", {}).get("jieba_usr_dict"))
            except (ValueError, AttributeError):
                pass
        for name in names:
            if isinstance(name, str) and (folder / Path(name).name).is_file():
                return folder / Path(name).name
        return None

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {"inputs": ids[None].astype(np.int32),
                                      "text_lengths": np.array([len(ids)], np.int32)})
        return np.asarray(out[0]).reshape(-1, out[0].shape[-1]).argmax(-1)

    def __call__(self, text: str) -> dict[str, Any]:
        if not text or not text.strip():
            return {"text": "", "punc_array": None}
        words = words_for_punctuation(text, self.jieba)
        out, marks = punctuate(words, self.tokens.tokens2ids(words), self._forward,
                               self.punc_list, self.sentence_end_id,
                               word_level=self.jieba is not None)
        return {"text": out, "punc_array": marks}


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
