"""Hotwords: names and terms the ASR model should favour (SeACo-Paraformer's bias
decoder, funasr's ``hotword``).  One set of rules for the API, the command line, the
web page and ``TINGJI_HOTWORDS_FILE``.

funasr reads its ``hotword`` argument as a local ``.txt`` path, an ``http`` URL to
download, or words: tingji never hands it a user's string, only a file it writes
itself, one hotword per line (``worker.batching``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

MAX_HOTWORDS = 100
MAX_HOTWORD_CHARS = 40
_SEPARATORS = re.compile(r"[\s,，、;；]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def split_hotwords(text: str) -> list[str]:
    """``"词1 词2,词3"`` -> words (what a form field, a CLI flag or a file line holds)."""
    return [w for w in _SEPARATORS.split(text) if w]


def check_hotwords(words: Iterable[str]) -> list[str]:
    """The hotwords, trimmed and de-duplicated in order; ``ValueError`` saying which one
    is wrong (too long, control characters) or that there are too many."""
    out: list[str] = []
    for raw in words:
        word = " ".join(str(raw).split())
        if not word:
            continue
        if _CONTROL.search(str(raw)):
            raise ValueError(f"{word[:20]!r} contains control characters")
        if len(word) > MAX_HOTWORD_CHARS:
            raise ValueError(f"{word[:20]!r}… is longer than {MAX_HOTWORD_CHARS} characters")
        if word not in out:
            out.append(word)
    if len(out) > MAX_HOTWORDS:
        raise ValueError(f"at most {MAX_HOTWORDS} hotwords, got {len(out)}")
    return out


def read_hotwords_file(path: Path) -> list[str]:
    """A hotwords file: one or more per line (space or comma separated), ``#`` comments."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return check_hotwords(w for line in lines if not line.lstrip().startswith("#")
                          for w in split_hotwords(line))


def merged(task: Iterable[str], path: Path | None) -> list[str]:
    """A task's hotwords, then the global file's (``TINGJI_HOTWORDS_FILE``), at most
    ``MAX_HOTWORDS`` in all (the task's own first)."""
    words = list(task)
    if path is not None:
        words += [w for w in read_hotwords_file(path) if w not in words]
    return words[:MAX_HOTWORDS]
