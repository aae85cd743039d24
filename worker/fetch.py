"""The fetch stage: a URL through yt-dlp's Python API (audio only, socket timeout,
retries, a size cap) or an uploaded file, normalized by ffmpeg to 16 kHz mono WAV.

Bilibili multi-part videos ("分P"): a link that names no part (no ``?p=``) yields all
parts, downloaded in order and joined into one recording; each part becomes a chapter
(title and start time) in the result.  A link with ``?p=N`` fetches that part only.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from worker.errors import PermanentTaskError, RetryableTaskError, TaskCancelled
from worker.media import concat_wavs, ffmpeg_dir, normalize

MAX_PARTS = 200


@dataclass
class Fetched:
    audio: Path
    duration_s: float
    title: str
    chapters: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _classify(message: str) -> PermanentTaskError | RetryableTaskError:
    """yt-dlp's error text -> permanent or transient, with a message for people."""
    msg = message.replace("ERROR: ", "").strip()
    low = msg.lower()
    for code in ("404", "410", "403", "401", "400"):
        if f"http error {code}" in low:
            return PermanentTaskError(f"the server answered HTTP {code} for this URL ({msg[:200]})",
                                      type="FetchFailed")
    if "unsupported url" in low or "is not a valid url" in low:
        return PermanentTaskError(f"no audio or video found at this URL ({msg[:200]})",
                                  type="UnsupportedURL")
    if any(s in low for s in ("video unavailable", "private video", "has been removed",
                              "not available", "copyright", "premium", "login")):
        return PermanentTaskError(f"the video is not available: {msg[:200]}",
                                  type="Unavailable")
    if "no video formats" in low or "requested format is not available" in low:
        return PermanentTaskError(f"no downloadable audio: {msg[:200]}", type="NoAudio")
    return RetryableTaskError(f"download failed: {msg[:300]}", type="FetchFailed")


def _ydl_options(url: str, dest: Path, max_bytes: int, cancel: threading.Event,
                 ffmpeg_location: str) -> dict[str, Any]:
    from yt_dlp.utils import DownloadCancelled

    def hook(_status: dict[str, Any]) -> None:
        if cancel.is_set():
            raise DownloadCancelled("cancelled")

    explicit_part = "p" in parse_qs(urlsplit(url).query)
    return {
        "format": "bestaudio/best",
        "outtmpl": {"default": str(dest / "part%(playlist_index|0)03d.%(ext)s")},
        "paths": {"home": str(dest), "temp": str(dest)},
        "noplaylist": explicit_part,
        "playlist_items": f"1:{MAX_PARTS}",
        "socket_timeout": 30,
        "retries": 5,
        "fragment_retries": 5,
        "extractor_retries": 3,
        "max_filesize": max_bytes,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "progress_hooks": [hook],
        "ffmpeg_location": ffmpeg_location,
        "restrictfilenames": True,
        "windowsfilenames": True,
        "overwrites": False,
        "continuedl": True,
        "noplaylist_unsupported": True,
        "logger": _QuietLogger(),
    }


class _QuietLogger:
    """yt-dlp logs to stderr by default; we keep errors for the exception text only."""

    def debug(self, msg: str) -> None: ...
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


def _download(url: str, dest: Path, max_bytes: int, cancel: threading.Event,
              ffmpeg_location: str) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    """Blocking: run yt-dlp; returns its info and the downloaded files in order."""
    import yt_dlp
    from yt_dlp.utils import DownloadCancelled, DownloadError

    opts = _ydl_options(url, dest, max_bytes, cancel, ffmpeg_location)
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:  # type: ignore[arg-type]
            info = ydl.extract_info(url, download=True)
    except DownloadCancelled:
        raise TaskCancelled() from None
    except DownloadError as exc:
        if cancel.is_set():
            raise TaskCancelled() from None
        raise _classify(str(exc)) from None
    if info is None:
        raise PermanentTaskError("yt-dlp found nothing to download at this URL",
                                 type="UnsupportedURL")
    entries = [e for e in (info.get("entries") or []) if e] if info.get("_type") == "playlist" \
        else [info]
    files: list[tuple[str, Path]] = []
    for entry in entries:
        for dl in entry.get("requested_downloads") or []:
            path = Path(dl.get("filepath") or dl.get("filename") or "")
            if path.is_file():
                files.append((entry.get("title") or path.stem, path))
                break
        else:
            size = entry.get("filesize") or entry.get("filesize_approx")
            if size and size > max_bytes:
                raise PermanentTaskError(
                    f"the media is larger than the download limit of {max_bytes // 2**20} MB "
                    "(TINGJI_MAX_DOWNLOAD_MB)", type="TooLarge")
    if not files:
        raise PermanentTaskError("nothing was downloaded (the file may exceed "
                                 f"{max_bytes // 2**20} MB or have no media)", type="FetchFailed")
    return info, files


async def fetch_url(url: str, work: Path, *, max_bytes: int, cancel: threading.Event
                    ) -> Fetched:
    dest = work / "download"
    dest.mkdir(parents=True, exist_ok=True)
    loc = ffmpeg_dir(work.parent)
    info, files = await asyncio.to_thread(_download, url, dest, max_bytes, cancel, loc)
    title = str(info.get("title") or files[0][0])
    if len(files) == 1:
        audio = work / "audio.wav"
        duration = await normalize(files[0][1], audio)
        return Fetched(audio, duration, title, meta=_meta(info, url))
    parts: list[Path] = []
    chapters: list[dict[str, Any]] = []
    start = 0.0
    for i, (part_title, path) in enumerate(files, 1):
        wav = work / f"part{i:03d}.wav"
        dur = await normalize(path, wav)
        parts.append(wav)
        chapters.append({"index": i, "title": part_title, "start_s": round(start, 3),
                         "duration_s": round(dur, 3)})
        start += dur
    audio = work / "audio.wav"
    await concat_wavs(parts, audio)
    for p in parts:
        p.unlink(missing_ok=True)
    return Fetched(audio, start, title, chapters, _meta(info, url))


def _meta(info: dict[str, Any], url: str) -> dict[str, Any]:
    keep = ("id", "extractor", "uploader", "upload_date", "webpage_url", "duration")
    return {"url": url, **{k: info.get(k) for k in keep if info.get(k) is not None}}


async def fetch_upload(path: Path, filename: str, work: Path) -> Fetched:
    if not path.is_file():
        raise PermanentTaskError("the uploaded file is gone from the uploads folder",
                                 type="MissingUpload")
    audio = work / "audio.wav"
    duration = await normalize(path, audio)
    return Fetched(audio, duration, Path(filename).stem or filename,
                   meta={"filename": filename})
