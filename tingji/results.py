"""A completed task's result: the ``tasks.result`` JSON column's shape (``TaskResult``),
written by the worker's export stage and read by the API, the command line and the
files; and the one function that renders a task's result files, for the worker (into
``results/<task id>/``) and for the API (downloads, speaker renames).

Rows written by older versions may lack newer keys: readers use ``.get``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from tingji.formats import SegmentLike, render_all
from tingji.taskfiles import source_of


class TaskResult(TypedDict, total=False):
    title: str
    text: str  # the transcript; "[S1] ..." lines when speakers are labelled
    polished_text: str | None  # the LLM's polish (None: not asked, skipped or failed)
    summary: str | None
    segments: int  # how many sentences (the rows are in ``segments``)
    duration_s: float  # of the audio
    speech_s: float | None  # of it, speech (the VAD's)
    # the LLM's chapters when asked ({"start_ms", "title", "summary", "sentence"}: the
    # number of the sentence it starts on), else the video's own (as video_chapters)
    chapters: list[dict[str, Any]]
    video_chapters: list[dict[str, Any]]  # the video's own chapters or parts (yt-dlp)
    mindmap: dict[str, Any] | None  # {"title", "children": [...]}, nested (LLM)
    # {"lang", "text", "sentences": one translation per segment, in order} (LLM)
    translation: dict[str, Any] | None
    model: str | None  # "paraformer-zh + fsmn-vad + ct-punc", or the folders'
    device: str | None  # "cpu", "cuda", "cuda:1"
    hotwords: list[str]
    speakers: int | None  # how many were labelled (None: not asked)
    speaker_names: dict[str, str]  # "S1" -> a name (PATCH /api/v1/task/{id}/speakers)
    asr_group: dict[str, Any] | None  # tasks transcribed together, batch sizes
    asr_rtf: float | None  # transcription seconds per second of audio
    llm_tokens_in: int
    llm_tokens_out: int
    llm: dict[str, Any]  # per LLM stage: model, tokens, or why it was skipped
    files: list[str]  # the result files written (result.txt, ...)
    # {"file": "audio.opus", "bytes", "kbps"}: the audio kept beside the results
    # (TINGJI_KEEP_AUDIO), served by GET /api/v1/task/{id}/audio; None: not kept
    audio: dict[str, Any] | None
    stage_seconds: dict[str, float]  # each stage's time


def result_files(*, task_id: str, title: str, payload: dict[str, Any] | None,
                 result: TaskResult | dict[str, Any], segments: Sequence[SegmentLike],
                 meta: dict[str, Any] | None = None) -> dict[str, str]:
    """Every format's text (txt, md, json, srt, vtt), by extension."""
    return render_all(task_id=task_id, title=title, source=source_of(payload) or "",
                      result=dict(result), segments=segments, meta=meta)


__all__ = ["TaskResult", "result_files"]
