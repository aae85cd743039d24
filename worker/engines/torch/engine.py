"""The torch engine: funasr's ``AutoModel`` (VAD + Paraformer + punctuation), CPU or CUDA,
behind tingji's ``Engine`` protocol (``worker.engines.base``).

funasr runs a file in one call (``generate``) and batches VAD segments only inside that
file.  To batch across tasks, the engine runs ``generate`` twice per file with
``AutoModel.inference`` answered by a ``_Calls`` object (``patches.intercepting``):

- ``split``: the VAD call runs (or is answered from VAD done ahead in processes,
  ``vad_pool``), and the ASR calls funasr makes are recorded, their segments kept as the
  pieces, with empty answers so that nothing else runs;
- ``decode``: funasr's own ``inference`` on any list of pieces (of several tasks), with
  the arguments funasr used for this hotword set, inside ``paraformer.decode_scope``
  (tingji's padding-invariant CIF loop);
- ``assemble``: ``generate`` again, its VAD and ASR calls answered from the two steps
  above, so funasr's own code merges segments, punctuates, builds sentence timestamps
  and labels speakers.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any

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
from worker.engines.model_folders import FUNASR_BUILD_KW, torch_loads_tensors_only
from worker.engines.torch import patches
from worker.engines.torch.speakers import SpeakerModel, load_speaker_model
from worker.errors import load_failure

log = logging.getLogger("tingji.worker.asr")

EMPTY = {"text": "", "timestamp": []}


class _Calls:
    """Answers the ``AutoModel.inference`` calls of one ``generate``: the VAD call and
    the ASR calls, recorded (``decoded`` None) or replayed."""

    def __init__(self, model: Any, vad: list[dict[str, Any]] | None,
                 decoded: list[Any] | None = None, calls: list[int] | None = None) -> None:
        self.model, self.original = model, model.inference
        self.vad = vad
        self.decoded = decoded
        self.calls: list[int] = calls if calls is not None else []  # pieces per call
        self.pieces: list[Any] = []
        self.asr_kw: dict[str, Any] | None = None
        self._call = self._offset = 0

    def __call__(self, input: Any, *args: Any, **kw: Any) -> Any:  # noqa: A002
        sub = kw.get("model")
        if sub is not None and sub is self.model.vad_model:
            if self.vad is None:
                self.vad = copy.deepcopy(self.original(input, *args, **kw))
            return copy.deepcopy(self.vad)
        if sub is not None and sub is self.model.model and isinstance(input, list):
            n = len(input)
            if self.decoded is None:  # recording
                self.asr_kw = {k: v for k, v in kw.items() if k != "input_len"}
                self.calls.append(n)
                self.pieces.extend(input)
                return [{"key": f"seg{len(self.pieces) - n + i}", **EMPTY} for i in range(n)]
            if self._call >= len(self.calls) or self.calls[self._call] != n:
                raise RuntimeError("funasr asked for other segments than it did before")
            out = self.decoded[self._offset:self._offset + n]
            self._call += 1
            self._offset += n
            return copy.deepcopy(out)
        return self.original(input, *args, **kw)


class _State:
    """What ``split`` keeps for ``assemble``: the VAD result and funasr's call sizes."""

    def __init__(self, vad: list[dict[str, Any]] | None, calls: list[int]) -> None:
        self.vad, self.calls = vad, calls


