"""Shared fixtures: real SQLite files and the real PostgreSQL, migrated by Alembic.

``TINGJI_TEST_PG_URL`` (default: the local server's ``test`` database) names the
PostgreSQL database the suite may wipe (under pytest-xdist, one per test process and
checkout: ``test_<checkout>_gw0``, ...).  Set it to ``skip`` to run SQLite only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from db import migrate
from db.engine import make_engine
from db.queue import Queue, QueueConfig

# Commands the tests run without TINGJI_DATA_DIR use the user data folder: a temporary
# one, never the real home's.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="tingji-xdg-")
PG_URL = os.environ.get("TINGJI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent


def _test_database(url: str) -> str:
    """The database this test process may wipe: ``url``'s own, or under pytest-xdist one
    per process and checkout (``test_<checkout>_gw0``, ...), so that two processes, or
    two checkouts on one machine, never wipe each other's; created on first use.  A
    server that cannot be used stops the run with one line."""
    from sqlalchemy.engine import make_url

    from tests.helpers.pg import ensure_database

    target = make_url(url)
    if (worker := os.environ.get("PYTEST_XDIST_WORKER")):
        checkout = hashlib.sha1(str(ROOT).encode()).hexdigest()[:6]
        target = target.set(database=f"{target.database}_{checkout}_{worker}")
    rendered = target.render_as_string(hide_password=False)
    try:
        ensure_database(rendered)
    except Exception as exc:  # noqa: BLE001  (refused, bad credentials, no such role ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        pytest.exit(f"the tests' PostgreSQL ({target.render_as_string()}) cannot be used: "
                    f"{first}. Start it (.ci/run shows how), or set TINGJI_TEST_PG_URL=skip "
                    "to run on SQLite only", returncode=4)
    return rendered


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported (they read ``PG_URL``, and several import
    funasr)."""
    global PG_URL
    if PG_URL != "skip":
        PG_URL = _test_database(PG_URL)
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", 0):
        _import_funasr_as_the_worker_does()


def _import_funasr_as_the_worker_does() -> None:
    """A process that runs tests imports funasr as the worker does (the lean import of
    ``worker.engines.torch.patches``: about 3 s here, where ``import funasr`` takes 9),
    so the tests in process see the funasr of a worker.  Without funasr, nothing."""
    import importlib.util

    if importlib.util.find_spec("funasr") is not None:
        from worker.engines.torch.patches import import_funasr

        import_funasr()


def _reset_pg_schema() -> None:
    async def run() -> None:
        engine = make_engine(PG_URL, pool_size=1)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("DROP SCHEMA public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
        finally:
            await engine.dispose()
    asyncio.run(run())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "tingji.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_migrated() -> str:
    if PG_URL == "skip":
        pytest.skip("PostgreSQL disabled by TINGJI_TEST_PG_URL=skip")
    _reset_pg_schema()
    migrate.upgrade(PG_URL)
    return PG_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database on each backend."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "tingji.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("pg_migrated")
        truncate_pg(url)
        yield url


def truncate_pg(url: str) -> None:
    """Empties every table of a migrated PostgreSQL database."""
    from tests.helpers.pg import truncate

    asyncio.run(truncate(url))


@pytest.fixture
async def queue(db_url: str) -> AsyncIterator[Queue]:
    engine = make_engine(db_url)
    q = Queue(engine, QueueConfig(lease_seconds=30, max_attempts=3, max_pending=50,
                                  backoff_base_seconds=10.0))
    try:
        yield q
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Random-weight asr/vad/punc folders, loaded by the worker through the same
    AutoModel call as hub ids."""
    pytest.importorskip("funasr", reason="the worker's packages are not installed (the "
                        "Python 3.12/3.13 runs test what needs no torch)")
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, "-m", "tests.helpers.tiny_funasr", str(out)], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    return {k: str(out / k) for k in ("asr", "vad", "punc", "spk")}


@pytest.fixture(scope="session")
def sensitive_asr(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny ASR model whose CIF predictor follows the encoder output closely (see
    ``build_asr``'s ``predictor_gain``): padding leaks show in its text and timestamps."""
    pytest.importorskip("funasr", reason="the worker's packages are not installed")
    out = tmp_path_factory.mktemp("sensitive")
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "tests.helpers.tiny_funasr", str(out), "--only", "asr",
                    "--predictor-gain", "0.3", "--seed", "3"], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    return str(out / "asr")


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five clips of different lengths (about 6 to 45 s), sentences and pauses."""
    from tests.helpers import media as m

    d = tmp_path_factory.mktemp("clips")
    s = m.SENTENCES
    out = []
    for i in range(5):
        sentences = [s[(i + j) % len(s)] for j in range(1 + 2 * i)]
        out.append(m.speech_wav(d / f"clip{i}.wav", sentences, pause_s=0.7 + 0.25 * i))
    return out


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real media made with espeak-ng and ffmpeg."""
    from tests.helpers import media as m

    d = tmp_path_factory.mktemp("media")
    speech = m.speech_wav(d / "speech.wav", m.SENTENCES)
    long = m.convert(speech, d / "long.wav", "-filter_complex",
                     "aloop=loop=6:size=2e9", "-ar", "16000", "-ac", "1")
    text_mp3 = d / "notes.mp3"
    text_mp3.write_text("这不是音频文件，只是一些文字。\n" * 50, encoding="utf-8")
    return {
        "speech": speech,
        "long": long,  # ~4.8 minutes: a task that stays in transcription for seconds
        "video": m.video_with_speech(speech, d / "talk.mp4"),
        "mp3": m.convert(speech, d / "talk.mp3"),
        "silent_video": m.silent_video(d / "silent.mp4"),
        "text_mp3": text_mp3,
    }


