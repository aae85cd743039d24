"""Everything in this repository is written here: no run of six significant lines
(blank lines, comments and imports aside, white space folded) of our code stands in
the installed source of funasr, the project tingji learned most from, nor in that of
the packages whose templates and examples it works beside (Alembic's revision
templates, Litestar, SQLAlchemy, the MCP SDK, yt-dlp, openai, WeasyPrint).  Where tingji
reproduces funasr's behaviour, tests elsewhere prove the two equal
(``tests/unit/test_onnx_text.py``, ``tests/unit/test_onnx_frontend.py``,
``tests/test_batching.py``, ``tests/test_onnx.py``)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

RUN = 6
ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".js", ".css", ".html", ".sh", ".mako", ".ini"}
# beside funasr: where a template or an example would most likely be pasted from
BESIDE = ("alembic", "litestar", "sqlalchemy", "mcp", "yt_dlp", "openai", "weasyprint")


def significant(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace")
                                 .splitlines(), 1):
        line = " ".join(raw.split())
        if len(line) <= 2 or line.startswith(("#", "//", "import ", "from ", '"""', "'''")):
            continue
        out.append((number, line))
    return out


def windows(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    lines = significant(path)
    return [(lines[k][0], tuple(s for _, s in lines[k:k + RUN]))
            for k in range(len(lines) - RUN + 1)]


def test_no_run_of_six_lines_is_funasrs_or_a_neighbours() -> None:
    spec = importlib.util.find_spec("funasr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("funasr is not installed")
    folders = [Path(f) for f in spec.submodule_search_locations]
    for name in BESIDE:
        found = importlib.util.find_spec(name)
        if found is not None and found.submodule_search_locations:
            folders += [Path(f) for f in found.submodule_search_locations]
    theirs = {w for folder in folders for p in folder.rglob("*")
              if p.suffix in SUFFIXES and p.is_file() for _, w in windows(p)}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    ours = [ROOT / f for f in tracked if Path(f).suffix in SUFFIXES and (ROOT / f).is_file()]
    assert len(theirs) > 10_000 and len(ours) > 100  # both sides were read
    shared = [f"{p.relative_to(ROOT)}:{line}" for p in ours for line, w in windows(p)
              if w in theirs]
    assert shared == [], shared
