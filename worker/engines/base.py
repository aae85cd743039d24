"""What every engine is to the rest of the worker: the ``Engine`` protocol.

A task's audio goes through an engine in three steps, and cross-task batching
(``worker.batching``) sits between the first two:

1. ``split(audio, hotwords, vad)`` -> ``Split``: voice activity detection (or the VAD
   result given, from VAD done ahead or a checkpoint); the speech pieces to decode, in
   the order the engine wants them decoded (shortest first; the same VAD gives the same
   pieces in the same order), what the VAD found (``Split.vad``) and whatever the engine
   needs later (``Split.state``: its own, never read outside it);
2. ``decode(pieces, hotwords)`` -> one result per piece: the model on a batch of pieces,
   which may come from several tasks (same hotwords);
3. ``assemble(split, decoded, speakers)`` -> ``Assembled``: one task's pieces put back in
   time order, punctuated, cut into sentences, labelled by speaker when asked.

``limits`` says how pieces may share a model call; ``out_of_memory`` tells an error
that a smaller batch may cure (then ``free_memory``); ``load_speakers`` loads the speaker
model the first time a task asks for labels; ``describe`` and ``close`` are for the log
and the end.  ``worker.engines.load`` chooses the engine from ``TINGJI_ENGINE``;
``tests/unit/test_engines.py`` runs both through this protocol.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from db.values import SegmentRow


@dataclass(frozen=True)
class AsrConfig:
    model: str = "paraformer-zh"
    vad_model: str | None = "fsmn-vad"
    punc_model: str | None = "ct-punc"
    device: str = "auto"
    batch_size_s: int = 300  # padded seconds per batch on a GPU
    cpu_batch_size_s: int = 60  # ... on a CPU (0: one segment per call, as funasr)
    vad_max_end_silence_ms: int | None = None
    vad_processes: int = 0  # >0: VAD in that many processes, ahead of the lane
    spk_model: str | None = "cam++"  # loaded the first time a task asks for speakers
    ncpu: int = max(1, os.cpu_count() or 1)
    engine: str = "auto"  # torch | onnx | auto (onnx on a CPU when exported, else torch)
    onnx_int8: bool = True  # the int8 graphs when the export has them
    data_dir: Path | None = None  # where ``tingji models export-onnx`` put the graphs

    def vad_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_single_segment_time": 60_000}
        if self.vad_max_end_silence_ms:
            kw["max_end_silence_time"] = self.vad_max_end_silence_ms
        return kw

    @property
    def generate_kw(self) -> dict[str, Any]:
        return {"sentence_timestamp": True, "batch_size_s": self.batch_size_s}

    @property
    def description(self) -> str:
        return " + ".join(m for m in (self.model, self.vad_model, self.punc_model) if m)

    def roles(self) -> list[tuple[str, str, str | None]]:
        """(role, setting, model) of the models the ONNX engine runs as graphs
        (``worker.engines.onnx.graphs.GRAPH_ROLES``)."""
        return [("ASR", "TINGJI_ASR_MODEL", self.model),
                ("VAD", "TINGJI_VAD_MODEL", self.vad_model),
                ("punctuation", "TINGJI_PUNC_MODEL", self.punc_model)]


class ModelLoadError(RuntimeError):
    """The ASR model could not be loaded: the worker cannot work at all."""


@dataclass(frozen=True)
class BatchLimits:
    """How pieces may share a model call: at most ``pieces`` of any length (an engine
    that never pads), or padded batches of at most ``padded_s`` seconds (``pieces``
    0; ``padded_s`` 0: one piece per call), a piece of ``threshold_s`` or longer alone."""

    pieces: int = 0
    padded_s: int = 0
    threshold_s: int = 60


@dataclass
class Split:
    """One task's audio cut into speech pieces.  ``pieces`` are sample arrays, in the
    order they are decoded; empty when the engine decodes the file whole at assembly
    (no VAD model).  ``state`` belongs to the engine that made it."""

    pieces: list[Any]
    speech_s: float
    state: Any = None
    # what the VAD found, funasr-shaped (``[{"key": ..., "value": [[beg_ms, end_ms], ...]}]``):
    # given back to ``split`` it cuts the same pieces in the same order without VAD
    # (a resumed transcription, ``worker.batching``); None without a VAD model
    vad: list[dict[str, Any]] | None = None


@dataclass
class Assembled:
    """One task's transcript: its text and its sentences with times (milliseconds)."""

    text: str
    segments: list[SegmentRow] = field(default_factory=list)