@pytest.fixture
def stack_factory(tmp_path: Path, tiny_models: dict[str, str]) -> Iterator[Any]:
    """Make ``Stack``s (server + workers on a fresh data dir); all stopped afterwards."""
    from tests.helpers.stack import Stack

    stacks: list[Stack] = []

    def make(**env: str) -> Stack:
        s = Stack(tmp_path / f"stack{len(stacks)}", tiny_models, **env)
        stacks.append(s)
        return s
    yield make
    for s in stacks:
        s.close()


@pytest.fixture(scope="session")
def files(media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local web server with media for yt-dlp's generic extractor: talk.mp4 (video with
    speech), part1.mp3, part2.mp3, parts.html (a page with both parts, which yt-dlp
    treats like a multi-part video) and subtitled.html (lecture.mp4, a grey picture with
    speech, with a Chinese subtitle track, talk.zh.vtt)."""
    import shutil

    from tests.helpers.servers import FileServer

    root = tmp_path_factory.mktemp("www")
    shutil.copy(media["video"], root / "talk.mp4")
    shutil.copy(media["mp3"], root / "part1.mp3")
    shutil.copy(media["mp3"], root / "part2.mp3")
    (root / "parts.html").write_text(
        "<html><head><title>两集讲座</title></head><body>"
        "<audio src='part1.mp3' title='第一集'></audio>"
        "<audio src='part2.mp3' title='第二集'></audio></body></html>", encoding="utf-8")
    # a picture large enough to read burned-in subtitles on (grey, 320x180)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=0x404040:s=320x180:r=10", "-i", str(media["speech"]), "-shortest",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", str(root / "lecture.mp4")], check=True)
    (root / "subtitled.html").write_text(
        "<html><head><title>带字幕的讲座</title></head><body><video src='lecture.mp4'>"
        "<track kind='subtitles' srclang='zh' label='中文' src='talk.zh.vtt'>"
        "</video></body></html>", encoding="utf-8")
    (root / "talk.zh.vtt").write_text(SUBTITLES, encoding="utf-8")
    server = FileServer(root)
    yield server
    server.close()


# the human-made subtitles of subtitled.html (a cue with markup, one with settings)
SUBTITLES = """WEBVTT

NOTE made by hand

1
00:00:00.500 --> 00:00:03.200
大家好，<b>欢迎</b>来到听记的讲座。

00:00:03.400 --> 00:00:07.000 align:start position:10%
今天我们讲语音识别。

00:00:07.500 --> 00:00:09.900
谢谢大家！
"""


@pytest.fixture
def llm() -> Iterator[Any]:
    """An OpenAI-compatible chat stub on 127.0.0.1 (``tests.helpers.servers.LlmStub``)."""
    from tests.helpers.servers import LlmStub

    stub = LlmStub()
    yield stub
    stub.close()
