"""What identifies a transcript, so that the same audio is not transcribed twice.

Two links to one video, or a file uploaded again, give the same normalized audio (16 kHz
mono PCM, ``worker.stages.media``).  Its SHA-256, with everything that changes a
transcription (the engine on its device and its models: ``AsrEngine.decoding_key``;
the hotwords; the speaker labels asked for), is the task's ``transcript_key``, written
with its transcribe checkpoint.  A later task with the same key takes the sentences of
the latest completed task that has it (``Reads.transcript_source``) instead of running
ASR, records ``transcript_reused``, and goes on with its own LLM stages and outputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHUNK = 1 << 20


def audio_sha256(path: Path) -> str:
    """The SHA-256 of the normalized audio file (about a second for three hours)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def transcript_key(audio_sha: str, decoding_key: str, hotwords: list[str],
                   speakers: int | str | None) -> str:
    """64 hex digits: the audio and what changes its transcription."""
    what = json.dumps([audio_sha, decoding_key, hotwords, speakers], ensure_ascii=False,
                      sort_keys=True)
    return hashlib.sha256(what.encode()).hexdigest()


__all__ = ["audio_sha256", "transcript_key"]
