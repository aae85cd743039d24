"""Whether a local file is audio or video that tingji may send: by its suffix and by its
first bytes (the container's signature), and under one of the allowed folders.  Used
where something other than the user picks the path (an agent through ``tingji mcp``)."""

from __future__ import annotations

from pathlib import Path

HEAD = 189
SUFFIXES = frozenset({
    ".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".wma", ".amr",
    ".aif", ".aiff", ".caf", ".mp4", ".m4v", ".mov", ".3gp", ".mkv", ".webm", ".avi",
    ".flv", ".wmv", ".ts", ".mts", ".mpg", ".mpeg"})


def looks_like_media(head: bytes) -> bool:
    """The first bytes of a file (``HEAD`` of them): a known audio or video container's
    signature."""
    if len(head) < 4:
        return False
    if head[:4] == b"RIFF":
        return head[8:12] in (b"WAVE", b"AVI ")
    if head[:3] in (b"ID3", b"FLV") or head[:4] in (b"OggS", b"fLaC", b"FORM", b"caff"):
        return True
    if head[:4] == b"\x1aE\xdf\xa3":  # EBML: Matroska, WebM
        return True
    if head[:4] == b"0&\xb2u":  # ASF: WMA, WMV
        return True
    if head[:5] == b"#!AMR" or head[:4] == b"\x00\x00\x01\xba":  # AMR, MPEG program stream
        return True
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):  # MP4, MOV
        return True
    if len(head) > 188 and head[0] == head[188] == 0x47:  # MPEG-TS: 188-byte packets
        return True
    return head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # MPEG audio / ADTS frame sync


def allowed_media(path: str, roots: tuple[Path, ...]) -> Path | None:
    """The file ``path`` names, resolved, if it is audio or video under one of ``roots``;
    None otherwise, without saying which (a missing file and a forbidden one look alike)."""
    try:
        file = Path(path).expanduser().resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if not any(file.is_relative_to(root) for root in roots):
        return None
    if file.suffix.lower() not in SUFFIXES or not file.is_file():
        return None
    try:
        with file.open("rb") as fh:
            head = fh.read(HEAD)
    except OSError:
        return None
    return file if looks_like_media(head) else None
