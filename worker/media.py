"""ffmpeg: find it, and normalize any audio or video to 16 kHz mono WAV without
blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import wave
from functools import cache
from pathlib import Path

from worker.errors import PermanentTaskError, RetryableTaskError

SAMPLE_RATE = 16_000


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


def _explain(stderr: str) -> PermanentTaskError | RetryableTaskError:
    low = stderr.lower()
    if "matches no streams" in low or "does not contain any stream" in low:
        return PermanentTaskError("the media has no audio stream", type="NoAudio")
    if ("invalid data found" in low or "could not find codec" in low
            or "unknown format" in low or "invalid argument" in low
            or "moov atom not found" in low or "error opening input" in low
            or "end of file" in low):
        return PermanentTaskError("the file is not audio or video ffmpeg can decode",
                                  type="UndecodableMedia")
    if "no space left" in low:
        return RetryableTaskError("no space left on the device", type="DiskFull")
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else "unknown error"
    return PermanentTaskError(f"ffmpeg could not convert the media: {tail[:300]}",
                              type="UndecodableMedia")


async def normalize(src: Path, dst: Path) -> float:
    """Decode the first audio stream of ``src`` to 16 kHz mono 16-bit WAV at ``dst``
    (written to a temporary name, then renamed).  Returns the duration in seconds."""
    tmp = dst.with_suffix(".part.wav")
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-i", str(src), "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE),
        "-c:a", "pcm_s16le", "-f", "wav", str(tmp),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise _explain(err.decode("utf-8", "replace"))
    duration = wav_duration(tmp)
    if duration <= 0:
        tmp.unlink(missing_ok=True)
        raise PermanentTaskError("the media's audio stream is empty", type="NoAudio")
    tmp.replace(dst)
    return duration


async def concat_wavs(parts: list[Path], dst: Path) -> None:
    """Join normalized WAV parts in order (Bilibili multi-part videos)."""
    listing = dst.with_suffix(".txt")
    listing.write_text("".join(f"file '{p.resolve()}'\n" for p in parts))
    tmp = dst.with_suffix(".part.wav")
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat",
        "-safe", "0", "-i", str(listing), "-c", "copy", str(tmp),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    listing.unlink(missing_ok=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise _explain(err.decode("utf-8", "replace"))
    tmp.replace(dst)
