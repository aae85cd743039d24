"""Lists become batches, and parts of a multi-part video can be chosen: real server and
worker processes, real yt-dlp reading local pages."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.servers import FileServer
from tests.helpers.stack import Stack


@pytest.fixture(scope="module")
def site(media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[FileServer]:
    """parts.html: a three-part "video" (the second part twice as long); list.html: a
    page listing three videos."""
    root = tmp_path_factory.mktemp("site")
    speech = media["mp3"]
    (root / "p1.mp3").write_bytes(speech.read_bytes())
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-stream_loop", "1", "-i",
                    str(speech), "-c", "copy", str(root / "p2.mp3")], check=True)
    (root / "p3.mp3").write_bytes(speech.read_bytes())
    (root / "parts.html").write_text(
        "<html><head><title>三集讲座</title></head><body>"
        + "".join(f"<audio src='p{i}.mp3' title='第{i}集'></audio>" for i in (1, 2, 3))
        + "</body></html>", encoding="utf-8")
    for i in (1, 2, 3):
        (root / f"v{i}.mp3").write_bytes(speech.read_bytes())
    (root / "list.html").write_text(
        "<html><head><title>收藏夹</title></head><body>"
        + "".join(f"<video src='v{i}.mp3'></video>" for i in (1, 2, 3))
        + "</body></html>", encoding="utf-8")
    server = FileServer(root)
    yield server
    server.close()


def submit(stack: Stack, **body: Any) -> dict[str, Any]:
    resp = stack.http.post("/api/v1/process/bilibili", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_parts_are_listed_and_chosen(stack_factory: Callable[..., Stack],
                                     site: FileServer) -> None:
    stack = stack_factory()
    listed = stack.http.get("/api/v1/bilibili/parts", params={"url": f"{site.url}/parts.html"})
    assert listed.status_code == 200, listed.text
    doc = listed.json()
    assert doc["title"] == "三集讲座" and doc["is_list"] is False and doc["count"] == 3
    assert [p["number"] for p in doc["parts"]] == [1, 2, 3]
    titles = [p["title"] for p in doc["parts"]]  # yt-dlp's generic names: "三集讲座 (2)"
    assert len(set(titles)) == 3 and all("三集讲座" in t for t in titles)

    cli = stack.cli("parts", f"{site.url}/parts.html")
    assert cli.returncode == 0, cli.stderr
    assert "三集讲座" in cli.stdout and "3 entries" in cli.stdout
    assert [line.split()[0] for line in cli.stdout.splitlines()[1:]] == ["1", "2", "3"]
    bad = stack.cli("submit", "--parts", "3-1", f"{site.url}/parts.html")
    assert bad.returncode == 2 and "--parts" in bad.stderr and "nothing submitted" in bad.stderr

    stack.worker()
    chosen = submit(stack, video_url=f"{site.url}/parts.html", parts=[1, 3])
    only_two = submit(stack, video_url=f"{site.url}/parts.html?p=2")
    every = submit(stack, video_url=f"{site.url}/parts.html")
    tasks = {k: stack.finished(v["task_id"]) for k, v in
             (("chosen", chosen), ("two", only_two), ("every", every))}
    assert all(t["status"] == "completed" for t in tasks.values()), tasks
    full = tasks["every"]["result"]["chapters"]
    assert [c["index"] for c in full] == [1, 2, 3]
    d1, d2, d3 = (c["duration_s"] for c in full)
    assert d2 == pytest.approx(2 * d1, abs=0.2)
    picked = tasks["chosen"]["result"]
    assert [c["index"] for c in picked["chapters"]] == [1, 3]  # the parts' own numbers
    assert picked["duration_s"] == pytest.approx(d1 + d3, abs=0.2)
    assert tasks["two"]["result"]["duration_s"] == pytest.approx(d2, abs=0.2)
    assert tasks["two"]["result"]["chapters"] == []

    for bad, why in (({"parts": [0]}, "parts"), ({"parts": [2, 2]}, "twice"),
                     ({"parts": [1], "expand": True}, "list")):
        resp = stack.http.post("/api/v1/process/bilibili",
                               json={"video_url": f"{site.url}/parts.html", **bad})
        assert resp.status_code == 400 and why in resp.json()["error"]["message"], resp.text
    refused = stack.http.get("/api/v1/bilibili/parts", params={"url": "file:///etc/passwd"})
    assert refused.status_code == 400


def test_a_list_becomes_a_batch(stack_factory: Callable[..., Stack], site: FileServer) -> None:
    stack = stack_factory()
    stack.worker()
    sub = submit(stack, video_url=f"{site.url}/list.html", expand=True, summarize=False)
    assert sub["kind"] == "list" and sub["batch_id"]
    listed = stack.finished(sub["task_id"])
    assert listed["status"] == "completed" and listed["kind"] == "list", listed
    children = listed["result"]["task_ids"]
    assert len(children) == 3 and listed["result"]["batch_id"] == sub["batch_id"]
    done = [stack.finished(t) for t in children]
    assert all(t["status"] == "completed" and t["kind"] == "url" for t in done), done
    assert sorted(t["source"].rsplit("/", 1)[-1] for t in done) == ["v1.mp3", "v2.mp3",
                                                                    "v3.mp3"]
    batch = stack.http.get("/api/v1/tasks", params={"batch_id": sub["batch_id"]}).json()
    assert batch["total"] == 4  # the list task and its three entries

    # the same list with the same key again: the same list task, nothing new
    again = stack.http.post("/api/v1/process/bilibili", json={
        "video_url": f"{site.url}/list.html", "expand": True, "idempotency_key": "fav"})
    assert again.status_code == 202
    same = stack.http.post("/api/v1/process/bilibili", json={
        "video_url": f"{site.url}/list.html", "expand": True, "idempotency_key": "fav"})
    assert same.status_code == 200 and same.json()["task_id"] == again.json()["task_id"]


def test_a_list_longer_than_the_cap_fails_with_its_count(
        stack_factory: Callable[..., Stack], site: FileServer) -> None:
    stack = stack_factory(TINGJI_MAX_LIST_ITEMS="2")
    stack.worker(preload=False)  # as `tingji worker`: a list's expansion needs no model
    sub = submit(stack, video_url=f"{site.url}/list.html", expand=True)
    task = stack.finished(sub["task_id"])
    assert task["status"] == "failed" and task["error"]["type"] == "TooManyItems", task
    assert "3 entries" in task["error"]["message"]
    assert "TINGJI_MAX_LIST_ITEMS" in task["error"]["message"]
    assert stack.http.get("/api/v1/tasks").json()["total"] == 1  # nothing was added
