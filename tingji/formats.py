"""Result files: plain text, Markdown, JSON, SRT and WebVTT, rendered from the stored result and
segments.  Pure functions: the worker's export stage writes them to disk, and the API
renders downloads with them from the same stored result and segments (so subtitles can
be regenerated without ASR); a download's JSON adds the task's created and completed
times, which the export stage cannot know yet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tingji import notes

FORMATS = ("txt", "md", "json", "srt", "vtt", "chapters", "mindmap", "pdf", "mp4")
# the notes' files, where the task has them (by their key in ``render_all``'s answer)
NOTE_FILES = {"chapters": "chapters.txt", "mindmap": "mmd"}
CONTENT_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
    "json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "chapters": "text/plain; charset=utf-8",
    "mindmap": "text/vnd.mermaid; charset=utf-8",
    "pdf": "application/pdf",
    "mp4": "video/mp4",
    "zip": "application/zip",
}

MAX_CUE_CHARS = 20
MAX_CUE_MS = 7000
MIN_CUE_MS = 1
# Break after these (Chinese and Western sentence and clause punctuation).
_BREAK = re.compile(r"(?<=[。！？!?；;，,、：:…])")


class SegmentLike(Protocol):
    start_ms: int
    end_ms: int
    text: str
    chars: list[list[int]] | None
    speaker: int | None


Names = dict[str, str]  # "S1" -> the name a user gave that speaker


def speaker_label(seg: SegmentLike, names: Names | None = None) -> str | None:
    """``S1``, ``S2``, ... or the name given to it; None for an unlabelled sentence."""
    if getattr(seg, "speaker", None) is None:
        return None
    key = f"S{seg.speaker + 1}"  # type: ignore[operator]
    return (names or {}).get(key) or key


def turns(segments: Sequence[SegmentLike], names: Names | None = None
          ) -> list[tuple[str | None, str]]:
    """Consecutive sentences of one speaker joined: [(label, text)]."""
    out: list[tuple[str | None, str]] = []
    for seg in segments:
        label, text = speaker_label(seg, names), seg.text.strip()
        if not text:
            continue
        if out and out[-1][0] == label:
            out[-1] = (label, out[-1][1] + text)
        else:
            out.append((label, text))
    return out


def labelled_text(segments: Sequence[SegmentLike], names: Names | None = None) -> str | None:
    """``[S1] ...`` one line per turn; None when no sentence has a speaker."""
    if not any(getattr(s, "speaker", None) is not None for s in segments):
        return None
    return "\n".join(f"[{label}] {text}" if label else text
                     for label, text in turns(segments, names))


@dataclass(frozen=True, slots=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str


def _split_text(text: str, max_chars: int) -> list[str]:
    """Split at punctuation into pieces of at most ``max_chars``; a piece with no
    punctuation to split at is cut hard."""
    pieces: list[str] = []
    for clause in (c for c in _BREAK.split(text) if c.strip()):
        clause = clause.strip()
        if pieces and len(pieces[-1]) + len(clause) <= max_chars:
            pieces[-1] += clause
            continue
        while len(clause) > max_chars:
            pieces.append(clause[:max_chars])
            clause = clause[max_chars:]
        if clause:
            pieces.append(clause)
    return pieces


def srt_cues(segments: Sequence[SegmentLike], *, max_chars: int = MAX_CUE_CHARS,
             max_ms: int = MAX_CUE_MS, names: Names | None = None) -> list[Cue]:
    """Cues from sentence timestamps: long sentences split at punctuation, time shared
    out by characters; times strictly increasing, no empty or zero-length cue; a
    labelled sentence's cues start with ``[S1]`` (or the speaker's name)."""
    cues: list[Cue] = []
    last_end = 0
    for seg in segments:
        text = seg.text.strip()
        if not text:
            continue
        start, end = max(seg.start_ms, last_end), max(seg.end_ms, seg.start_ms)
        if end - start < MIN_CUE_MS:
            end = start + max(MIN_CUE_MS, 40 * len(text))
        chars = max_chars
        while True:
            pieces = _split_text(text, chars)
            per_char = (end - start) / max(1, sum(len(p) for p in pieces))
            if chars <= 4 or all(len(p) * per_char <= max_ms for p in pieces):
                break
            chars = max(4, chars // 2)
        t = float(start)
        label = speaker_label(seg, names)
        for i, piece in enumerate(pieces):
            cue_start = round(t)
            t += len(piece) * per_char
            cue_end = end if i == len(pieces) - 1 else round(t)
            if cue_end <= cue_start:
                cue_end = cue_start + MIN_CUE_MS
            cues.append(Cue(cue_start, cue_end, f"[{label}] {piece}" if label else piece))
            last_end = cue_end
    return cues


def _srt_time(ms: int) -> str:
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def srt_blocks(cues: Sequence[tuple[int, int, str]]) -> str:
    return "\n".join(f"{i}\n{_srt_time(a)} --> {_srt_time(b)}\n{text}\n"
                     for i, (a, b, text) in enumerate(cues, 1))


def render_srt(segments: Sequence[SegmentLike], names: Names | None = None) -> str:
    return srt_blocks([(c.start_ms, c.end_ms, c.text)
                        for c in srt_cues(segments, names=names)])


def _vtt_time(ms: int) -> str:
    return _srt_time(ms).replace(",", ".")


def _vtt_text(text: str) -> str:
    # cue text is markup: &, < and > are escaped (so "-->" cannot end up in a cue)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt_blocks(cues: Sequence[tuple[int, int, str]]) -> str:
    return "WEBVTT\n\n" + "\n".join(f"{_vtt_time(a)} --> {_vtt_time(b)}\n{_vtt_text(t)}\n"
                                     for a, b, t in cues)


def render_vtt(segments: Sequence[SegmentLike], names: Names | None = None) -> str:
    """WebVTT: the same cues as the SRT file."""
    return vtt_blocks([(c.start_ms, c.end_ms, c.text)
                        for c in srt_cues(segments, names=names)])


def render_txt(result: dict[str, Any], segments: Sequence[SegmentLike] = (),
               names: Names | None = None) -> str:
    polished = result.get("polished_text")
    text = labelled_text(segments, names) or result.get("text") or ""
    if polished:
        return f"{polished}\n\n---- 原始转写 / raw transcript ----\n\n{text}\n"
    return f"{text}\n"


def render_md(title: str, source: str, result: dict[str, Any],
              segments: Sequence[SegmentLike] = (), names: Names | None = None) -> str:
    parts = [f"# {title}\n", f"- 来源 / source: {source}"]
    if result.get("duration_s") is not None:
        parts.append(f"- 时长 / duration: {result['duration_s']:.1f} s")
    parts.append("")
    if result.get("summary"):
        parts += ["## 摘要 / Summary\n", result["summary"].strip(), ""]
    if result.get("mindmap"):
        parts += ["## 思维导图 / Mind map\n", "```mermaid", notes.mermaid(result["mindmap"]),
                  "```", ""]
    chapters = _llm_chapters(result)
    polished = result.get("polished_text")
    if chapters and (polished or not segments):  # no sentence to put the headings above
        parts.append("## 章节 / Chapters\n")
        for c in chapters:
            parts += [f"### [{notes.clock(c['start_ms'])}] {c['title']}\n",
                      *([c["summary"], ""] if c.get("summary") else [])]
    parts.append("## 正文 / Transcript\n")
    if chapters and not polished and segments:
        starts = {int(c["sentence"]) - 1: c for c in chapters}
        for i, seg in enumerate(segments):
            if i in starts:
                c = starts[i]
                parts += ["", f"## [{notes.clock(c['start_ms'])}] {c['title']}\n",
                          *([f"> {c['summary']}", ""] if c.get("summary") else [])]
            label = speaker_label(seg, names)
            parts.append(f"**{label}**：{seg.text.strip()}" if label else seg.text.strip())
        parts.append("")
    elif not polished and labelled_text(segments):
        parts += [f"**{label}**：{text}\n" for label, text in turns(segments, names)]
    else:
        parts += [(polished or result.get("text") or "").strip(), ""]
    return "\n".join(parts)


def _llm_chapters(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The LLM's chapters (they name a sentence), not the video's own."""
    return [c for c in result.get("chapters") or [] if "sentence" in c and "start_ms" in c]


