"""Which local files ``tingji mcp`` may send: audio or video by suffix and signature,
inside the allowed folders, symlinks resolved; everything else the same None."""

from __future__ import annotations

from pathlib import Path

import pytest

from tingji.mediafiles import allowed_media, looks_like_media

SIGNATURES = {
    "a.wav": b"RIFF\x24\x00\x00\x00WAVEfmt ", "a.mp3": b"ID3\x04\x00", "b.mp3": b"\xff\xfb\x90\x00",
    "a.m4a": b"\x00\x00\x00\x20ftypM4A ", "a.ogg": b"OggS\x00\x02", "a.flac": b"fLaC\x00",
    "a.mkv": b"\x1aE\xdf\xa3\x01", "a.flv": b"FLV\x01", "a.wma": b"0&\xb2u\x8ef\xcf\x11",
    "a.amr": b"#!AMR\n", "a.aac": b"\xff\xf1\x50\x80",
    "a.ts": b"\x47\x40\x00\x10" + b"\xff" * 184 + b"\x47",
}


def test_containers_are_recognised_and_other_files_are_not() -> None:
    for name, head in SIGNATURES.items():
        assert looks_like_media(head.ljust(16, b"\0")), name
    for head in (b"-----BEGIN OPENSSH PRIVATE KEY-----", b"GET / HTTP/1.1\r\n",
                 b"RIFF\x00\x00\x00\x00WEBPVP8 ", "这不是音频".encode(), b"", b"PK\x03\x04",
                 b"G" + b"x" * 200):
        assert not looks_like_media(head), head


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "lectures"
    root.mkdir()
    (root / "talk.wav").write_bytes(SIGNATURES["a.wav"] + b"\0" * 64)
    (root / "notes.mp3").write_text("not audio at all\n" * 10)
    (root / "talk.txt").write_bytes(SIGNATURES["a.wav"] + b"\0" * 64)  # media, wrong name
    secret = tmp_path / "id_rsa.wav"
    secret.write_bytes(SIGNATURES["a.wav"] + b"\0" * 64)  # outside the root
    (root / "link.wav").symlink_to(secret)
    return {"root": root, "secret": secret}


def test_only_media_inside_the_roots(tree: dict[str, Path]) -> None:
    root = tree["root"]
    assert allowed_media(str(root / "talk.wav"), (root,)) == (root / "talk.wav").resolve()
    refused = [root / "notes.mp3", root / "talk.txt", tree["secret"], root / "link.wav",
               root / "missing.wav", root / ".." / "id_rsa.wav", root]
    for path in refused:
        assert allowed_media(str(path), (root,)) is None, path
    assert allowed_media(str(root / "talk.wav"), ()) is None  # no roots: nothing
