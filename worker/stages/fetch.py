"""The fetch stage: a URL through yt-dlp's Python API (audio only, socket timeout,
retries, a size cap) or an uploaded file, normalized by ffmpeg to 16 kHz mono WAV.

Bilibili multi-part videos ("分P"): a link that names no part (no ``?p=``) yields all
parts, downloaded in order and joined into one recording; each part becomes a chapter
(title and start time) in the result.  A link with ``?p=N`` fetches that part only.

What a URL may cost: connections only to public addresses (``worker.stages.egress``), at most
``max_bytes`` downloaded per task, counted across all parts as the bytes arrive (with
or without a Content-Length), yt-dlp's own downloaders only (no external programs, no
ffmpeg "fixups" on downloaded files), and the media boundary of ``worker.stages.media`` for
what was downloaded.  A permanent failure removes what was downloaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tingji.urls import MAX_PARTS, parts_in_url, strip_control_chars
from worker.errors import PermanentTaskError, RetryableTaskError, TaskCancelled
from worker.stages import subtitles as platform_subtitles
from worker.stages.egress import guarded
from worker.stages.media import concat_wavs, ffmpeg_dir, normalize, too_long
from worker.stages.refusals import classify

log = logging.getLogger("tingji.worker.fetch")


@dataclass
class Fetched:
    audio: Path
    duration_s: float
    title: str
    chapters: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # the video's own Chinese subtitles (subtitles_first): {"lang", "cues": [[s, e, text]]}
    subtitles: dict[str, Any] | None = None
    video: Path | None = None  # the media with its picture, kept to burn subtitles into


@dataclass
class _Budget:
    """Bytes downloaded per file, summed per task, checked as each block arrives."""

    max_bytes: int
    cancel: threading.Event
    by_file: dict[str, int] = field(default_factory=dict)
    exceeded: bool = False

    def hook(self, status: dict[str, Any]) -> None:
        from yt_dlp.utils import DownloadCancelled

        if self.cancel.is_set():
            raise DownloadCancelled("cancelled")
        name = str(status.get("tmpfilename") or status.get("filename") or "")
        self.by_file[name] = max(self.by_file.get(name, 0),
                                 int(status.get("downloaded_bytes") or 0))
        if sum(self.by_file.values()) > self.max_bytes:
            self.exceeded = True
            raise DownloadCancelled("over the download limit")

    def too_large(self) -> PermanentTaskError:
        return PermanentTaskError(
            f"the media is larger than the download limit of {self.max_bytes // 2**20} MB "
            "per task (TINGJI_MAX_DOWNLOAD_MB)", type="TooLarge", code="too_large")


def _ydl_options(dest: Path, budget: _Budget, ffmpeg_location: str,
                 parts: list[int] | None) -> dict[str, Any]:
    return {
        # yt-dlp's own HTTP, HLS and DASH downloaders only: an external program (ffmpeg,
        # rtmpdump) would make connections the egress policy does not see.
        "format": ("bestaudio[protocol^=http]/bestaudio[protocol^=m3u8]/"
                   "best[protocol^=http]/best[protocol^=m3u8]"),
        "external_downloader": {"default": "native"},
        "hls_prefer_native": True,
        "concurrent_fragment_downloads": 1,  # one thread: the egress guard is per thread
        "fixup": "never",  # no ffmpeg run on a downloaded file before the media boundary
        "outtmpl": {"default": str(dest / "part%(playlist_index|0)03d.%(ext)s")},
        "paths": {"home": str(dest), "temp": str(dest)},
        # a multi-part video: every part (up to MAX_PARTS), or the parts asked for
        "playlist_items": ",".join(map(str, parts)) if parts else f"1:{MAX_PARTS}",
        "socket_timeout": 30,
        "retries": 5,
        "fragment_retries": 5,
        "extractor_retries": 3,
        "max_filesize": budget.max_bytes,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "progress_hooks": [budget.hook],
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


def _private_cookies(cookies: Path, dest: Path) -> Path:
    """A copy of the user's cookies file only this task uses: yt-dlp writes its cookie jar
    back to the file on exit, and tasks run concurrently."""
    copy = dest / ".cookies.txt"
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(cookies.read_bytes())
    return copy


def _download(url: str, dest: Path, max_bytes: int, cancel: threading.Event,
              ffmpeg_location: str, allow_private: tuple[str, ...],
              cookies: Path | None = None, parts: list[int] | None = None,
              proxy: str | None = None, subtitles: bool = False, video: bool = False
              ) -> tuple[dict[str, Any], list[tuple[int, str, Path]]]:
    """Blocking: run yt-dlp; returns its info and the downloaded files in order, each
    with its part number.  ``parts`` (or the URL's ``?p=``) selects parts;
    ``subtitles``: a Chinese subtitle track too, where the video has one."""
    budget = _Budget(max_bytes, cancel)
    opts = _ydl_options(dest, budget, ffmpeg_location, parts or parts_in_url(url))
    opts["proxy"] = proxy or ""
    if subtitles:
        opts.update(platform_subtitles.ydl_options())
    if video:  # one file with picture and sound (no merging: no ffmpeg on downloads)
        opts["format"] = ("best[vcodec!=none][acodec!=none][protocol^=http]/"
                          "best[vcodec!=none][acodec!=none][protocol^=m3u8]/" + opts["format"])
    if cookies is None:
        return _run_ytdlp(url, opts, budget, cancel, allow_private)
    opts["cookiefile"] = str(_private_cookies(cookies, dest))
    try:
        return _run_ytdlp(url, opts, budget, cancel, allow_private)
    finally:
        Path(opts["cookiefile"]).unlink(missing_ok=True)


def _extract(url: str, opts: dict[str, Any], allow_private: tuple[str, ...], *,
             download: bool, cancel: threading.Event | None = None,
             budget: _Budget | None = None) -> dict[str, Any] | None:
    """Run yt-dlp under the egress policy; its failures become task errors."""
    import yt_dlp
    from yt_dlp.networking.exceptions import HTTPError, RequestError, TransportError
    from yt_dlp.utils import DownloadCancelled, DownloadError

    # "": no proxy, whatever HTTP(S)_PROXY / ALL_PROXY say (TINGJI_PROXY sets one)
    opts = {"proxy": "", **opts}
    with guarded(allow_private) as refused:
        try:
            with yt_dlp.YoutubeDL(opts) as ydl:  # type: ignore[arg-type]
                return ydl.extract_info(url, download=download)  # type: ignore[no-any-return]
        except (DownloadCancelled, DownloadError, RequestError) as exc:
            if cancel is not None and cancel.is_set():
                raise TaskCancelled() from None
            if budget is not None and budget.exceeded:
                raise budget.too_large() from None
            if refused.hosts:
                raise PermanentTaskError(refused.message(), type="EgressRefused",
                                         code="forbidden_address") from None
            if isinstance(exc, RequestError) and not isinstance(exc, TransportError | HTTPError):
                # not the network: the request itself cannot be made (e.g. a redirect to
                # file://, which yt-dlp's requests handler refuses)
                raise PermanentTaskError("the URL (or a redirect) leads to a scheme tingji does "
                                         "not fetch; only http(s) is", type="UnsupportedURL",
                                         code="unsupported_url") from None
            if isinstance(exc, DownloadCancelled):
                raise TaskCancelled() from None
            raise classify(exc) from None


def list_url(url: str, *, allow_private: tuple[str, ...], max_items: int,
             cookies: Path | None = None, proxy: str | None = None) -> dict[str, Any]:
    """Blocking: what a URL holds, without downloading: its title and its entries (the
    parts of a multi-part video, or the videos of a list), each with its number, title,
    URL and duration.  Reads at most ``max_items + 1`` entries (``count`` is the total
    when the site says it)."""
    opts: dict[str, Any] = {
        "extract_flat": "in_playlist", "skip_download": True, "playlistend": max_items + 1,
        "socket_timeout": 30, "retries": 3, "extractor_retries": 2, "quiet": True,
        "no_warnings": True, "noprogress": True, "logger": _QuietLogger(),
        "proxy": proxy or "",
    }
    with tempfile.TemporaryDirectory(prefix="tingji-list-") as tmp:
        if cookies is not None:
            opts["cookiefile"] = str(_private_cookies(cookies, Path(tmp)))
        info = _extract(url, opts, allow_private, download=False)
    if info is None:
        raise PermanentTaskError("yt-dlp found nothing at this URL", type="UnsupportedURL")
    raw = [e for e in (info.get("entries") or []) if e] if info.get("_type") == "playlist" \
        else [info]
    entries = []
    for i, e in enumerate(raw, 1):
        # a flat entry names a page to read later; a resolved one (a generic page's media)
        # has its own page, or else only its media URL
        page = e.get("webpage_url")
        link = (e.get("url") if e.get("_type") in ("url", "url_transparent")
                else page if page and page != url else e.get("url")) or ""
        if info.get("_type") != "playlist":
            link = url
        entries.append({"number": int(e.get("playlist_index") or i),
                        "title": _text(e.get("title")) or f"#{i}",
                        "url": link if link.startswith(("http://", "https://")) else None,
                        "duration_s": e.get("duration")})
    return {"title": _text(info.get("title")), "extractor": info.get("extractor_key"),
            "is_list": info.get("_type") == "playlist",
            "count": info.get("playlist_count") or len(entries), "entries": entries}


def _run_ytdlp(url: str, opts: dict[str, Any], budget: _Budget, cancel: threading.Event,
               allow_private: tuple[str, ...]
               ) -> tuple[dict[str, Any], list[tuple[int, str, Path]]]:
    max_bytes = budget.max_bytes
    info = _extract(url, opts, allow_private, download=True, cancel=cancel, budget=budget)
    if info is None:
        raise PermanentTaskError("yt-dlp found nothing to download at this URL",
                                 type="UnsupportedURL")
    entries = [e for e in (info.get("entries") or []) if e] if info.get("_type") == "playlist" \
        else [info]
    files: list[tuple[int, str, Path]] = []
    for n, entry in enumerate(entries, 1):
        for dl in entry.get("requested_downloads") or []:
            path = Path(dl.get("filepath") or dl.get("filename") or "")
            if path.is_file():
                files.append((int(entry.get("playlist_index") or n),
                              _text(entry.get("title")) or path.stem, path))
                break
        else:
            size = entry.get("filesize") or entry.get("filesize_approx")
            if size and size > max_bytes:
                raise budget.too_large()
    if not files:
        raise PermanentTaskError("nothing was downloaded (the file may exceed "
                                 f"{max_bytes // 2**20} MB or have no media)", type="FetchFailed")
    return info, files


async def fetch_url(url: str, work: Path, *, max_bytes: int, max_duration_s: float,
                    allow_private: tuple[str, ...], cancel: threading.Event,
                    cookies: Path | None = None, parts: list[int] | None = None,
                    proxy: str | None = None, subtitles: bool = False,
                    video: bool = False) -> Fetched:
    dest = work / "download"
    dest.mkdir(parents=True, exist_ok=True)
    loc = ffmpeg_dir(work.parent)
    try:
        info, files = await asyncio.to_thread(_download, url, dest, max_bytes, cancel, loc,
                                              allow_private, cookies, parts, proxy, subtitles,
                                              video)
    except PermanentTaskError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    title = _text(info.get("title")) or files[0][1]
    if len(files) == 1:
        audio = work / "audio.wav"
        duration = await normalize(files[0][2], audio, max_duration_s=max_duration_s)
        kept = None
        if video:  # out of download/, which goes once the audio is normalized
            kept = work / f"video{files[0][2].suffix}"
            files[0][2].replace(kept)
        return Fetched(audio, duration, title, meta=_meta(info, url),
                       subtitles=_own_subtitles(info) if subtitles else None, video=kept)
    parts: list[Path] = []
    chapters: list[dict[str, Any]] = []
    start = 0.0
    try:
        for i, (number, part_title, path) in enumerate(files, 1):
            wav = work / f"part{i:03d}.wav"
            # the duration limit holds for the parts together
            if start >= max_duration_s:
                raise too_long(max_duration_s)
            try:
                dur = await normalize(path, wav, max_duration_s=max_duration_s - start)
            except PermanentTaskError as exc:
                raise too_long(max_duration_s) if exc.type == "TooLong" else exc from None
            parts.append(wav)
            chapters.append({"index": number, "title": part_title, "start_s": round(start, 3),
                             "duration_s": round(dur, 3)})
            start += dur
        audio = work / "audio.wav"
        await asyncio.to_thread(concat_wavs, parts, audio)
    finally:
        for p in parts:
            p.unlink(missing_ok=True)
    return Fetched(audio, start, title, chapters, _meta(info, url))


def _own_subtitles(info: dict[str, Any]) -> dict[str, Any] | None:
    """The Chinese track yt-dlp downloaded with the media, read into cues; None when
    the video has none (or it holds no cue)."""
    found = platform_subtitles.chinese(info.get("requested_subtitles"))
    if found is None:
        return None
    lang, path = found
    cues = platform_subtitles.read_cues(path.read_text(encoding="utf-8", errors="replace"))
    return {"lang": lang, "cues": [list(c) for c in cues]} if cues else None


def _text(value: Any, limit: int = 500) -> str:
    """A title or name from a web page: text without control characters."""
    return strip_control_chars(str(value or ""))[:limit].strip()


def _meta(info: dict[str, Any], url: str) -> dict[str, Any]:
    keep = ("id", "extractor", "uploader", "upload_date", "webpage_url")
    meta: dict[str, Any] = {"url": url, **{k: _text(info[k]) for k in keep if info.get(k)}}
    if isinstance(info.get("duration"), int | float):
        meta["duration"] = info["duration"]
    return meta


async def fetch_upload(path: Path, filename: str, work: Path, *, max_duration_s: float
                       ) -> Fetched:
    if not path.is_file():
        raise PermanentTaskError("the uploaded file is gone from the uploads folder",
                                 type="MissingUpload")
    audio = work / "audio.wav"
    duration = await normalize(path, audio, max_duration_s=max_duration_s)
    return Fetched(audio, duration, Path(filename).stem or filename,
                   meta={"filename": filename})


async def fetch_remote_upload(api_url: str, token: str | None, task_id: str,
                              upload: dict[str, Any], dest: Path) -> Path:
    """An upload stored by an API on another machine: streamed from its internal route
    into ``dest``, and checked against the size and SHA-256 recorded at upload time."""
    import hashlib

    import httpx


    base = api_url.rstrip("/")
    if not token:
        raise RetryableTaskError(
            f"the upload is on the API's machine ({base}); fetching it from there needs "
            "TINGJI_API_TOKEN on this worker (and the API)", type="UploadElsewhere")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    size, want = int(upload["size"]), str(upload["sha256"])
    digest, got = hashlib.sha256(), 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0),
                                     trust_env=False) as http, \
                http.stream("GET", f"{base}/api/v1/internal/upload/{task_id}",
                            headers=headers) as resp:
            if resp.status_code != 200:
                await resp.aread()
                try:
                    err = resp.json()["error"]
                    why, code = str(err["message"]), str(err["code"])
                except (ValueError, KeyError, TypeError):
                    why, code = f"HTTP {resp.status_code}", ""
                if code in ("upload_gone", "not_found"):
                    raise PermanentTaskError(f"the uploaded file is gone: {why}",
                                             type="MissingUpload")
                raise RetryableTaskError(f"the API at {base} refused the upload: {why}",
                                         type="UploadFetchFailed")
            with open(dest, "wb") as fh:
                async for chunk in resp.aiter_bytes(2**20):
                    got += len(chunk)
                    if got > size:
                        break
                    digest.update(chunk)
                    fh.write(chunk)
    except httpx.HTTPError as exc:
        dest.unlink(missing_ok=True)
        raise RetryableTaskError(f"cannot fetch the upload from the API at {base} "
                                 f"({type(exc).__name__}); it is retried",
                                 type="ApiUnreachable") from None
    if got != size or digest.hexdigest() != want:
        dest.unlink(missing_ok=True)
        raise RetryableTaskError(f"the upload fetched from {base} does not match what was "
                                 f"uploaded ({got} of {size} bytes, or another checksum)",
                                 type="UploadFetchFailed")
    log.info("fetched upload of task %s from %s (%d bytes)", task_id, base, size)
    return dest


async def release_remote_upload(api_url: str, token: str | None, task_id: str) -> None:
    """Tells the API that stored the upload that the task completed (best effort: the
    API's hourly sweep removes completed tasks' uploads anyway)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            await http.delete(f"{api_url.rstrip('/')}/api/v1/internal/upload/{task_id}",
                              headers=headers)
    except httpx.HTTPError as exc:
        log.warning("could not tell the API to drop task %s's upload: %s", task_id, exc)
