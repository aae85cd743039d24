"""The web page in a real browser (Debian's Chromium driven by Playwright) against the
real server and worker: submit, live progress over SSE, task page, downloads, cancel,
retry.  Screenshots go to test-artifacts/ for a person to look at."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.http import check_srt
from tests.helpers.servers import FileServer, LlmStub
from tests.helpers.stack import Stack

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("TINGJI_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page_factory(browser: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []

    def make(base_url: str, *, locale: str = "en-US", width: int = 1280,
             height: int = 900) -> Any:
        ctx = browser.new_context(base_url=base_url, locale=locale, accept_downloads=True,
                                  viewport={"width": width, "height": height})
        contexts.append(ctx)
        page = ctx.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        return page
    yield make
    for ctx in contexts:
        ctx.close()


def _until(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll ``expression`` until it is true.  (``page.wait_for_function`` evaluates its
    string with ``eval`` inside the page, which the page's CSP refuses.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.1)


def row(page: Any, task_id: str) -> Any:
    return page.locator(f'#tasks tr[data-id="{task_id}"]')


def wait_status(page: Any, task_id: str, status: str, timeout_s: float = 120) -> None:
    row(page, task_id).locator(f".badge.{status}").wait_for(timeout=timeout_s * 1000)


def wait_total(stack: Stack, n: int) -> None:
    stack.wait(lambda: stack.http.get("/api/v1/tasks").json()["total"] == n, 60,
               f"expected {n} tasks")


def newest_task_id(stack: Stack) -> str:
    return str(stack.http.get("/api/v1/tasks", params={"limit": 1}).json()["tasks"][0]["task_id"])


def test_the_page_end_to_end(stack_factory: Callable[..., Stack], page_factory: Any,
                             media: dict[str, Path], files: FileServer,
                             tmp_path: Path) -> None:
    from tests.helpers.media import convert

    ARTIFACTS.mkdir(exist_ok=True)
    # a long clip whose transcription the page follows: 9.6 minutes, decoded in batches
    # of 10 s of speech, so its progress moves in small steps for a few seconds (one
    # thread decodes the 4.8 minutes of media["long"] in about a second)
    lecture = convert(media["long"], tmp_path / "lecture.wav", "-filter_complex",
                      "aloop=loop=1:size=2e9")
    # no worker yet: what is submitted stays pending
    stack = stack_factory(TINGJI_CPU_BATCH_SIZE_S="10")
    page = page_factory(stack.server.url)
    page.goto("/")
    page.wait_for_selector("#live.on")  # the SSE stream is connected
    # no LLM on this server: polish and summary are off and say why
    page.wait_for_selector("#polish:disabled")
    assert not page.is_checked("#polish") and page.is_disabled("#summarize")
    assert "TINGJI_LLM_BASE_URL" in (page.locator("label:has(#polish)").get_attribute("title")
                                     or "")

    # a link -> a pending row, then cancel it with its button
    page.fill("#links", f"{files.url}/part1.mp3")
    page.click("#submit-btn")
    wait_total(stack, 1)
    doomed = newest_task_id(stack)
    wait_status(page, doomed, "pending", 10)
    # its Time says it is waiting, not that it runs
    assert row(page, doomed).locator(".time").inner_text().split()[0] in ("waiting", "等待")
    row(page, doomed).locator("button.cancel").click()
    wait_status(page, doomed, "cancelled", 10)
    assert row(page, doomed).locator(".time").inner_text() == "—"  # it never ran
    assert stack.task(doomed)["status"] == "cancelled"

    # two links at once -> a batch
    page.fill("#links", f"{files.url}/talk.mp4\n{files.url}/part1.mp3")
    page.click("#submit-btn")
    wait_total(stack, 3)
    batch = stack.http.get("/api/v1/tasks", params={"limit": 2}).json()["tasks"]
    assert batch[0]["batch_id"] and batch[0]["batch_id"] == batch[1]["batch_id"]

    # an upload (the long clip, so progress is visible) and a file that is not audio,
    # chosen perhaps while the page still finishes the batch's submission
    page.set_input_files("#files", [str(lecture), str(media["text_mp3"])])
    page.click("#submit-btn")
    wait_total(stack, 5)
    tasks = stack.http.get("/api/v1/tasks", params={"limit": 2}).json()["tasks"]
    by_source = {t["source"]: t["task_id"] for t in tasks}
    long_id, bad_id = by_source["lecture.wav"], by_source["notes.mp3"]

    # every value the long clip's progress bar shows, read inside the page every 25 ms
    # (its transcription takes a second or two: a poll from here would miss most of it)
    page.evaluate("""id => { window.seen = new Set(); setInterval(() => {
        const bar = document.querySelector(`#tasks tr[data-id="${id}"] progress`);
        if (bar) window.seen.add(Math.round(bar.value * 100) / 100); }, 25); }""", long_id)
    stack.worker()  # now the work happens; the page learns of it through SSE only
    wait_status(page, long_id, "completed", 180)
    seen = page.evaluate("() => [...window.seen]")
    assert any(0 < v < 1 for v in seen), f"no intermediate progress seen: {sorted(seen)}"
    assert page.locator("#live").get_attribute("data-mode") == "on"  # never fell back
    for t in batch:
        wait_status(page, t["task_id"], "completed", 120)
    wait_status(page, bad_id, "failed", 60)
    page.screenshot(path=str(ARTIFACTS / "web-list.png"), full_page=True)

    # retry the failed one with its button: it runs again, and fails again (what was not
    # media was not kept: its upload is gone)
    row(page, bad_id).locator("button.retry").click()
    stack.wait(lambda: stack.task(bad_id)["attempts"] == 2 and
               stack.task(bad_id)["status"] == "failed", 60, "retry did not run")
    wait_status(page, bad_id, "failed", 30)

    # the task page: texts, subtitles, history, downloads
    row(page, long_id).locator(".src a").click()
    page.wait_for_selector("#t-subs li")
    assert page.locator("#t-status").inner_text() == "completed"
    assert page.locator("#t-raw").inner_text().strip()
    assert page.locator("#t-subs li").count() > 10
    # the history comes with a fetch of its own, after the subtitles
    page.wait_for_selector("#t-events tbody tr:nth-child(8)")
    with page.expect_download() as info:
        page.click('#t-downloads button[data-fmt="srt"]')
    download = info.value
    assert download.suggested_filename.endswith(".srt")
    srt_path = ARTIFACTS / "downloaded.srt"
    download.save_as(srt_path)
    assert len(check_srt(srt_path.read_text(encoding="utf-8"))) > 10
    page.screenshot(path=str(ARTIFACTS / "web-task.png"), full_page=True)

    # the failed task's page shows its error
    page.goto(f"/#/task/{bad_id}")
    page.wait_for_selector("#t-error:not([hidden])")
    assert "uploaded file is gone" in page.locator("#t-error").inner_text()
    first = [e for e in stack.events(bad_id) if e["event"] == "failed"][0]
    assert "not audio or video" in json.dumps(first, ensure_ascii=False)
    assert page.errors == []


def test_sse_drop_falls_back_to_polling_then_reconnects(
        stack_factory: Callable[..., Stack], page_factory: Any, media: dict[str, Path]) -> None:
    stack = stack_factory()
    page = page_factory(stack.server.url)
    page.goto("/")
    page.wait_for_selector("#live.on")
    # the API restarts: the stream drops, the page polls, then reconnects by itself
    from tests.helpers.procs import start_server
    port = int(stack.server.url.rsplit(":", 1)[1])
    stack.server.stop()
    page.wait_for_selector("#live.polling", timeout=15_000)
    stack.server = start_server(stack.env, stack.root / "server2.log", port=port)
    page.wait_for_selector("#live.on", timeout=30_000)
    tid = stack.upload(media["speech"])
    wait_status(page, tid, "pending", 10)  # arrived through the new stream


def test_token_and_chinese_labels_on_a_phone(stack_factory: Callable[..., Stack],
                                             page_factory: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    stack = stack_factory(TINGJI_API_TOKEN="t0ken")
    page = page_factory(stack.server.url, locale="zh-CN", width=390, height=844)
    page.goto("/")
    flash = page.locator("#flash")
    flash.wait_for()
    assert "API token" in flash.inner_text() or "401" in flash.inner_text()
    assert page.locator("#submit-btn").inner_text() == "开始转写"
    page.locator(".token summary").click()
    page.fill("#token", "t0ken")
    page.click("#token-form button")
    page.wait_for_selector("#live.on")
    page.fill("#links", "https://www.bilibili.com/video/BV1GJ411x7h7")
    page.click("#submit-btn")
    # ("Token saved." is an info flash too: wait for the task itself)
    tid = stack.wait(lambda: newest_task_id_with_token(stack), 30, "the task was not queued")
    wait_status(page, tid, "pending", 10)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    page.screenshot(path=str(ARTIFACTS / "web-phone-zh.png"), full_page=True)


def newest_task_id_with_token(stack: Stack) -> str:
    resp = stack.http.get("/api/v1/tasks", params={"limit": 1},
                          headers={"Authorization": "Bearer t0ken"})
    tasks = resp.json()["tasks"]
    return str(tasks[0]["task_id"]) if tasks else ""


def test_parts_hotwords_and_notes_from_the_page(
        stack_factory: Callable[..., Stack], page_factory: Any, files: FileServer,
        llm: LlmStub) -> None:
    """One link, "List parts": a checkbox per part; the parts left ticked are submitted,
    with the hotwords typed in and the notes ticked (chapters, mind map, a translation),
    which the task's page then shows."""
    ARTIFACTS.mkdir(exist_ok=True)
    stack = stack_factory(TINGJI_LLM_BASE_URL=llm.base_url, TINGJI_LLM_MODEL="stub-chat")
    page = page_factory(stack.server.url)
    page.goto("/")
    page.fill("#links", f"{files.url}/parts.html")
    page.click("#parts-btn")
    page.wait_for_selector("#parts:not([hidden])", timeout=60_000)
    boxes = page.locator("#parts-list input[type=checkbox]")
    assert boxes.count() == 2 and "两集讲座" in page.inner_text("#parts-note")
    boxes.nth(0).uncheck()
    page.fill("#hotwords", "听记， 转写")
    page.wait_for_selector("#chapters:enabled")  # an LLM is configured
    page.check("#chapters")
    page.check("#mindmap")
    page.select_option("#translate", "en")
    page.click("#submit-btn")
    wait_total(stack, 1)
    task = stack.http.get("/api/v1/tasks").json()["tasks"][0]
    stack.worker()
    done = stack.finished(task["task_id"])
    # one part left: one file, no parts as chapters (both parts would make two)
    assert done["status"] == "completed" and done["result"]["video_chapters"] == [], done
    assert done["result"]["hotwords"] == ["听记", "转写"]
    chapters = done["result"]["chapters"]
    assert chapters and all("sentence" in c for c in chapters)

    page.goto(f"/#/task/{task['task_id']}")
    page.wait_for_selector("#t-subs li .translation")
    assert page.locator("#t-chapters li").count() == len(chapters)
    assert "第1章" in page.inner_text("#t-chapters")
    assert page.locator("#t-mindmap li").count() == 4  # the centre and three items
    # drawn as a tree: a box per node, a curve per branch, the centre leftmost
    assert page.locator("#t-mindmap svg .mm-node").count() == 4
    assert page.locator("#t-mindmap svg .mm-link").count() == 3
    assert page.locator("#t-mindmap svg .mm-depth-0 text").inner_html() == "中心主题"
    page.locator("#t-mindmap-card").screenshot(path=str(ARTIFACTS / "web-mindmap.png"))
    assert page.locator("#t-subs li .translation").first.inner_text().startswith("EN:")
    # the page plays along: a click on the third sentence seeks to its start and marks it
    page.wait_for_selector("#t-audio:not([hidden])")
    _until(page, "document.querySelector('#t-audio').readyState >= 1")
    segs = stack.http.get(f"/api/v1/task/{task['task_id']}/segments").json()
    page.locator("#t-subs li").nth(2).click()
    at = page.evaluate("document.querySelector('#t-audio').currentTime")
    assert at == pytest.approx(segs[2]["start_ms"] / 1000, abs=0.05)
    page.wait_for_selector("#t-subs li.playing")
    _until(page,  # it plays: the position moves on from the sentence's start
           f"document.querySelector('#t-audio').currentTime > {segs[2]['start_ms'] / 1000 + 0.3}")
    page.locator("#t-chapters li").nth(1).click()  # a chapter: to its first sentence
    at = page.evaluate("document.querySelector('#t-audio').currentTime")
    assert at == pytest.approx(chapters[1]["start_ms"] / 1000, abs=0.05)
    with page.expect_download() as info:
        page.click("#dl-bilingual")
    assert info.value.suggested_filename.endswith(".bilingual.srt")
    cues = check_srt(Path(info.value.path()).read_text(encoding="utf-8"))
    assert all(len(text.split("\n")) == 2 for _, _, text in cues)
    page.screenshot(path=str(ARTIFACTS / "web-notes.png"), full_page=True)
    assert page.errors == []
