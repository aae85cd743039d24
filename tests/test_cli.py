"""The real `tingji` executable against a real server and worker (tiny model)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.http import check_srt
from tests.helpers.procs import TINGJI, clean_env, free_port
from tests.helpers.stack import Stack

pytestmark = pytest.mark.slow


def ids_in(text: str) -> list[str]:
    import re
    return re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text)


def test_unreachable_service_is_one_line(tmp_path: Path) -> None:
    env = clean_env(TINGJI_URL=f"http://127.0.0.1:{free_port()}")
    for args in (["list"], ["submit", "https://x.org/a.mp4"], ["show", "abcd1234"]):
        res = subprocess.run([TINGJI, *args], env=env, capture_output=True, text=True,
                             timeout=30, cwd=tmp_path)
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach" in lines[0] and "tingji run" in lines[0]


def test_submit_wait_and_the_everyday_commands(stack_factory: Callable[..., Stack],
                                               media: dict[str, Path],
                                               tmp_path: Path) -> None:
    stack = stack_factory()
    stack.worker()
    ok = stack.cli("submit", str(media["speech"]), "--wait")
    assert ok.returncode == 0, ok.stderr
    [tid] = ids_in(ok.stdout)
    assert stack.task(tid)["status"] == "completed"

    bad = stack.cli("submit", str(media["text_mp3"]), "--wait")
    assert bad.returncode != 0
    [bad_id] = ids_in(bad.stdout)
    assert "not audio or video" in bad.stderr

    listed = stack.cli("list")
    assert listed.returncode == 0 and tid[:8] in listed.stdout and bad_id[:8] in listed.stdout
    as_json = json.loads(stack.cli("list", "--status", "failed", "--json").stdout)
    assert [t["task_id"] for t in as_json["tasks"]] == [bad_id]

    shown = stack.cli("show", tid[:8])
    assert shown.returncode == 0, shown.stderr
    assert tid in shown.stdout and "stage_completed" in shown.stdout
    # piped: whole lines, not padded out to the 200 columns rich assumes
    for out in (shown.stdout, listed.stdout):
        assert not [line for line in out.splitlines() if line != line.rstrip()], out
    detail = json.loads(stack.cli("show", tid[:8], "--json").stdout)
    assert detail["task"]["task_id"] == tid and detail["events"][-1]["event"] == "completed"

    srt = stack.cli("result", tid[:8], "--format", "srt")
    assert srt.returncode == 0 and check_srt(srt.stdout)
    written = stack.cli("result", tid[:8], "-o", str(tmp_path / "out.md"))
    assert written.returncode == 0 and "# speech" in (tmp_path / "out.md").read_text()
    stack.cli("result", tid[:8], "-o", str(tmp_path / "all.zip"))
    assert (tmp_path / "all.zip").stat().st_size > 0

    retried = stack.cli("retry", bad_id[:8])
    assert retried.returncode == 0 and f"{bad_id}  pending" in retried.stdout
    again = stack.finished(bad_id)
    assert again["status"] == "failed" and again["attempts"] == 2
    assert stack.cli("retry", tid[:8]).returncode == 1  # completed: not retryable
    assert stack.cli("show", "zzzz").returncode == 1


def test_cancel_and_ambiguous_short_ids(stack_factory: Callable[..., Stack],
                                        media: dict[str, Path]) -> None:
    stack = stack_factory()  # no worker: tasks stay pending
    out = stack.cli("submit", str(media["speech"]), "https://x.org/a.mp4",
                    "https://x.org/b.mp4")
    ids = ids_in(out.stdout)
    assert out.returncode == 0 and len(ids) == 3
    cancelled = stack.cli("cancel", ids[0][:8], ids[1])
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{ids[0]}  cancelled" in cancelled.stdout
    assert f"{ids[1]}  cancelled" in cancelled.stdout
    assert stack.cli("cancel", ids[0][:8]).returncode == 1  # already cancelled: 409
    # two ids sharing their first 8 characters: the short id is refused as ambiguous
    twin = ids[2][:8] + "-ffff-4fff-8fff-ffffffffffff"
    db = sqlite3.connect(stack.data / "tingji.db")
    cols = [r[1] for r in db.execute("PRAGMA table_info(tasks)")]
    db.execute(f"INSERT INTO tasks ({', '.join(cols)}) SELECT "
               + ", ".join("?" if c == "id" else "NULL" if c == "idempotency_key" else c
                           for c in cols) + " FROM tasks WHERE id = ?", (twin, ids[2]))
    db.commit()
    amb = stack.cli("show", ids[2][:8])
    assert amb.returncode == 1 and "ambiguous" in amb.stderr
    assert stack.cli("show", ids[2][:13]).returncode == 0

    # prune: finished tasks go, with their upload; live ones stay
    assert len(list((stack.data / "uploads").iterdir())) == 1
    pruned = stack.cli("prune", "--older-than", "0")
    assert pruned.returncode == 0 and "pruned 2" in pruned.stdout, pruned.stderr
    assert list((stack.data / "uploads").iterdir()) == []
    assert stack.http.get(f"/api/v1/task/{ids[0]}").status_code == 404
    assert stack.http.get(f"/api/v1/task/{ids[2]}").status_code == 200


def test_batch_file_with_a_bad_line_submits_nothing(stack_factory: Callable[..., Stack],
                                                    media: dict[str, Path],
                                                    tmp_path: Path) -> None:
    stack = stack_factory()
    links = tmp_path / "links.txt"
    links.write_text(f"# tonight\n{media['speech']}\n\nhttps://x.org/a.mp4\n"
                     "ftp://x.org/b.mp3\nno-such-file.wav\n", encoding="utf-8")
    res = stack.cli("batch", str(links))
    assert res.returncode == 2
    assert "line 5" in res.stderr and "line 6" in res.stderr and "nothing submitted" in res.stderr
    assert stack.http.get("/api/v1/tasks").json()["total"] == 0


def test_overnight_batch_survives_a_sigkilled_worker(stack_factory: Callable[..., Stack],
                                                     media: dict[str, Path],
                                                     tmp_path: Path) -> None:
    stack = stack_factory()
    first = stack.worker()
    links = tmp_path / "links.txt"
    links.write_text("\n".join([str(media["long"]), str(media["speech"]), str(media["mp3"]),
                                str(media["video"])]) + "\n", encoding="utf-8")
    res = stack.cli("batch", str(links))
    assert res.returncode == 0, res.stderr
    batch_id = res.stdout.strip()
    tasks = stack.http.get("/api/v1/tasks", params={"batch_id": batch_id}).json()["tasks"]
    assert len(tasks) == 4
    long_id = next(t["task_id"] for t in tasks if t["source"] == "long.wav")
    stack.pause_when(first, lambda: (t := stack.task(long_id))["stage"] == "transcribe"
                     and t["progress"] > 0.05, 90, "the long task never started transcribing")
    first.kill(signal.SIGKILL)
    # after the crash the user runs the same file again: nothing is submitted twice
    again = stack.cli("batch", str(links))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == batch_id and again.stderr.count("already submitted (") == 4
    stack.worker()
    watch = stack.cli("watch", "--batch", batch_id[:8], timeout=300)
    assert watch.returncode == 0, watch.stderr
    listed = json.loads(stack.cli("list", "--batch", batch_id, "--json").stdout)
    assert [t["status"] for t in listed["tasks"]] == ["completed"] * 4
    assert stack.task(long_id)["attempts"] == 2
    # a line added to the file: only that one is new, in the same batch
    with links.open("a", encoding="utf-8") as fh:
        fh.write("https://x.org/added.mp4\n")
    more = stack.cli("batch", str(links))
    assert more.returncode == 0 and "1 task(s) queued, 4 already submitted" in more.stderr
    assert stack.http.get("/api/v1/tasks").json()["total"] == 5
    # --no-dedupe: new tasks whatever was submitted before
    forced = stack.cli("submit", str(media["speech"]), "--no-dedupe")
    assert forced.returncode == 0 and "already" not in forced.stdout
    assert stack.http.get("/api/v1/tasks").json()["total"] == 6


def test_watch_follows_the_live_feed_across_an_api_restart(
        stack_factory: Callable[..., Stack], media: dict[str, Path]) -> None:
    from tests.helpers.procs import start_server

    stack = stack_factory()  # no worker yet: the task waits
    tid = stack.upload(media["speech"])
    port = int(stack.server.url.rsplit(":", 1)[1])
    watch = subprocess.Popen([TINGJI, "watch"], env={**stack.env, "TINGJI_URL": stack.server.url},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watch.stderr is not None
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(watch.stderr), daemon=True)
    reader.start()
    try:
        stack.wait(lambda: any("following the live feed" in e for e in errors), 30,
                   "watch did not connect")
        stack.server.stop()  # the stream breaks; watch keeps trying
        stack.server = start_server(stack.env, stack.root / "server2.log", port=port)
        stack.worker()
        out, _ = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
    reader.join(5)
    assert watch.returncode == 0, "".join(errors)
    assert stack.task(tid)["status"] == "completed"
    assert "0 running or waiting" in out


def test_follow_skips_keep_alives() -> None:
    """The live feed's keep-alive (Litestar writes ``: keep-alive`` with an empty data
    line) is not an event: `tingji watch` used to crash on it after 15 idle seconds."""
    import httpx
    from litestar.response import ServerSentEventMessage

    from tingji.client import Client

    stream = b"".join(m.encode() for m in (
        ServerSentEventMessage(event="hello", data='{"last_event_id": 7}'),
        ServerSentEventMessage(comment="keep-alive"),
        ServerSentEventMessage(event="task", id=8, data='{"task_id": "t", "status": "completed"}'),
    ))
    with Client("http://127.0.0.1:9", None) as client:
        client.http = httpx.Client(base_url="http://127.0.0.1:9", transport=httpx.MockTransport(
            lambda req: httpx.Response(200, content=stream,
                                       headers={"content-type": "text/event-stream"})))
        got = list(client.follow())
    assert got == [("hello", None, {"last_event_id": 7}),
                   ("task", 8, {"task_id": "t", "status": "completed"})]