@runtime_checkable
class Engine(Protocol):
    name: str  # "torch" | "onnx"
    device: str  # "cpu", "cuda", "cuda:1"
    limits: BatchLimits
    speakers_loaded: bool

    def split(self, audio: Path, hotwords: tuple[str, ...],
              vad: list[dict[str, Any]] | None = None) -> Split: ...

    def decode(self, pieces: list[Any], hotwords: tuple[str, ...]) -> list[Any]: ...

    def assemble(self, audio: Path, split: Split, decoded: list[Any],
                 hotwords: tuple[str, ...], speakers: int | str | None) -> Assembled: ...

    def load_speakers(self) -> None: ...

    def describe(self) -> str: ...

    def out_of_memory(self, exc: BaseException) -> bool: ...

    def free_memory(self) -> None: ...

    def close(self) -> None: ...


def says_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def speech_seconds(vad_segments: list[list[int]]) -> float:
    return sum((end - start) / 1000.0 for start, end in vad_segments)


def _chars(stamps: Any) -> list[list[int]] | None:
    """Per-token [start, end] pairs, as plain integers (None when absent)."""
    if not stamps:
        return None
    return [[int(a), int(b)] for a, b in stamps]


def to_segments(result: dict[str, Any]) -> list[SegmentRow]:
    """Sentence segments from a funasr-shaped result (both engines make one):
    ``sentence_info`` when punctuation is on; otherwise sentences cut from the
    character timestamps; otherwise one segment."""
    info = result.get("sentence_info")
    out: list[SegmentRow] = []
    if info:
        for s in info:
            text = str(s.get("text", "")).strip()
            if text:
                start, end = int(s.get("start", 0)), int(s.get("end", 0))
                spk = s.get("spk")
                out.append(SegmentRow(start, max(start, end), text, _chars(s.get("timestamp")),
                                      int(spk) if spk is not None else None))
        return out
    text = str(result.get("text", "")).replace(" ", "")
    stamps = result.get("timestamp") or []
    if not text:
        return out
    if stamps and len(stamps) == len(text):
        start, buf = int(stamps[0][0]), ""
        for i, ch in enumerate(text):
            buf += ch
            gap = i + 1 < len(text) and stamps[i + 1][0] - stamps[i][1] > 600
            if len(buf) >= 20 or gap or i + 1 == len(text):
                out.append(SegmentRow(start, int(stamps[i][1]), buf,
                                      _chars(stamps[i + 1 - len(buf):i + 1])))
                buf = ""
                if i + 1 < len(text):
                    start = int(stamps[i + 1][0])
        return out
    end = int(stamps[-1][1]) if stamps else 0
    return [SegmentRow(0, end, text)]


def plain(value: Any) -> Any:
    """``value`` as JSON gives it back (lists, ints, floats, strings): numpy scalars
    and arrays become Python's.  A decoded piece kept in a checkpoint and read back is
    then what the engine's ``assemble`` gets from a run that was never interrupted."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return plain(value.tolist())
    return value


def vad_segments(vad: list[dict[str, Any]] | None) -> list[list[int]]:
    """The ``[beg_ms, end_ms]`` pairs of a funasr-shaped VAD result."""
    return [[int(a), int(b)] for r in vad or [] for a, b in r.get("value", [])]


# a space funasr leaves between two Chinese characters (tokens joined without a
# punctuation model); a space between Latin words stays
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff\uf900-\ufaff]) +(?=[\u3400-\u9fff\uf900-\ufaff])")


def assembled(result: dict[str, Any]) -> Assembled:
    return Assembled(_CJK_GAP.sub("", str(result.get("text", "")).strip()),
                     to_segments(result))