def render_json(meta: dict[str, Any], result: dict[str, Any],
                segments: Sequence[SegmentLike], names: Names | None = None) -> str:
    translation = result.get("translation") or {}
    lines = translation.get("sentences") or []
    doc = {**meta, "text": result.get("text"), "polished_text": result.get("polished_text"),
           "summary": result.get("summary"), "chapters": result.get("chapters") or [],
           "mindmap": result.get("mindmap"),
           "translation": {k: v for k, v in translation.items() if k != "sentences"}
           if translation else None,
           "segments": [{"start_ms": s.start_ms, "end_ms": s.end_ms, "text": s.text,
                         # [start_ms, end_ms] per timed token (paraformer-zh: per character)
                         "chars": s.chars, "speaker": speaker_label(s, names),
                         **({"translation": lines[i] if i < len(lines) else None}
                            if translation else {})}
                        for i, s in enumerate(segments)],
           "timings": result.get("stage_seconds"), "figures": {
               k: result.get(k) for k in ("duration_s", "asr_rtf", "model", "llm_tokens_in",
                                          "llm_tokens_out") if k in result}}
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def render_all(*, task_id: str, title: str, source: str, result: dict[str, Any],
               segments: Sequence[SegmentLike], meta: dict[str, Any] | None = None
               ) -> dict[str, str]:
    meta = {"task_id": task_id, "title": title, "source": source, **(meta or {})}
    names: Names = result.get("speaker_names") or {}
    files = {"txt": render_txt(result, segments, names),
             "md": render_md(title, source, result, segments, names),
             "json": render_json(meta, result, segments, names),
             "srt": render_srt(segments, names), "vtt": render_vtt(segments, names)}
    if chapters := _llm_chapters(result):
        files[NOTE_FILES["chapters"]] = notes.chapter_list(chapters)
    if result.get("mindmap"):
        files[NOTE_FILES["mindmap"]] = notes.mermaid(result["mindmap"])
    if translation := result.get("translation"):
        for lang, bilingual in ((translation["lang"], False), ("bilingual", True)):
            cues = notes.sentence_cues(segments, translation, bilingual=bilingual)
            files[f"{lang}.srt"], files[f"{lang}.vtt"] = srt_blocks(cues), vtt_blocks(cues)
    return files


_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]+')


def safe_filename(title: str | None, fallback: str) -> str:
    """A file name from a title: no path separators or control characters, not empty,
    at most 80 characters."""
    name = _UNSAFE.sub("_", (title or "").strip()).strip(" ._")
    return name[:80] or fallback
