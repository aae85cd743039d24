"""Platform subtitles first (``subtitles_first``): a video's own human-made Chinese
subtitles, as yt-dlp finds them (its ``subtitles``, never ``automatic_captions``),
become the transcript's sentences with their cue times, and ASR is skipped.

yt-dlp downloads the chosen track beside the media (WebVTT or SRT, through its own
downloader and so under the egress policy); this module chooses the language and
reads the file into cues: times in milliseconds, markup and cue settings dropped,
empty and zero-length cues skipped, times made non-decreasing.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

# what yt-dlp is asked for, in this order: Chinese of any script or region
LANGUAGES = ("zh-Hans", "zh-CN", "zh", "zh-Hant", "zh-TW", "zh-HK", "cmn")
_PATTERN = re.compile(r"^(zh|cmn)([-_].*)?$", re.IGNORECASE)
MAX_CUES = 20_000
_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")


def ydl_options() -> dict[str, Any]:
    """yt-dlp's options to download a Chinese subtitle track with the media."""
    return {"writesubtitles": True, "writeautomaticsub": False,
            "subtitleslangs": ["zh.*", "cmn.*"], "subtitlesformat": "vtt/srt/best"}


def chinese(requested: dict[str, Any] | None) -> tuple[str, Path] | None:
    """The best Chinese track yt-dlp downloaded (``info["requested_subtitles"]``):
    (language, file)."""
    found = {lang: Path(sub["filepath"]) for lang, sub in (requested or {}).items()
             if _PATTERN.match(lang) and sub.get("filepath") and Path(sub["filepath"]).is_file()
             and sub.get("ext") in ("vtt", "srt")}
    for lang in (*LANGUAGES, *sorted(found)):
        if lang in found:
            return lang, found[lang]
    return None


def _ms(stamp: str) -> int | None:
    m = _TIME.fullmatch(stamp.strip().split()[0]) if stamp.strip() else None
    if m is None:
        return None
    h, mi, s, frac = m.groups()
    return ((int(h or 0) * 60 + int(mi)) * 60 + int(s)) * 1000 + int(frac.ljust(3, "0"))


def read_cues(text: str) -> list[tuple[int, int, str]]:
    """Cues of a WebVTT or SRT file: [(start_ms, end_ms, text)], in order of time."""
    cues: list[tuple[int, int, str]] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [line for line in block.split("\n") if line.strip()]
        timing = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if timing is None:
            continue  # WEBVTT header, NOTE, STYLE, REGION
        left, _, right = lines[timing].partition("-->")
        start, end = _ms(left), _ms(right)
        words = " ".join(html.unescape(_TAG.sub("", line)).strip()
                         for line in lines[timing + 1:])
        words = " ".join(words.split())
        if start is None or end is None or end <= start or not words:
            continue
        cues.append((start, end, words))
        if len(cues) >= MAX_CUES:
            break
    cues.sort(key=lambda c: c[0])
    out: list[tuple[int, int, str]] = []
    for start, end, words in cues:
        if out and start < out[-1][1]:  # overlapping cues: the earlier one ends here
            prev = out[-1]
            out[-1] = (prev[0], max(prev[0] + 1, start), prev[2])
        out.append((start, end, words))
    return out
