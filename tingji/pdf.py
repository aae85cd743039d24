"""PDF notes (``?format=pdf``): the title, the source, the summary, the chapters, the
mind map as an outline and the transcript with ``[mm:ss]`` per paragraph and speaker
names, laid out as HTML and CSS and printed by WeasyPrint with a CJK font embedded.

WeasyPrint needs Pango (Debian: ``libpango-1.0-0 libpangoft2-1.0-0``) and a font with
Chinese glyphs (``fonts-noto-cjk`` or ``fonts-wqy-zenhei``); ``PdfUnavailable`` says
which is missing.  Rendering takes about a second for an hour of speech: the API runs
it in a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from tingji.formats import Names, SegmentLike, speaker_label
from tingji.notes import clock

PARAGRAPH_CHARS = 220  # a paragraph of an unlabelled transcript ends after this many
CSS = """
@page { size: A4; margin: 18mm 16mm 20mm;
        @bottom-center { content: counter(page) " / " counter(pages); font-size: 8pt;
                         color: #777; } }
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
       "Noto Sans", sans-serif; font-size: 10.5pt; line-height: 1.6; color: #222; }
h1 { font-size: 18pt; margin: 0 0 4pt; }
h2 { font-size: 13pt; border-bottom: 1px solid #ccc; margin: 16pt 0 6pt; }
.source { color: #555; font-size: 9pt; word-break: break-all; }
.chapters li { margin: 2pt 0; }
.outline ul { margin: 1pt 0; padding-left: 14pt; }
time { color: #777; font-variant-numeric: tabular-nums; margin-right: 4pt; }
p { margin: 0 0 6pt; }
.speaker { font-weight: bold; margin-right: 3pt; }
"""


class PdfUnavailable(RuntimeError):
    """WeasyPrint or the system libraries it needs are not installed."""


def paragraphs(segments: Sequence[SegmentLike], names: Names | None = None,
               starts: frozenset[int] = frozenset()) -> list[tuple[int, str | None, str]]:
    """(start_ms, speaker, text) per paragraph: a new one at each change of speaker, at
    each chapter's first sentence (``starts``: indexes) and after ``PARAGRAPH_CHARS``."""
    out: list[tuple[int, str | None, str]] = []
    for i, seg in enumerate(segments):
        text, label = seg.text.strip(), speaker_label(seg, names)
        if not text:
            continue
        if out and out[-1][1] == label and i not in starts \
                and len(out[-1][2]) < PARAGRAPH_CHARS:
            out[-1] = (out[-1][0], label, out[-1][2] + text)
        else:
            out.append((seg.start_ms, label, text))
    return out


def _outline(node: dict[str, Any]) -> str:
    kids = "".join(_outline(c) for c in node.get("children") or [])
    return f"<li>{escape(str(node.get('title', '')))}" + (f"<ul>{kids}</ul>" if kids else "") \
        + "</li>"


def notes_html(title: str, source: str, result: dict[str, Any],
               segments: Sequence[SegmentLike], names: Names | None = None) -> str:
    parts = [f"<h1>{escape(title)}</h1>"]
    if source:
        parts.append(f'<p class="source">{escape(source)}</p>')
    if result.get("summary"):
        parts.append("<h2>摘要 Summary</h2>" + "".join(
            f"<p>{escape(line)}</p>" for line in str(result["summary"]).splitlines()
            if line.strip()))
    chapters = [c for c in result.get("chapters") or [] if "sentence" in c]
    if chapters:
        items = "".join(f"<li><time>[{clock(c['start_ms'])}]</time><b>{escape(c['title'])}"
                        f"</b>{' — ' + escape(c['summary']) if c.get('summary') else ''}</li>"
                        for c in chapters)
        parts.append(f'<h2>章节 Chapters</h2><ol class="chapters">{items}</ol>')
    if result.get("mindmap"):
        parts.append('<h2>思维导图 Mind map</h2><div class="outline"><ul>'
                     f"{_outline(result['mindmap'])}</ul></div>")
    parts.append("<h2>正文 Transcript</h2>")
    starts = frozenset(int(c["sentence"]) - 1 for c in chapters)
    for start, label, text in paragraphs(segments, names, starts):
        who = f'<span class="speaker">{escape(label)}：</span>' if label else ""
        parts.append(f"<p><time>[{clock(start)}]</time>{who}{escape(text)}</p>")
    if not segments and result.get("text"):
        parts.append(f"<p>{escape(str(result['text']))}</p>")
    return (f'<!doctype html><html lang="zh"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def available() -> bool:
    """Whether ``render_pdf`` can work here (WeasyPrint and Pango installed): the zip
    download holds the PDF only then."""
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def render_pdf(title: str, source: str, result: dict[str, Any],
               segments: Sequence[SegmentLike], names: Names | None = None) -> bytes:
    """The notes as a PDF document."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: Pango's libraries are missing
        raise PdfUnavailable(f"PDF needs WeasyPrint and Pango (Debian: apt-get install "
                             f"libpango-1.0-0 libpangoft2-1.0-0): {exc}") from None
    pdf = HTML(string=notes_html(title, source, result, segments, names)).write_pdf()
    assert pdf is not None
    return pdf
