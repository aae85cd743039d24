"""The ONNX engine (``TINGJI_ENGINE=onnx``): the ASR and punctuation models through ONNX
Runtime, with int8 weights when the export has them.

The graphs are those ``tingji models export-onnx`` writes (``worker.onnx_export``), or
a model folder's own ``model.onnx`` (the hub's ``-onnx`` models).  This step keeps
everything around the two models funasr's: the audio frontend (Kaldi fbank, LFR, CMVN),
VAD, the cutting and merging of segments, sentence timestamps and speakers.  So the
worker's guarantees hold unchanged (``worker.batching``'s cross-task groups, progress and
cancellation between model calls, time limits, one load per worker); what changes is
the arithmetic of the two models:

- **ASR**: one ONNX Runtime call per VAD segment, batch size 1.  An exported Paraformer
  graph is not padding-invariant (tingji's predictor classes are torch modules), so
  segments are never padded together: every task gets the text it gets alone, by
  construction.  On a CPU batching bought 1.5x for torch; per-segment ONNX calls cost
  about 6 % over batched ones (measured in issue 18's first step).  The graph's output
  is turned into funasr's result (tokens, character timestamps, post-processing) by
  funasr's own functions.
- **punctuation**: CT-Transformer's forward (embedding, encoder, classifier) is the
  graph; funasr's windowing and sentence logic around it are untouched.

The torch copies of both models' weights are dropped after loading: the worker holds
the ONNX graphs only.  SeACo-Paraformer's graph always runs its hotword path; with no
hotwords it gets the ``<s>`` entry alone, as FunASR's own ONNX runtime does (a trained
model then biases nothing; torch skips the path).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from worker.onnx_export import MANIFEST, export_folder

log = logging.getLogger("tingji.worker.onnx")

EXPORT_HINT = "tingji models export-onnx --quantize"
# the models the engine runs as graphs (and ``export-onnx`` exports), by role as
# ``tingji.doctor.model_roles`` names them
GRAPH_ROLES = ("ASR", "VAD", "punctuation")


class GraphsMissing(LookupError):
    """No ONNX graphs for a model: the message says how to make them."""


def find_graphs(source: str, data_dir: Path | None, role: str, setting: str) -> Path:
    """The folder with a model's ONNX graphs: the model folder itself when it holds
    ``model.onnx``, else the folder ``tingji models export-onnx`` wrote for it under
    ``data_dir``."""
    folder = Path(source).expanduser()
    if folder.is_dir() and (folder / "model.onnx").is_file():
        return folder
    exported = export_folder(data_dir, source) if data_dir is not None else None
    if exported and (exported / MANIFEST).is_file() and (exported / "model.onnx").is_file():
        return exported
    raise GraphsMissing(f"no ONNX graphs for the {role} model {source} ({setting}): "
                        f"run `{EXPORT_HINT}` once (it needs torch), or set "
                        "TINGJI_ENGINE=torch")


def graph_file(folder: Path, int8: bool) -> Path:
    """``model_quant.onnx`` when int8 is asked for and exported, else ``model.onnx``."""
    quant = folder / "model_quant.onnx"
    return quant if int8 and quant.is_file() else folder / "model.onnx"


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtParaformer:
    """Stands in for funasr's Paraformer module inside the loaded ``AutoModel`` (whose
    torch weights are then dropped): the batching code hands it the segments funasr
    cut, and it answers with funasr's per-segment results."""

    def __init__(self, folder: Path, *, int8: bool, threads: int, torch_model: Any) -> None:
        self.folder = folder
        self.path = graph_file(folder, int8)
        self.int8 = self.path.name == "model_quant.onnx"
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
        # what funasr's result building reads off the torch module
        self.sos = int(getattr(torch_model, "sos", 1))
        self.eos = int(getattr(torch_model, "eos", 2))
        self.blank_id = int(getattr(torch_model, "blank_id", 0))
        self._hotword_method = getattr(type(torch_model), "generate_hotwords_list", None)
        self._bias_cache: dict[tuple[tuple[int, ...], ...], np.ndarray] = {}

    @property
    def description(self) -> str:
        return f"onnx {'int8' if self.int8 else 'fp32'}"

    def eval(self) -> OrtParaformer:  # funasr calls it on the model it is handed
        return self

    def parameters(self) -> Any:
        """funasr reads the device off the first parameter after each call: the CPU."""
        import torch

        yield torch.empty(0)

    # ------------------------------------------------------------------ hotwords
    def hotword_ids(self, hotword: str | None, tokenizer: Any, frontend: Any
                    ) -> list[list[int]]:
        """funasr's own tokenization of the hotwords (``<s>`` last; ``<s>`` alone when
        there are none)."""
        if hotword and self._hotword_method is not None:
            ids = self._hotword_method(self, hotword, tokenizer=tokenizer, frontend=frontend)
            if ids:
                return [list(map(int, h)) for h in ids]
        return [[self.sos]]

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
            last.append(len(h) - 1)
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

    def inference(self, data_in: Any, data_lengths: Any = None, key: list[str] | None = None,
                  tokenizer: Any = None, frontend: Any = None, **kwargs: Any
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """funasr's model interface (``AutoModel.inference`` calls it with a batch of
        segments or a file): one graph call per input, results as funasr's Paraformer
        builds them, by funasr's own functions."""
        import torch
        from funasr.utils import postprocess_utils
        from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video
        from funasr.utils.timestamp_tools import ts_prediction_lfr6_standard

        samples = load_audio_text_image_video(data_in, fs=frontend.fs,
                                              audio_fs=kwargs.get("fs", 16000))
        bias = (self.bias(self.hotword_ids(kwargs.get("hotword"), tokenizer, frontend))
                if self.seaco else None)
        from worker.paraformer import decode_scope  # funasr: model thread and lanes

        def one(n: int, audio: Any) -> dict[str, Any]:
            speech, _ = extract_fbank([audio], data_type="sound", frontend=frontend)
            ids, us_alphas, us_peaks = self.forward(speech[0].numpy(), bias)
            result: dict[str, Any] = {"key": key[n] if key else f"seg{n}", "text": "",
                                      "timestamp": []}
            if not ids:
                return result
            token = tokenizer.ids2tokens(ids)
            if not len(us_alphas):
                result["text"] = postprocess_utils.sentence_postprocess(token)[0]
                return result
            with decode_scope():  # funasr's timestamp fallback, compiled (same values)
                _, stamps = ts_prediction_lfr6_standard(
                    torch.from_numpy(us_alphas.copy()), torch.from_numpy(us_peaks.copy()),
                    list(token), vad_offset=kwargs.get("begin_time", 0))
            text, stamps, _ = postprocess_utils.sentence_postprocess(token, stamps)
            result.update(text=text, timestamp=stamps)
            return result

        if self._pool is None or len(samples) < 2:
            return [one(n, a) for n, a in enumerate(samples)], {}
        return list(self._pool.map(one, range(len(samples)), samples)), {}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _keep_device(module: Any) -> None:
    """funasr reads the device off a model's first parameter after each call: one empty
    CPU parameter stands in for the weights the graph now holds."""
    import torch

    module.register_parameter("tingji_cpu", torch.nn.Parameter(torch.empty(0),
                                                               requires_grad=False))


class OrtFsmnEncoder:
    """FSMN-VAD's encoder as its graph: the frames' scores, with the four FSMN layers'
    left context carried between calls in funasr's per-stream cache (as the torch
    encoder carries it there)."""

    def __init__(self, path: Path, threads: int) -> None:
        self.session = session(path, threads)
        inputs = self.session.get_inputs()
        self.speech = inputs[0].name
        self.caches = [(i.name, tuple(d if isinstance(d, int) else 1 for d in i.shape))
                       for i in inputs[1:]]

    def __call__(self, feats: Any, cache: dict[str, Any]) -> Any:
        import torch

        feed = {self.speech: feats.numpy().astype(np.float32, copy=False)}
        for n, (name, shape) in enumerate(self.caches):
            held = cache.get(f"tingji_onnx_{n}")
            feed[name] = held if held is not None else np.zeros(shape, np.float32)
        out = self.session.run(None, feed)
        for n in range(len(self.caches)):
            cache[f"tingji_onnx_{n}"] = out[1 + n]
        return torch.from_numpy(out[0])


def swap_vad(vad_model: Any, folder: Path, *, threads: int) -> Path:
    """FSMN-VAD's encoder replaced by its fp32 graph (funasr's frontend and per-frame
    state machine stay); its torch layers dropped.  The graph file used.  Never the
    int8 one: the model is small (VAD's time is the per-frame state machine's), and
    fp32 keeps torch's segments exactly."""
    path = graph_file(folder, False)
    encoder = OrtFsmnEncoder(path, threads)
    del vad_model._modules["encoder"]
    vad_model.encoder = encoder
    _keep_device(vad_model)
    return path


def swap_punctuation(punc_model: Any, folder: Path, *, int8: bool, threads: int) -> Path:
    """CT-Transformer's forward replaced by the graph (funasr's windowing and sentence
    logic around it stay); its torch layers are dropped.  The graph file used."""
    import torch

    path = graph_file(folder, int8)
    sess = session(path, threads)

    def punc_forward(text: Any, text_lengths: Any, **_: Any) -> tuple[Any, None]:
        out = sess.run(None, {"inputs": text.numpy().astype(np.int32, copy=False),
                              "text_lengths": text_lengths.numpy().astype(np.int32,
                                                                          copy=False)})
        return torch.from_numpy(out[0]), None

    punc_model.punc_forward = punc_forward
    for layer in ("embed", "encoder", "decoder"):  # the weights the graph holds now
        if layer in punc_model._modules:
            punc_model._modules[layer] = None
    _keep_device(punc_model)
    return path


__all__ = ["EXPORT_HINT", "GRAPH_ROLES", "GraphsMissing", "OrtFsmnEncoder", "OrtParaformer",
           "find_graphs", "graph_file", "swap_punctuation", "swap_vad"]
