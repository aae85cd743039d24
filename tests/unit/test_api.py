"""The HTTP API in process: the Litestar app on a real, migrated SQLite file, through
Litestar's test client (an ``httpx.Client`` that calls the app without a socket).  What
needs a real server process (the memory it keeps, the imports it never makes, a
database that goes away, fuzzing over HTTP, the live event stream) is
``tests/test_api_server.py``."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient

import tingji.pdf
from db import migrate
from db.engine import make_engine
from db.models import Stage
from db.queue import Queue, SegmentRow
from server.app import create_app
from tests.helpers.http import check_srt, check_vtt, error_of, submit
from tingji.settings import Settings

BASE_URL = "http://127.0.0.1:8000"  # the boundary answers loopback hosts only


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api-data")
    migrate.upgrade(f"sqlite:///{path / 'tingji.db'}")
    return path


def app_client(data_dir: Path, **env: str) -> TestClient:  # type: ignore[type-arg]
    """The API as ``tingji serve`` builds it, for these settings."""
    settings = Settings.from_env({"TINGJI_DATA_DIR": str(data_dir), **env})
    return TestClient(app=create_app(settings), base_url=BASE_URL, timeout=30)


@pytest.fixture(scope="module")
def client(data_dir: Path) -> Iterator[httpx.Client]:
    with app_client(data_dir, TINGJI_MAX_UPLOAD_MB="3") as c:
        yield c


@pytest.fixture
async def queue(data_dir: Path) -> AsyncIterator[Queue]:
    engine = make_engine(f"sqlite:///{data_dir / 'tingji.db'}")
    yield Queue(engine)
    await engine.dispose()


def test_health(client: httpx.Client) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and set(body["queue"]) >= {"pending", "processing"}


@pytest.mark.parametrize("url", [
    "https://www.bilibili.com/video/BV1GJ411x7h7?p=2",
    "https://b23.tv/abcdEF1",
    "http://127.0.0.1:9/talk.mp4",
])
def test_submit_url_accepted(client: httpx.Client, url: str) -> None:
    resp = client.post("/api/v1/process/bilibili", json={"video_url": url, "priority": 2})
    assert resp.status_code == 202
    body = resp.json()
    assert body["status"] == "pending" and body["message"] and body["created_at"]
    assert resp.headers["location"] == f"/api/v1/task/{body['task_id']}"
    task = client.get(resp.headers["location"]).json()
    assert task["source"] == url and task["priority"] == 2 and task["kind"] == "url"
    assert task["result"] is None and task["attempts"] == 0


@pytest.mark.parametrize("body,field", [
    ({"video_url": "file:///etc/passwd"}, "video_url"),
    ({"video_url": "data:text/plain,hi"}, "video_url"),
    ({"video_url": "ftp://x.org/a.mp3"}, "video_url"),
    ({"video_url": "javascript:alert(1)"}, "video_url"),
    ({"video_url": "not a url"}, "video_url"),
    ({"video_url": "https://"}, "video_url"),
    ({"video_url": "https://x.org:99999/a"}, "video_url"),
    ({"video_url": "https://x.org/" + "a" * 2048}, "video_url"),
    ({"video_url": ""}, "video_url"),
    ({}, "video_url"),
    ({"video_url": "https://x.org/a", "temperature": 2.5}, "temperature"),
    ({"video_url": "https://x.org/a", "max_tokens": 0}, "max_tokens"),
    ({"video_url": "https://x.org/a", "priority": "high"}, "priority"),
    ({"video_url": "https://x.org/a", "surprise": 1}, "surprise"),
])
def test_submit_url_rejected(client: httpx.Client, body: dict[str, object], field: str) -> None:
    before = client.get("/api/v1/tasks").json()["total"]
    err = error_of(client.post("/api/v1/process/bilibili", json=body), 400)
    assert err["code"] == "validation_error" and field in err["message"]
    assert client.get("/api/v1/tasks").json()["total"] == before


def test_malformed_json_is_400(client: httpx.Client) -> None:
    error_of(client.post("/api/v1/process/bilibili", content=b"{nope",
                         headers={"content-type": "application/json"}), 400)


def test_idempotency_key_returns_same_task(client: httpx.Client) -> None:
    a = submit(client, "https://x.org/idem.mp4", idempotency_key="nightly-42")
    again = client.post("/api/v1/process/bilibili",
                        json={"video_url": "https://x.org/idem.mp4"},
                        headers={"Idempotency-Key": "nightly-42"})  # the standard header
    assert again.status_code == 200 and again.json()["task_id"] == a["task_id"]
    assert a["created"] is True and again.json()["created"] is False
    # the same key for another request: 409 naming the key
    err = error_of(client.post("/api/v1/process/bilibili", json={
        "video_url": "https://x.org/other.mp4", "idempotency_key": "nightly-42"}), 409)
    assert err["code"] == "idempotency_key_reused" and "nightly-42" in err["message"]
    error_of(client.post("/api/v1/process/bilibili", json={
        "video_url": "https://x.org/idem.mp4", "idempotency_key": "nightly-42",
        "priority": 5}), 409)
    # body and header must agree; a hostile header or batch id is a 400, nothing stored
    before = client.get("/api/v1/tasks").json()["total"]
    error_of(client.post("/api/v1/process/bilibili", json={
        "video_url": "https://x.org/idem.mp4", "idempotency_key": "a"},
        headers={"Idempotency-Key": "b"}), 400)
    for header in ("k" * 201,):  # (httpx itself will not send control characters)
        error_of(client.post("/api/v1/process/bilibili", json={"video_url": "https://x.org/h"},
                             headers={"Idempotency-Key": header}), 400)
    for batch_id in ("../../etc", "not-a-uuid", "1" * 5000):
        assert "batch_id" in error_of(client.post("/api/v1/process/bilibili", json={
            "video_url": "https://x.org/b", "batch_id": batch_id}), 400)["message"]
    assert client.get("/api/v1/tasks").json()["total"] == before
    # a batch key returns the original batch
    body = {"urls": ["https://x.org/n1.mp4", "https://x.org/n2.mp4"],
            "idempotency_key": "night-7"}
    first = client.post("/api/v1/process/batch", json=body)
    second = client.post("/api/v1/process/batch", json=body)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["batch_id"] == second.json()["batch_id"]
    assert first.json()["task_ids"] == second.json()["task_ids"]
    error_of(client.post("/api/v1/process/batch", json={**body, "urls": body["urls"][:1]}),
             409)


def test_the_same_upload_with_a_key_is_one_task(client: httpx.Client,
                                                data_dir: Path) -> None:
    payload = os.urandom(50_000)
    sent = [client.post("/api/v1/process/audio", files={"file": ("a.mp3", payload)},
                        data={"idempotency_key": "upload-1"}) for _ in range(2)]
    assert [r.status_code for r in sent] == [202, 200]
    assert sent[0].json()["task_id"] == sent[1].json()["task_id"]
    stored = [p for p in (data_dir / "uploads").iterdir() if p.read_bytes() == payload]
    assert len(stored) == 1  # the second copy was not kept
    other = client.post("/api/v1/process/audio", files={"file": ("a.mp3", payload[::-1])},
                        data={"idempotency_key": "upload-1"})
    assert error_of(other, 409)["code"] == "idempotency_key_reused"


def test_upload_streams_to_uploads_dir(client: httpx.Client, data_dir: Path) -> None:
    payload = os.urandom(300_000)
    resp = client.post("/api/v1/process/audio",
                       files={"file": ("../../etc/讲座 录音.mp3", payload, "audio/mpeg")},
                       data={"summarize": "true", "priority": "4"})
    assert resp.status_code == 202, resp.text
    task = client.get(f"/api/v1/task/{resp.json()['task_id']}").json()
    assert task["kind"] == "upload" and task["source"] == "讲座 录音.mp3"
    assert task["priority"] == 4
    stored = [p for p in (data_dir / "uploads").iterdir() if p.read_bytes() == payload]
    assert len(stored) == 1 and stored[0].suffix == ".mp3"
    assert "讲座" not in stored[0].name  # the client's name is metadata only


@pytest.mark.parametrize("files,data,field", [
    ({"file": ("a.wav", b"", "audio/wav")}, {}, "empty"),
    (None, {"priority": "1"}, "file"),
    ({"file": ("a.wav", b"RIFF", "audio/wav")}, {"priority": "soon"}, "priority"),
    ({"file": ("a.wav", b"RIFF", "audio/wav")}, {"temperature": "9"}, "temperature"),
    ({"file": ("a.wav", b"RIFF", "audio/wav")}, {"video_url": "x"}, "video_url"),
    ({"other": ("a.wav", b"RIFF", "audio/wav")}, {}, "file"),
])
def test_upload_rejected_leaves_nothing(client: httpx.Client, data_dir: Path,
                                        files: dict[str, object] | None,
                                        data: dict[str, str], field: str) -> None:
    before = set((data_dir / "uploads").iterdir()) if (data_dir / "uploads").exists() else set()
    if files is None:
        resp = client.post("/api/v1/process/audio",
                           headers={"content-type": "multipart/form-data; boundary=xyz"},
                           content=b"--xyz\r\nContent-Disposition: form-data; name=\"priority\""
                                   b"\r\n\r\n1\r\n--xyz--\r\n")
    else:
        resp = client.post("/api/v1/process/audio", files=files, data=data)
    err = error_of(resp, 400)
    assert field in err["message"]
    assert set((data_dir / "uploads").iterdir()) == before


def test_upload_needs_multipart(client: httpx.Client) -> None:
    err = error_of(client.post("/api/v1/process/audio", json={"file": "x"}), 415)
    assert err["code"] == "unsupported_media_type"


def test_upload_over_limit_is_413_and_leaves_nothing(client: httpx.Client,
                                                     data_dir: Path) -> None:
    uploads = data_dir / "uploads"
    before = set(uploads.iterdir())
    big = os.urandom(5 * 2**20)
    err = error_of(client.post("/api/v1/process/audio",
                               files={"file": ("big.wav", big, "audio/wav")}), 413)
    assert "3 MB" in err["message"]

    # without a Content-Length the limit is enforced while streaming
    def chunks() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.wav\"\r\n\r\n"
        for _ in range(5):
            yield os.urandom(2**20)
        yield b"\r\n--b--\r\n"
    resp = client.post("/api/v1/process/audio", content=chunks(),
                       headers={"content-type": "multipart/form-data; boundary=b"})
    error_of(resp, 413)
    assert set(uploads.iterdir()) == before


def test_batch_is_atomic(client: httpx.Client) -> None:
    total = client.get("/api/v1/tasks").json()["total"]
    bad = client.post("/api/v1/process/batch", json={"urls": [
        "https://x.org/1.mp4", "file:///etc/passwd", "https://x.org/3.mp4"]})
    err = error_of(bad, 400)
    assert "urls[1]" in err["message"] and "file" in err["message"]
    dup = client.post("/api/v1/process/batch", json={"urls": [
        "https://x.org/1.mp4", "https://x.org/1.mp4"]})
    assert "duplicate" in error_of(dup, 400)["message"]
    assert "empty" in error_of(client.post("/api/v1/process/batch", json={"urls": []}),
                               400)["message"]
    assert client.get("/api/v1/tasks").json()["total"] == total
    ok = client.post("/api/v1/process/batch", json={
        "urls": [f"https://x.org/b{i}.mp4" for i in range(3)], "summarize": True})
    assert ok.status_code == 202
    body = ok.json()
    listed = client.get("/api/v1/tasks", params={"batch_id": body["batch_id"]}).json()
    assert listed["total"] == 3
    assert {t["task_id"] for t in listed["tasks"]} == set(body["task_ids"])
    assert all(t["batch_id"] == body["batch_id"] for t in listed["tasks"])


def test_pagination_newest_first(client: httpx.Client) -> None:
    batch = client.post("/api/v1/process/batch", json={
        "urls": [f"https://x.org/p{i}.mp4" for i in range(7)]}).json()
    seen: list[str] = []
    for offset in (0, 3, 6):
        page = client.get("/api/v1/tasks", params={"batch_id": batch["batch_id"], "limit": 3,
                                                   "offset": offset}).json()
        assert page["total"] == 7
        seen += [t["task_id"] for t in page["tasks"]]
    assert sorted(seen) == sorted(batch["task_ids"]) and len(seen) == 7
    everything = client.get("/api/v1/tasks", params={"limit": 500}).json()["tasks"]
    created = [t["created_at"] for t in everything]
    assert created == sorted(created, reverse=True)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"limit": "x"},
                                    {"offset": -1}, {"status": "running"},
                                    {"batch_id": "nope"}])
def test_list_rejects_bad_params(client: httpx.Client, params: dict[str, object]) -> None:
    error_of(client.get("/api/v1/tasks", params=params), 400)


def test_list_filters_by_status(client: httpx.Client) -> None:
    tid = submit(client, "https://x.org/tobecancelled.mp4")["task_id"]
    client.post(f"/api/v1/task/{tid}/cancel")
    got = client.get("/api/v1/tasks", params={"status": "cancelled", "limit": 500}).json()
    assert tid in {t["task_id"] for t in got["tasks"]}
    assert all(t["status"] == "cancelled" for t in got["tasks"])


def test_task_errors(client: httpx.Client) -> None:
    error_of(client.get("/api/v1/task/not-a-uuid"), 400)
    assert error_of(client.get("/api/v1/task/00000000-0000-4000-8000-000000000000"),
                    404)["code"] == "not_found"
    error_of(client.post("/api/v1/task/00000000-0000-4000-8000-000000000000/cancel"), 404)
    error_of(client.post("/api/v1/task/00000000-0000-4000-8000-000000000000/retry"), 404)
    error_of(client.get("/api/v1/nowhere"), 404)
    error_of(client.delete("/api/v1/tasks"), 405)


def test_cancel_and_retry(client: httpx.Client) -> None:
    tid = submit(client, "https://x.org/c.mp4")["task_id"]
    assert error_of(client.post(f"/api/v1/task/{tid}/retry"), 409)["code"] == "conflict"
    resp = client.post(f"/api/v1/task/{tid}/cancel")
    assert resp.status_code == 200 and resp.json() == {"task_id": tid, "status": "cancelled"}
    error_of(client.post(f"/api/v1/task/{tid}/cancel"), 409)
    resp = client.post(f"/api/v1/task/{tid}/retry")
    assert resp.status_code == 202 and resp.json()["status"] == "pending"
    events = [e["event"] for e in client.get(f"/api/v1/task/{tid}/events").json()]
    assert events == ["enqueued", "cancel_requested", "cancelled", "retried"]


async def _complete_through_db(queue: Queue, tid: str) -> None:
    """Drive one task to completed the way a worker does, through the db layer."""
    [task] = await queue.claim_next("test-worker", n=1)
    while task.id != tid:  # other tests' tasks may be ahead: put them back
        await queue.release(task.id, "test-worker")
        [task] = await queue.claim_next("test-worker", n=1)
    await queue.checkpoint(tid, "test-worker", Stage.TRANSCRIBE, {"text": "x"}, segments=[
        SegmentRow(0, 1500, "大家好，今天我们来聊一聊语音识别。"),
        SegmentRow(1800, 12_000, "语音识别是把声音变成文字的技术，它在会议记录、课程笔记"
                                 "和视频字幕里都非常有用，而且越来越准确了。"),
        SegmentRow(12_500, 12_500, "好。"),
    ], title="讲座: 语音/识别", now=None)
    await queue.complete(tid, "test-worker", {
        "text": "大家好，今天我们来聊一聊语音识别。", "polished_text": "大家好！",
        "summary": "关于语音识别。", "segments": 3, "duration_s": 12.5,
        "stage_seconds": {"transcribe": 1.0}})


async def test_downloads_of_a_completed_task(client: httpx.Client, queue: Queue) -> None:
    tid = submit(client, "https://x.org/done.mp4", priority=1000)["task_id"]
    assert error_of(client.get(f"/api/v1/download/{tid}"), 409)["code"] == "not_completed"
    await _complete_through_db(queue, tid)
    task = client.get(f"/api/v1/task/{tid}").json()
    assert task["status"] == "completed" and task["result"]["summary"] == "关于语音识别。"
    expected_types = {"txt": "text/plain", "md": "text/markdown", "json": "application/json",
                      "srt": "application/x-subrip", "vtt": "text/vtt"}
    for fmt, ctype in expected_types.items():
        resp = client.get(f"/api/v1/download/{tid}", params={"format": fmt})
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(ctype)
        disp = resp.headers["content-disposition"]
        assert disp.startswith("attachment;") and f".{fmt}" in disp
        assert "/" not in disp.split("filename*=UTF-8''")[1]
        if fmt == "json":
            doc = resp.json()
            assert doc["task_id"] == tid and len(doc["segments"]) == 3
        if fmt == "md":
            assert "# 讲座_ 语音_识别" not in resp.text and "关于语音识别" in resp.text
        if fmt == "srt":
            check_srt(resp.text)
        if fmt == "vtt":
            assert check_vtt(resp.text) == check_srt(client.get(
                f"/api/v1/download/{tid}", params={"format": "srt"}).text)
    resp = client.get(f"/api/v1/download/{tid}")
    assert resp.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(resp.content)).namelist()
    pdf = ["pdf"] if tingji.pdf.available() else []  # the notes, where WeasyPrint is
    assert sorted(n.rsplit(".", 1)[1] for n in names) == sorted(
        ["json", "md", "srt", "txt", "vtt", *pdf])
    error_of(client.get(f"/api/v1/download/{tid}", params={"format": "docx"}), 400)
    error_of(client.post(f"/api/v1/task/{tid}/cancel"), 409)


def test_queue_view(client: httpx.Client) -> None:
    body = client.get("/api/v1/queue").json()
    assert set(body) == {"pending", "processing", "completed", "failed", "cancelled",
                         "capacity", "workers", "llm"}
    assert body["llm"] is False  # no TINGJI_LLM_BASE_URL here
    assert body["capacity"] == 1000 and isinstance(body["workers"], list)


def test_openapi_schema_served(client: httpx.Client) -> None:
    schema = client.get("/schema/openapi.json").json()
    assert "/api/v1/process/bilibili" in schema["paths"]


def test_token_required_when_set(tmp_path: Path) -> None:
    migrate.upgrade(f"sqlite:///{tmp_path / 'tingji.db'}")
    with app_client(tmp_path, TINGJI_API_TOKEN="s3cret") as c:
        assert c.get("/health").status_code == 200  # stays open
        # the schema too is behind the token, and no viewer page loads CDN scripts
        error_of(c.get("/schema/openapi.json"), 401)
        assert c.get("/schema/openapi.json", headers={
            "Authorization": "Bearer s3cret"}).json()["info"]["title"] == "tingji"
        assert c.get("/schema/swagger", headers={
            "Authorization": "Bearer s3cret"}).status_code == 404
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            err = error_of(c.get("/api/v1/tasks", headers=headers), 401)
            assert err["code"] == "unauthorized"
        error_of(c.post("/api/v1/process/bilibili", json={"video_url": "https://x/a"}), 401)
        ok = c.get("/api/v1/tasks", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_queue_full_is_429_with_retry_after(tmp_path: Path) -> None:
    migrate.upgrade(f"sqlite:///{tmp_path / 'tingji.db'}")
    with app_client(tmp_path, TINGJI_MAX_PENDING="2") as c:
        submit(c, "https://x/1")
        submit(c, "https://x/2")
        resp = c.post("/api/v1/process/bilibili", json={"video_url": "https://x/3"})
        assert error_of(resp, 429)["code"] == "queue_full"
        assert int(resp.headers["retry-after"]) > 0
        resp = c.post("/api/v1/process/audio", files={"file": ("a.wav", b"RIFF....")})
        error_of(resp, 429)  # before its body was read: nothing written
        uploads = tmp_path / "uploads"
        assert not uploads.exists() or list(uploads.iterdir()) == []


def test_uploads_are_bounded_before_their_bodies(tmp_path: Path) -> None:
    """The bytes the uploads folder may hold (waiting uploads and those arriving) and the
    uploads at once: past them 507 and 429 with Retry-After, nothing half-written."""
    import asyncio

    from server.uploads import UploadGate

    migrate.upgrade(f"sqlite:///{tmp_path / 'tingji.db'}")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "waiting.wav").write_bytes(b"\0" * 600_000)  # a task's upload, waiting
    limit_gb = str(1_000_000 / 2**30)  # room for 1 MB
    with app_client(tmp_path, TINGJI_MAX_PENDING_UPLOAD_GB=limit_gb) as c:
        small = c.post("/api/v1/process/audio", files={"file": ("a.wav", b"RIFF" * 1000)})
        assert small.status_code == 202, small.text
        big = c.post("/api/v1/process/audio", files={"file": ("b.wav", b"\0" * 500_000)})
        err = error_of(big, 507)
        assert err["code"] == "uploads_full" and "TINGJI_MAX_PENDING_UPLOAD_GB" in \
            err["message"] and int(big.headers["retry-after"]) > 0
        assert len(list(uploads.iterdir())) == 2  # the waiting one and the small one

    async def at_once() -> None:
        gate = UploadGate(uploads, max_concurrent=1, max_pending_bytes=2**30)
        async with gate.admit(100, 1000):
            with pytest.raises(Exception) as refused:
                async with gate.admit(100, 1000):
                    pass
            assert getattr(refused.value, "status", None) == 429
            assert "TINGJI_MAX_CONCURRENT_UPLOADS" in str(refused.value)
        async with gate.admit(None, 1000):  # free again; unannounced: the limit counts
            assert gate.reserved == 1000
        assert (gate.active, gate.reserved) == (0, 0)
    asyncio.run(at_once())


def test_models_name_a_local_folder_by_its_name_only(tmp_path: Path) -> None:
    migrate.upgrade(f"sqlite:///{tmp_path / 'tingji.db'}")
    for configured, shown in (("/srv/models/paraformer-zh", "paraformer-zh"),
                              ("paraformer-zh", "paraformer-zh"),
                              ("iic/speech_seaco_paraformer", "iic/speech_seaco_paraformer")):
        with app_client(tmp_path, TINGJI_ASR_MODEL=configured) as c:
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [shown]



def test_held_connections_are_bounded(tmp_path: Path) -> None:
    """OpenAI-route waits beyond TINGJI_MAX_SYNC_WAITERS answer at once with 202 and the
    task id; a stream that resumes from an old event id replays the last events only."""
    from server.routes.events import MAX_CATCH_UP, catch_up_from

    migrate.upgrade(f"sqlite:///{tmp_path / 'tingji.db'}")
    with app_client(tmp_path, TINGJI_MAX_SYNC_WAITERS="0") as c:
        resp = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF" * 100)},
                      data={"model": "whisper-1"})
        assert resp.status_code == 202 and resp.headers["x-tingji-task-id"]
        assert "TINGJI_MAX_SYNC_WAITERS" in resp.json()["error"]["message"]
    assert catch_up_from(5000, 0) == (5000 - MAX_CATCH_UP, 5000 - MAX_CATCH_UP)
    assert catch_up_from(5000, 4500) == (4500, 0)
    assert catch_up_from(10, 99) == (99, 0)  # an id from the future: nothing skipped
