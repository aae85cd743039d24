"""The export stage's work: the result files (``tingji.results``), the audio kept for
the page to play along (``TINGJI_KEEP_AUDIO``) and, where asked, the video with the
subtitles burned in (``worker.stages.burn``), all under ``results/<task>/``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from db.values import SegmentRow
from tingji.results import result_files
from tingji.taskfiles import AUDIO_FILE, TaskFiles
from worker.stages.burn import VIDEO_FILE, burn, has_video
from worker.stages.media import encode_opus


async def export(files: TaskFiles, *, title: str, payload: dict[str, Any],
                 result: dict[str, Any], segments: Sequence[SegmentRow], audio: Path,
                 keep_audio: bool, video: Path | None) -> dict[str, Any]:
    """Writes the task's files; what the export checkpoint records of them."""
    rendered = result_files(task_id=files.task_id, title=title, payload=payload,
                            result=result, segments=segments)
    names = await asyncio.to_thread(files.write_results, rendered)
    out: dict[str, Any] = {"dir": str(files.results.relative_to(files.data_dir)),
                           "files": names, "audio": None}
    if keep_audio and audio.is_file():  # for the page to play along
        size = await encode_opus(audio, files.results / AUDIO_FILE)
        out["audio"] = {"file": AUDIO_FILE, "bytes": size, "kbps": 32}
    if (payload.get("options") or {}).get("burn_subtitles"):
        out["video"] = await _burned(files, result, video)
    return out


async def _burned(files: TaskFiles, result: dict[str, Any], video: Path | None
                  ) -> dict[str, Any]:
    """``{"file", "bytes", "subtitles"}``, or ``{"error"}`` where there is no picture to
    burn them into (the task still completes: its other results stand)."""
    if video is None or not video.is_file():
        return {"error": "no video was kept for this task (a multi-part video, or a "
                         "source fetched on another machine)"}
    if not await has_video(video):
        return {"error": "the source has no video stream (audio only)"}
    lang = (result.get("translation") or {}).get("lang")
    srt = files.results / ("result.bilingual.srt" if lang else "result.srt")
    size = await burn(video, srt, files.results / VIDEO_FILE)
    return {"file": VIDEO_FILE, "bytes": size, "subtitles": "bilingual" if lang else "zh"}
