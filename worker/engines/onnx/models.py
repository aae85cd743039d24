"""The ONNX engine's two text models as graphs: ``OrtParaformer`` (Paraformer or
SeACo-Paraformer: features, one graph call per segment, text and character timestamps)
and ``OrtPunctuation`` (CT-Transformer's forward pass inside tingji's windowing).
``worker.engines.onnx.engine`` runs them beside the VAD, as funasr's pipeline does."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.engines.onnx.frontend import Frontend, Tokens, token_times
from worker.engines.onnx.graphs import (
    EXPORT_HINT,
    GraphsMissing,
    graph_file,
    read_config,
    session,
)
from worker.engines.onnx.punctuation import punctuate, read_seg_dict, words_for_punctuation
from worker.engines.onnx.text import (
    tokens_to_text,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("tingji.worker.onnx")


_HAN_OR_DIGITS = re.compile(r"[\u4E00-\u9FA50-9]+")


def hotword_tokens(words: list[str], seg_dict: dict[str, str]) -> list[str]:
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
    def hotword_ids(self, hotwords: Sequence[str]) -> list[list[int]]:
        """funasr's tokenization of hotwords (one per line of its hotword file, ``<s>``
        last), or ``<s>`` alone when there are none."""
        ids = []
        for line in hotwords:
            words = line.strip().split()
            if self.seg_dict is not None:
                words = hotword_tokens(words, self.seg_dict)
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

    def __call__(self, inputs: list[Any], hotwords: Sequence[str] = (), begin_ms: float = 0.0
                 ) -> list[dict[str, Any]]:
        """A list of segments (sample arrays), several at once on the lanes."""
        samples = [np.asarray(a, dtype=np.float32) for a in inputs]
        bias = self.bias(self.hotword_ids(hotwords)) if self.seaco else None

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
