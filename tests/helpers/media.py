"""Real test media: Mandarin speech from espeak-ng, converted by ffmpeg."""

from __future__ import annotations

import subprocess
from pathlib import Path

SENTENCES = [
    "今天天气很好，我们去公园散步。",
    "语音识别是把声音变成文字的技术。",
    "这个模型在会议记录和课程笔记里非常有用。",
    "请大家认真听讲，下课以后交作业。",
    "明天上午九点在三楼会议室开会。",
    "我们的目标是把每一句话都记下来。",
]


def speech_wav(out: Path, sentences: list[str], *, pause_s: float = 1.2,
               voices: tuple[str, ...] = ("cmn",)) -> Path:
    """Sentences spoken by espeak-ng, joined with ``pause_s`` of silence, 16 kHz mono;
    ``voices`` take turns (``("cmn", "cmn+f4")``: a man and a woman alternating)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    for i, text in enumerate(sentences):
        p = out.with_name(f"{out.stem}.s{i}.wav")
        subprocess.run(["espeak-ng", "-v", voices[i % len(voices)], "-s", "170", "-w", str(p),
                        text], check=True)
        parts.append(p)
    inputs: list[str] = []
    filters = []
    n = 0
    for i, p in enumerate(parts):
        inputs += ["-i", str(p)]
        filters.append(f"[{n}:a]aresample=16000,aformat=channel_layouts=mono[a{n}]")
        n += 1
        if i < len(parts) - 1:
            inputs += ["-f", "lavfi", "-t", str(pause_s), "-i", "anullsrc=r=16000:cl=mono"]
            filters.append(f"[{n}:a]anull[a{n}]")
            n += 1
    graph = ";".join(filters) + ";" + "".join(f"[a{k}]" for k in range(n)) + \
        f"concat=n={n}:v=0:a=1[out]"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *inputs,
                    "-filter_complex", graph, "-map", "[out]", "-ar", "16000", "-ac", "1",
                    str(out)], check=True)
    for p in parts:
        p.unlink()
    return out


def convert(src: Path, out: Path, *extra: str) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *extra,
                    str(out)], check=True)
    return out


def silent_video(out: Path, seconds: float = 2.0) -> Path:
    """A video with no audio stream."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"color=c=blue:s=64x64:d={seconds}", "-c:v", "mpeg4", str(out)], check=True)
    return out


def video_with_speech(speech: Path, out: Path) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=black:s=64x64:r=5", "-i", str(speech), "-shortest", "-c:v",
                    "mpeg4", "-c:a", "aac", str(out)], check=True)
    return out


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _utf8_number(n: int) -> bytes:
    """FLAC's frame numbers: UTF-8-style coding of an integer (up to 36 bits)."""
    if n < 0x80:
        return bytes([n])
    out = []
    limit = 0x3F
    while n > limit:
        out.append(0x80 | (n & 0x3F))
        n >>= 6
        limit >>= 1
    first = (0xFF << (7 - len(out)) & 0xFF) | n
    return bytes([first, *reversed(out)])


def flac_bomb(out: Path, *, hours: float, rate: int = 8000, declare: bool = True) -> Path:
    """A FLAC file of silence: 65535-sample frames of one CONSTANT subframe each, ~15
    bytes per frame, so ``hours`` of audio take a few hundred KB (37 h: ~250 KB, 4.3 GB
    as 16 kHz WAV).  ``declare=False`` leaves the total length out of the header (the
    decoder finds out only by decoding)."""
    block = 65535
    total = int(hours * 3600 * rate)
    frames = -(-total // block)
    streaminfo = (block.to_bytes(2, "big") * 2 + b"\0" * 6
                  + ((rate << 44) | (0 << 41) | (15 << 36) | (total if declare else 0))
                  .to_bytes(8, "big") + b"\0" * 16)
    data = bytearray(b"fLaC" + bytes([0x80]) + len(streaminfo).to_bytes(3, "big") + streaminfo)
    for i in range(frames):
        # sync + fixed blocking; block size "16 bit at end", rate from STREAMINFO;
        # mono, 16 bits per sample
        header = b"\xff\xf8\x70\x08" + _utf8_number(i) + (block - 1).to_bytes(2, "big")
        header += bytes([_crc8(header)])
        frame = header + b"\x00\x00\x00"  # CONSTANT subframe, value 0
        data += frame + _crc16(frame).to_bytes(2, "big")
    out.write_bytes(bytes(data))
    return out
