"""The notes' renderings (``tingji.formats`` puts them into the result files): the
chapter list video sites accept in a description, the mind map as Mermaid ``mindmap``
text and as a Markdown outline, and translated or bilingual subtitle cues.

Shapes, as the worker stores them in ``tasks.result`` (``worker/stages/notes.py``):
``chapters``: ``[{"start_ms", "title", "summary", "sentence"}]``; ``mindmap``:
``{"title", "children": [...]}`` nested; ``translation``: ``{"lang", "text",
"sentences": [one per segment]}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

MIN_CUE_MS = 1


class Timed(Protocol):
    start_ms: int
    end_ms: int
    text: str


def clock(ms: int) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on."""
    s = max(0, int(ms)) // 1000
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


def chapter_list(chapters: Sequence[dict[str, Any]]) -> str:
    """``00:00 开场``, one chapter a line, as Bilibili and YouTube read a description.
    The first line says 00:00 (the sites need it: the first chapter covers what comes
    before its first sentence); ``result.chapters`` keeps the sentence's real time."""
    lines = [f"{clock(0 if i == 0 else int(c['start_ms']))} {c['title']}"
             for i, c in enumerate(chapters)]
    return "\n".join(lines) + "\n" if lines else ""


_MERMAID_UNSAFE = re.compile(r'["`\n\r]')


def mermaid(tree: dict[str, Any]) -> str:
    """Mermaid ``mindmap`` text: every node quoted (``n1["..."]``) so that brackets
    and other punctuation in a title are text, not syntax."""
    lines = ["mindmap"]
    counter = 0

    def node(item: dict[str, Any], depth: int) -> None:
        nonlocal counter
        counter += 1
        title = _MERMAID_UNSAFE.sub(" ", str(item.get("title", ""))).strip() or "…"
        shape = f'(("{title}"))' if depth == 0 else f'["{title}"]'
        lines.append("  " * (depth + 1) + f"n{counter}{shape}")
        for child in item.get("children") or []:
            node(child, depth + 1)
    node(tree, 0)
    return "\n".join(lines) + "\n"


def outline(tree: dict[str, Any]) -> str:
    """The mind map as a nested Markdown list."""
    lines: list[str] = []

    def walk(item: dict[str, Any], depth: int) -> None:
        lines.append("  " * depth + f"- {item.get('title', '')}")
        for child in item.get("children") or []:
            walk(child, depth + 1)
    walk(tree, 0)
    return "\n".join(lines)


def sentence_cues(segments: Sequence[Timed], translation: dict[str, Any], *,
                  bilingual: bool) -> list[tuple[int, int, str]]:
    """One cue per sentence with its translation (``bilingual``: the sentence, then its
    translation on a second line); times strictly increasing as in the original cues."""
    lines = list(translation.get("sentences") or [])
    cues: list[tuple[int, int, str]] = []
    last_end = 0
    for i, seg in enumerate(segments):
        text = seg.text.strip()
        translated = (lines[i] if i < len(lines) else "").strip()
        if not text and not translated:
            continue
        start, end = max(seg.start_ms, last_end), max(seg.end_ms, seg.start_ms)
        if end - start < MIN_CUE_MS:
            end = start + max(MIN_CUE_MS, 40 * len(text))
        cues.append((start, end, f"{text}\n{translated}" if bilingual else translated))
        last_end = end
    return cues
