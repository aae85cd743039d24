"""Hotwords through every way in: the API (JSON and form), the command line and
TINGJI_HOTWORDS_FILE; hostile values are a 400.  Real server and worker processes (the
bias path itself is tested in test_batching)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers.stack import Stack


def test_hotwords_reach_the_task_merged_with_the_global_file(
        stack_factory: Callable[..., Stack], media: dict[str, Path], tmp_path: Path) -> None:
    glossary = tmp_path / "hotwords.txt"
    glossary.write_text("# course terms\n傅里叶 拉普拉斯\n听记\n", encoding="utf-8")
    stack = stack_factory(TINGJI_HOTWORDS_FILE=str(glossary))
    form = stack.upload(media["speech"], hotwords="张三, 听记")
    resp = stack.http.post("/api/v1/process/bilibili", json={
        "video_url": "https://example.com/x.mp4", "hotwords": [" 张三 ", "Paraformer large"]})
    assert resp.status_code == 202, resp.text
    assert stack.http.get(f"/api/v1/task/{resp.json()['task_id']}").json()["status"] == "pending"
    words = tmp_path / "mine.txt"
    words.write_text("李四\n", encoding="utf-8")
    cli = stack.cli("submit", "--hotwords", "王五", "--hotwords-file", str(words),
                    str(media["mp3"]))
    assert cli.returncode == 0, cli.stderr
    by_cli = cli.stdout.split()[0]
    stack.worker()
    for tid, own in ((form, ["张三", "听记"]), (by_cli, ["王五", "李四"])):
        task = stack.finished(tid)
        assert task["status"] == "completed", task
        # the task's own first, then the file's (without repeats)
        assert task["result"]["hotwords"] == own + [w for w in ["傅里叶", "拉普拉斯", "听记"]
                                                    if w not in own]


def test_hostile_hotwords_are_a_400(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory()
    for bad, why in ((["x" * 41], "longer"), ([f"w{i}" for i in range(101)], "at most"),
                     (["a\x00b"], "control"), ("not a list", "")):
        resp = stack.http.post("/api/v1/process/bilibili", json={
            "video_url": "https://example.com/x.mp4", "hotwords": bad})
        assert resp.status_code == 400, resp.text
        assert "hotwords" in resp.json()["error"]["message"] and why in resp.text
    cli = stack.cli("submit", "--hotwords", "y" * 50, "https://example.com/x.mp4")
    assert cli.returncode == 2 and "--hotwords" in cli.stderr
    assert stack.http.get("/api/v1/tasks").json()["total"] == 0