class TorchEngine:
    name = "torch"

    def __init__(self, model: Any, config: AsrConfig, device: str) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.generate_kw = config.generate_kw
        self.limits = BatchLimits(padded_s=config.cpu_batch_size_s if device == "cpu"
                                  else config.batch_size_s)
        self.what = patches.patch_model(model)
        self.speakers: SpeakerModel | None = None
        self._asr_kw: dict[tuple[str, ...], dict[str, Any]] = {}
        self._hotword_dir: tempfile.TemporaryDirectory[str] | None = None
        self._hotword_files: dict[tuple[str, ...], str] = {}

    @classmethod
    def load(cls, config: AsrConfig, device: str) -> TorchEngine:
        """funasr's ``AutoModel`` with the VAD and punctuation models."""
        from worker.engines.model_sources import unavailable

        why = unavailable(config.roles())  # seconds, where funasr alone retries the hub
        if why is not None:
            raise ModelLoadError(f"cannot load the models: {why}")
        try:
            import torch

            if not torch_loads_tensors_only(torch.__version__):
                raise ModelLoadError(
                    f"torch {torch.__version__} would let a model folder's checkpoint run "
                    "code when funasr loads it (torch.load reads tensors only from 2.6): "
                    "pip install 'torch>=2.6'")
            patches.import_funasr()  # a few seconds: only ever on the model lane
            from funasr import AutoModel

            patches.apply()
        except ImportError as exc:
            raise ModelLoadError(
                f"the torch engine needs {exc.name or 'funasr'}, which is not installed: "
                "pip install 'tingji[worker]', or run the ONNX engine (graphs made once "
                f"with `tingji models export-onnx --quantize` where torch is installed, "
                "TINGJI_ENGINE=onnx)") from None
        kwargs: dict[str, Any] = dict(model=config.model, device=device, ncpu=config.ncpu,
                                      **FUNASR_BUILD_KW)
        if config.vad_model:  # funasr builds these from their own kwargs, not the ASR's
            kwargs.update(vad_model=config.vad_model,
                          vad_kwargs={**config.vad_kwargs(), **FUNASR_BUILD_KW})
        if config.punc_model:
            kwargs.update(punc_model=config.punc_model, punc_kwargs=dict(FUNASR_BUILD_KW))
        try:
            model = AutoModel(**kwargs)
        except Exception as exc:
            raise ModelLoadError(load_failure(f"ASR model {config.description}",
                                              config.model, "TINGJI_ASR_MODEL", exc)) from exc
        return cls(model, config, device)

    # ------------------------------------------------------------------ protocol
    @property
    def speakers_loaded(self) -> bool:
        return self.speakers is not None

    def describe(self) -> str:
        return self.what

    def split(self, audio: Path, hotwords: tuple[str, ...],
              vad: list[dict[str, Any]] | None = None) -> Split:
        if self.model.vad_model is None:  # funasr decodes the file whole: at assembly
            return Split([], 0.0, _State(None, []))
        calls = _Calls(self.model, vad)
        with patches.intercepting(self.model, calls):
            self.model.generate(input=str(audio), **self.generate_kw, **self._bias(hotwords))
        if calls.asr_kw is not None:
            self._asr_kw[hotwords] = calls.asr_kw
        speech = speech_seconds(vad_segments(calls.vad))
        return Split(calls.pieces, speech, _State(calls.vad, calls.calls), vad=calls.vad)

    def decode(self, pieces: list[Any], hotwords: tuple[str, ...]) -> list[Any]:
        from worker.engines.torch.paraformer import decode_scope

        kw = dict(self._asr_kw.get(hotwords) or {})
        kwargs = kw.pop("kwargs", None) or self.model.kwargs
        kwargs["batch_size"] = max(int(kwargs.get("batch_size") or 1), len(pieces))
        kw.pop("model", None)
        with decode_scope():
            res = self.model.inference(pieces, input_len=None, model=self.model.model,
                                       kwargs=kwargs, **kw)
        if not res:
            # funasr answers a batch whose pieces all decode to no tokens with []
            return [{"key": f"seg{i}", **EMPTY} for i in range(len(pieces))]
        if len(res) != len(pieces):
            raise RuntimeError(f"the model returned {len(res)} results for "
                               f"{len(pieces)} segments")
        return res

    def assemble(self, audio: Path, split: Split, decoded: list[Any],
                 hotwords: tuple[str, ...], speakers: int | str | None) -> Assembled:
        state: _State = split.state
        extra: dict[str, Any] = {}
        if speakers is not None and self.speakers is not None:
            self.model.spk_model = self.speakers.model
            self.model.spk_kwargs = dict(self.speakers.kwargs)
            if isinstance(speakers, int):
                extra["preset_spk_num"] = speakers
        try:
            if self.model.vad_model is None:
                res = self.model.generate(input=str(audio), **self.generate_kw,
                                          **self._bias(hotwords), **extra)
            else:
                calls = _Calls(self.model, state.vad, decoded, state.calls)
                with patches.intercepting(self.model, calls):
                    res = self.model.generate(input=str(audio), **self.generate_kw,
                                              **self._bias(hotwords), **extra)
        finally:
            self.model.spk_model = None
        return assembled(res[0] if res else dict(EMPTY))

    def load_speakers(self) -> None:
        sm = load_speaker_model(self.config, self.device)
        self.model.cb_model = sm.cluster
        self.model.spk_mode = "punc_segment"
        patches.add_speaker_model(self.model, sm.kwargs)  # funasr's kwargs snapshot
        self.speakers = sm

    def out_of_memory(self, exc: BaseException) -> bool:
        import torch

        return isinstance(exc, torch.cuda.OutOfMemoryError) or says_out_of_memory(exc)

    def free_memory(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def close(self) -> None:
        if self._hotword_dir is not None:
            self._hotword_dir.cleanup()
            self._hotword_dir = None
            self._hotword_files.clear()

    # ------------------------------------------------------------------ hotwords
    def _bias(self, hotwords: tuple[str, ...]) -> dict[str, str]:
        """funasr's hotword argument: a file tingji writes (funasr reads a string as a
        path or URL), one per hotword set."""
        if not hotwords:
            return {}
        path = self._hotword_files.get(hotwords)
        if path is None:
            if len(self._hotword_files) >= 16:  # a long-lived worker: keep a few sets
                self.close()  # (batching runs one hotword set at a time, start to end)
                self._asr_kw = {k: v for k, v in self._asr_kw.items() if not k}
            if self._hotword_dir is None:
                self._hotword_dir = tempfile.TemporaryDirectory(prefix="tingji-hotwords-")
            path = str(Path(self._hotword_dir.name) / f"hotwords{len(self._hotword_files)}.txt")
            Path(path).write_text("\n".join(hotwords) + "\n", encoding="utf-8")
            self._hotword_files[hotwords] = path
        return {"hotword": path}


__all__ = ["TorchEngine"]
