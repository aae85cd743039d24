"""Burned-in subtitles (``burn_subtitles: true``): after export, ffmpeg draws the task's
SRT (bilingual when the task was translated) onto its video with libass, in a font
with Chinese glyphs from the system, into ``results/<task>/video.mp4`` (H.264 and AAC,
``+faststart`` so that a browser plays it while it downloads).

The video is the fetched media itself: an uploaded file, or for a URL what yt-dlp
downloaded in a single file with picture and sound (``TINGJI_MAX_VIDEO_MB``).  A
source without a picture stream is no error: the task completes, and the result says
why there is no video (the download answers 409).
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

from worker.errors import RetryableTaskError
from worker.stages.media import _INPUT_GUARD, _ffmpeg, probe

VIDEO_FILE = "video.mp4"


@cache
def cjk_font() -> str | None:
    """The family fontconfig picks for Chinese text, for libass's ``FontName``."""
    if shutil.which("fc-match") is None:
        return None
    out = subprocess.run(["fc-match", "-f", "%{family[0]}", ":lang=zh"], check=False,
                         capture_output=True, text=True, timeout=10).stdout.strip()
    return out or None


async def has_video(src: Path) -> bool:
    return (await probe(src)).has_video


async def burn(video: Path, srt: Path, dst: Path) -> int:
    """``video`` with ``srt`` drawn on it, at ``dst`` (written under a temporary name,
    then renamed); its size in bytes.  ``srt`` and ``dst`` share a folder: ffmpeg runs
    there, so the subtitle file's name needs no escaping in the filter graph."""
    assert srt.parent == dst.parent
    style = "Outline=1,Shadow=0,MarginV=12"
    if font := cjk_font():
        style = f"FontName={font},{style}"
    tmp = dst.with_name(f".{dst.name}.part.mp4")
    try:
        code, err = await _ffmpeg(
            "-loglevel", "error", "-y", *_INPUT_GUARD, "-i", str(video.resolve()),
            "-map", "0:v:0", "-map", "0:a:0?",
            "-vf", f"subtitles=filename={srt.name}:charenc=UTF-8:force_style='{style}'",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", "-f", "mp4", tmp.name,
            cwd=dst.parent)
        if code != 0:
            raise RetryableTaskError(f"ffmpeg could not burn the subtitles: "
                                     f"{err.strip()[-300:]}", type="BurnFailed")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dst)
    return dst.stat().st_size
