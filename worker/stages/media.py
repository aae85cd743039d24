"""ffmpeg: find it, and normalize any audio or video to 16 kHz mono WAV without
blocking the event loop.

The media boundary.  Every file handed to ffmpeg (an upload, a download) is hostile:
ffmpeg reads it with only the ``file`` protocol and only the demuxers of real audio and
video containers (``DEMUXERS``: no playlists, concat lists, image sequences or other
formats that make ffmpeg open further files or URLs), it is probed first (a declared
duration over ``max_duration_s`` fails at once), and decoding stops at
``max_duration_s`` (plus a second) whatever the header claims, so a decompression bomb
costs seconds and at most that much WAV on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from worker.errors import PermanentTaskError, RetryableTaskError

SAMPLE_RATE = 16_000
# ffmpeg demuxer names of real audio/video containers.  Left out on purpose: hls, dash,
# concat, ffconcat, image2, tee, sdp, rtsp, data, subtitle formats, ffmetadata, etc.
DEMUXERS = ",".join((
    "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mp3", "aac", "ogg", "wav", "w64", "flac",
    "flv", "asf", "avi", "mpegts", "mpeg", "amr", "amrnb", "amrwb", "aiff", "caf", "au",
    "ac3", "eac3", "wv", "ape", "tta", "dts", "opus"))
_INPUT_GUARD = ("-protocol_whitelist", "file", "-format_whitelist", DEMUXERS)
_INPUT = re.compile(r"^Input #0, (.+?), from ", re.M)
_DURATION = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.M)
_AUDIO = re.compile(r"^\s*Stream #0:\d+.*?: Audio: ", re.M)
# a picture stream that is not cover art
_VIDEO = re.compile(r"^\s*Stream #0:\d+.*?: Video: (?!.*attached pic).*$", re.M)


@dataclass(frozen=True, slots=True)
class Probe:
    container: str
    duration_s: float | None  # as the header declares it (None: not declared)
    has_audio: bool
    has_video: bool = False


@cache
def ffmpeg_exe() -> str:
    """ffmpeg from PATH, else the static build shipped by the imageio-ffmpeg package."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - imageio-ffmpeg is a dependency
        raise RuntimeError("ffmpeg not found: install ffmpeg or imageio-ffmpeg") from exc
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_dir(work_dir: Path) -> str:
    """A folder holding an executable named ``ffmpeg`` (for yt-dlp's ffmpeg_location)."""
    exe = Path(ffmpeg_exe())
    if exe.name == "ffmpeg":
        return str(exe.parent)
    link_dir = work_dir / "bin"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "ffmpeg"
    if not link.exists():
        with contextlib.suppress(FileExistsError):
            link.symlink_to(exe)
    return str(link_dir)


def wav_duration(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


def too_long(max_duration_s: float) -> PermanentTaskError:
    return PermanentTaskError(
        f"the media is longer than the limit of {_hms(max_duration_s)} "
        "(TINGJI_MAX_DURATION_S)", type="TooLong")


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _explain(stderr: str) -> PermanentTaskError | RetryableTaskError:
    low = stderr.lower()
    if "no space left" in low:
        return RetryableTaskError("the disk is full: ffmpeg could not write the audio; tried "
                                  "again later, without using an attempt, once space is freed",
                                  type="DiskFull", code="disk_full")
    if "not on whitelist" in low:
        return PermanentTaskError(
            "the file is not a plain audio or video container (playlists, concat lists and "
            "other files that point to further files are refused)", type="UnsupportedMedia")
    if "matches no streams" in low or "does not contain any stream" in low:
        return PermanentTaskError("the media has no audio stream", type="NoAudio")
    if ("invalid data found" in low or "could not find codec" in low
            or "unknown format" in low or "invalid argument" in low
            or "moov atom not found" in low or "error opening input" in low
            or "end of file" in low):
        return PermanentTaskError("the file is not audio or video ffmpeg can decode",
                                  type="UndecodableMedia")
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else "unknown error"
    return PermanentTaskError(f"ffmpeg could not convert the media: {tail[:300]}",
                              type="UndecodableMedia")


async def _ffmpeg(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """Run ffmpeg; (exit code, stderr).  Killed if the caller is cancelled."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-nostdin", "-hide_banner", *args, cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, err.decode("utf-8", "replace")


async def probe(src: Path) -> Probe:
    """What ffmpeg sees in ``src`` with the guarded input options (no decoding)."""
    _, err = await _ffmpeg(*_INPUT_GUARD, "-i", str(src))
    found = _INPUT.search(err)
    if found is None:
        raise _explain(err)
    d = _DURATION.search(err)
    duration = int(d[1]) * 3600 + int(d[2]) * 60 + float(d[3]) if d else None
    return Probe(found[1], duration, _AUDIO.search(err) is not None,
                 _VIDEO.search(err) is not None)


async def normalize(src: Path, dst: Path, *, max_duration_s: float) -> float:
    """Decode the first audio stream of ``src`` to 16 kHz mono 16-bit WAV at ``dst``
    (written to a temporary name, then renamed).  Returns the duration in seconds.
    Refuses what is not a plain container, has no audio, or is longer than
    ``max_duration_s`` (declared or decoded)."""
    info = await probe(src)
    if not info.has_audio:
        raise PermanentTaskError("the media has no audio stream", type="NoAudio")
    if info.duration_s is not None and info.duration_s > max_duration_s:
        raise too_long(max_duration_s)
    tmp = dst.with_suffix(".part.wav")
    try:
        code, err = await _ffmpeg(
            "-loglevel", "error", "-y", *_INPUT_GUARD, "-i", str(src), "-map", "0:a:0",
            "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le",
            "-t", f"{max_duration_s + 1:.3f}", "-f", "wav", str(tmp))
        if code != 0:
            raise _explain(err)
        duration = wav_duration(tmp)
        if duration <= 0:
            raise PermanentTaskError("the media's audio stream is empty", type="NoAudio")
        if duration > max_duration_s:  # the header understated it
            raise too_long(max_duration_s)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dst)
    return duration


async def encode_opus(src: Path, dst: Path, *, kbps: int = 32) -> int:
    """``src`` as Ogg Opus at ``kbps`` (speech: mono, VoIP tuning) at ``dst``, written
    to a temporary name and renamed; its size in bytes."""
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        code, err = await _ffmpeg("-loglevel", "error", "-y", "-i", str(src), "-ac", "1",
                                  "-c:a", "libopus", "-b:a", f"{kbps}k",
                                  "-application", "voip", "-f", "ogg", str(tmp))
        if code != 0:
            raise RetryableTaskError(f"ffmpeg could not keep the audio as Opus: "
                                     f"{err.strip()[-300:]}", type="AudioKeep")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dst)
    return dst.stat().st_size


def concat_wavs(parts: list[Path], dst: Path) -> None:
    """Join normalized WAV parts (all 16 kHz mono s16) in order: Bilibili multi-part
    videos.  Blocking; copies in 1 MiB blocks."""
    tmp = dst.with_suffix(".part.wav")
    try:
        with wave.open(str(tmp), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            for part in parts:
                with wave.open(str(part), "rb") as w:
                    while frames := w.readframes(2**19):
                        out.writeframes(frames)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dst)
