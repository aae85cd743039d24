"""The trust boundary, driven as an attacker would: real server and worker processes,
real HTTP, real ffmpeg and yt-dlp.  Network traffic goes to 127.0.0.0/8 only; private,
link-local, metadata and IPv6 ranges are checked on resolved addresses, never
connected to."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from db.engine import make_engine
from tests.helpers.media import flac_bomb
from tests.helpers.procs import free_port
from tests.helpers.servers import FileServer, TrapServer
from tests.helpers.stack import Stack
from worker.errors import PermanentTaskError
from worker.stages.egress import EgressRefused, address_kind, guarded
from worker.stages.media import normalize
from worker.stages.refusals import NETWORK_ERROR, classify

URL = "https://www.bilibili.com/video/BV1GJ411x7h7"


def total_tasks(stack: Stack) -> int:
    return int(stack.http.get("/api/v1/tasks").json()["total"])


def error_of(resp: httpx.Response, status: int) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]  # type: ignore[no-any-return]


def vm(pid: int, field: str) -> int:
    """VmRSS / VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


# ------------------------------------------------------------------ the browser boundary
def test_cross_site_and_non_json_requests_are_refused(
        stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory()
    h = stack.http
    body = json.dumps({"video_url": URL})
    # what any web page can send without a preflight: text/plain "JSON", a form, a
    # multipart upload -- each from another site
    cross = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert error_of(h.post("/api/v1/process/bilibili", content=body,
                           headers={**cross, "Content-Type": "text/plain"}), 403)["code"] \
        == "cross_site_request"
    error_of(h.post("/api/v1/process/bilibili", data={"video_url": URL}, headers=cross), 403)
    error_of(h.post("/api/v1/process/audio", files={"file": ("a.mp3", b"ID3xxxx")},
                    headers=cross), 403)
    error_of(h.post("/api/v1/process/bilibili", json={"video_url": URL},
                    headers={"Origin": "null"}), 403)
    # the OpenAI-style upload, and a GET that reaches the network (a listing of parts)
    error_of(h.post("/v1/audio/transcriptions", files={"file": ("a.mp3", b"ID3xxxx")},
                    data={"model": "whisper-1"}, headers=cross), 403)
    assert error_of(h.get("/api/v1/bilibili/parts", params={"url": URL},
                          headers={"Sec-Fetch-Site": "cross-site"}), 403)["code"] \
        == "cross_site_request"
    # plain reads stay open to the page's own links and to scripts
    assert h.get("/api/v1/tasks", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200
    # an Origin of another port of this host is another site too
    error_of(h.post("/api/v1/process/bilibili", json={"video_url": URL},
                    headers={"Origin": "http://127.0.0.1:1"}), 403)
    # without Origin (a script), a JSON route still takes JSON only
    assert error_of(h.post("/api/v1/process/bilibili", content=body,
                           headers={"Content-Type": "text/plain"}), 415)["code"] \
        == "unsupported_media_type"
    error_of(h.post("/api/v1/process/bilibili", data={"video_url": URL}), 415)
    error_of(h.post("/api/v1/process/batch", content=json.dumps({"urls": [URL]}),
                    headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
    assert total_tasks(stack) == 0
    assert tree_bytes(stack.data / "uploads") == 0

    # the page's own requests: same origin, as a browser sends them
    page = {"Origin": stack.server.url, "Sec-Fetch-Site": "same-origin"}
    ok = h.post("/api/v1/process/bilibili", json={"video_url": URL}, headers=page)
    assert ok.status_code == 202, ok.text
    tid = ok.json()["task_id"]
    assert h.post(f"/api/v1/task/{tid}/cancel", headers=page).status_code == 200
    assert total_tasks(stack) == 1


def test_rebinding_host_is_refused(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory()
    stack.submit_url(URL)
    rebind = {"Host": f"rebind.attacker.example:{stack.server.url.rsplit(':', 1)[1]}"}
    for path in ("/api/v1/tasks", "/", "/api/v1/queue", "/static/app.js"):
        err = error_of(stack.http.get(path, headers=rebind), 403)
        assert err["code"] == "host_not_allowed" and "TINGJI_ALLOWED_HOSTS" in err["message"]
    # names the user really uses
    for host in ("localhost", "127.0.0.1", "[::1]", "tingji.localhost", socket.gethostname()):
        assert stack.http.get("/api/v1/tasks", headers={"Host": host}).status_code == 200

    proxied = stack_factory(TINGJI_ALLOWED_HOSTS="transcribe.example.org")
    assert proxied.http.get("/api/v1/tasks",
                            headers={"Host": "transcribe.example.org"}).status_code == 200
    error_of(proxied.http.get("/api/v1/tasks", headers=rebind), 403)
    # behind the proxy, the page's Origin is the proxy's name
    ok = proxied.http.post("/api/v1/process/bilibili", json={"video_url": URL}, headers={
        "Origin": "https://transcribe.example.org", "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 202, ok.text


def test_security_headers_on_every_response(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory()
    for resp in (stack.http.get("/"), stack.http.get("/api/v1/tasks"),
                 stack.http.get("/static/app.js"), stack.http.get("/no/such/page"),
                 stack.http.post("/api/v1/process/bilibili", json={})):
        csp = resp.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["referrer-policy"] == "no-referrer"


def raw_request(url: str, head: bytes, chunks: Iterator[bytes]) -> tuple[int, int]:
    """Send a request piece by piece until the server answers; (status, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        sock.settimeout(30)
        reply = sock.recv(65536)
    return int(reply.split(b" ", 2)[1]), sent


def test_bad_inputs_are_4xx_and_bounded(stack_factory: Callable[..., Stack],
                                        db_url: str) -> None:
    env = {} if db_url.startswith("sqlite") else {"TINGJI_DATABASE_URL": db_url}
    stack = stack_factory(**env)
    h = stack.http
    # Last-Event-ID that str.isdigit() accepts, or absurdly long
    for value in ("²".encode(), b"9" * 5000, b"-1"):
        with h.stream("GET", "/api/v1/events", headers={"Last-Event-ID": value}) as resp:
            assert resp.status_code == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    for content in (deep, b'{"video_url": "\xff"}', b'{"video_url": ' + deep + b"}"):
        err = error_of(h.post("/api/v1/process/bilibili", content=content,
                              headers={"Content-Type": "application/json"}), 400)
        assert err["code"] in ("malformed_body", "validation_error")
    # NUL bytes (PostgreSQL cannot store them) anywhere a string goes
    for body in ({"video_url": URL + "\x00"}, {"video_url": URL, "idempotency_key": "a\x00"},
                 {"video_url": URL, "llm_model": "m\x00"}):
        error_of(h.post("/api/v1/process/bilibili", json=body), 400)
    error_of(h.post("/api/v1/process/batch", json={"urls": [URL + "?\x00"]}), 400)
    error_of(h.post("/api/v1/process/audio", files={"file": ("a.mp3", b"ID3xx")},
                    data={"idempotency_key": "k\x00"}), 400)
    # (httpx would percent-escape the name: send the bytes as a hostile client would)
    up = h.post("/api/v1/process/audio", headers={
        "Content-Type": "multipart/form-data; boundary=zz"}, content=(
        b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a\x00b\x01.mp3"'
        b"\r\n\r\nID3xx\r\n--zz--\r\n"))
    assert up.status_code == 202, up.text
    assert stack.task(up.json()["task_id"])["source"] == "ab.mp3"
    # what the LLM may cost the operator
    err = error_of(h.post("/api/v1/process/bilibili",
                          json={"video_url": URL, "max_tokens": 1_000_000}), 400)
    assert "TINGJI_LLM_MAX_TOKENS" in err["message"]
    err = error_of(h.post("/api/v1/process/bilibili",
                          json={"video_url": URL, "llm_model": "gpt-5-pro"}), 400)
    assert "llm_model" in err["message"]
    assert total_tasks(stack) == 1

    # 8,000 form fields of 60 KB: refused at the first unknown one, memory flat
    pid = stack.server.pid
    before = vm(pid, "VmRSS")
    boundary = b"b0undary"
    field = b"x" * 60_000

    def fields() -> Iterator[bytes]:
        for i in range(8000):
            yield (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n'
                   % i + field + b"\r\n")
    length = 8000 * (len(field) + 80)
    head = (b"POST /api/v1/process/audio HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary +
            b"\r\nContent-Length: %d\r\n\r\n" % length)
    status, sent = raw_request(stack.server.url, head, fields())
    assert status == 400 and sent < 50 * 2**20
    assert vm(pid, "VmRSS") - before < 50 * 2**20
    assert total_tasks(stack) == 1


def test_orphaned_upload_is_swept_at_start(stack_factory: Callable[..., Stack],
                                           tmp_path: Path) -> None:
    stack = stack_factory()
    tid = stack.upload(Path(__file__))  # a file a task refers to
    uploads = stack.data / "uploads"
    kept = next(uploads.iterdir())
    orphan, fresh = uploads / "0000-orphan.mp3", uploads / "0001-writing.mp3"
    orphan.write_bytes(b"left by an API that died before its commit")
    fresh.write_bytes(b"an upload still arriving")
    old = time.time() - 2 * 3600
    for p in (orphan, kept):
        os.utime(p, (old, old))
    stack.server.stop()
    again = stack_factory(TINGJI_DATA_DIR=str(stack.data))
    again.wait(lambda: not orphan.exists(), 20, "the orphan was not swept")
    assert kept.exists() and fresh.exists()
    assert again.task(tid)["status"] == "pending"


def test_cli_result_name_stays_in_the_target_folder() -> None:
    from tingji.cli.commands import _filename

    for hostile in ("..%2F..%2F.bashrc", "%2Fetc%2Fcron.d%2Fx", "..", "a%00b"):
        name = _filename(f"attachment; filename*=UTF-8''{hostile}", "0" * 36, "srt")
        assert "/" not in name and "\x00" not in name and not name.startswith(".")
        assert name.endswith(".srt")
    assert _filename("attachment; filename*=UTF-8''%E8%AE%B2%E5%BA%A7.srt", "0" * 36,
                     "srt") == "讲座.srt"


# ------------------------------------------------------------------ egress (SSRF)
@pytest.mark.parametrize("address,kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"),
    ("172.16.0.1", "private"), ("192.168.1.10", "private"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("fd00:ec2::254", "private"), ("100.100.100.200", "non-public"),
    ("224.0.0.251", "multicast"), ("0.0.0.0", "unspecified"), ("::ffff:127.0.0.1", "loopback"),
    ("2002:a00:1::1", "private"), ("240.0.0.1", "private"),
    ("8.8.8.8", None), ("2606:4700:4700::1111", None), ("1.1.1.1", None),
])
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


def test_guard_checks_resolution_in_its_thread_only() -> None:
    with guarded() as refused:
        with pytest.raises(EgressRefused):
            socket.getaddrinfo("169.254.169.254", 80)  # resolved, never connected to
        with pytest.raises(EgressRefused):
            socket.getaddrinfo("localhost", 80)
        other: list[Any] = []
        t = threading.Thread(target=lambda: other.append(socket.getaddrinfo("127.0.0.1", 80)))
        t.start()
        t.join()
        assert other and other[0]  # the database driver's thread is not affected
    assert [k for _, k in refused.hosts] == ["link-local", "loopback"]
    assert "TINGJI_ALLOW_PRIVATE_URLS" in refused.message()
    with guarded(("10.0.0.0/8",)):
        assert socket.getaddrinfo("10.1.2.3", 80)
        with pytest.raises(EgressRefused):
            socket.getaddrinfo("192.168.1.2", 80)
    assert socket.getaddrinfo("127.0.0.1", 80)  # outside the block


def test_network_errors_do_not_tell_port_states() -> None:
    texts = ["[Errno 111] Connection refused", "The read operation timed out",
             "Remote end closed connection without response", "[Errno 104] Connection reset"]
    from yt_dlp.utils import DownloadError

    found = [classify(DownloadError(f"ERROR: Unable to download webpage: {t}")) for t in texts]
    assert {e.message for e in found} == {NETWORK_ERROR}
    assert {e.code for e in found} == {"network"} and all(e.retryable for e in found)


@pytest.fixture
def trap() -> Iterator[TrapServer]:
    server = TrapServer()
    yield server
    server.close()


def test_ssrf_to_loopback_fails_permanently(stack_factory: Callable[..., Stack],
                                           files: FileServer, trap: TrapServer) -> None:
    stack = stack_factory(TINGJI_ALLOW_PRIVATE_URLS="0")
    stack.worker(preload=False)  # as `tingji worker`: no task here needs the model
    closed = f"http://127.0.0.1:{free_port()}/x.mp4"
    tids = [stack.submit_url(u) for u in (f"{files.url}/talk.mp4", f"{trap.url}/secret.html",
                                          trap.url.replace("127.0.0.1", "localhost")
                                          + "/secret.html", closed)]
    messages = set()
    for tid in tids:
        task = stack.finished(tid, 60)
        assert task["status"] == "failed" and task["attempts"] == 1, task
        assert task["error"]["type"] == "EgressRefused"
        assert "TINGJI_ALLOW_PRIVATE_URLS" in task["error"]["message"]
        assert TrapServer.SECRET_TITLE not in json.dumps(task)
        messages.add(task["error"]["message"].split(":", 1)[1])
    assert trap.requests == []  # nothing ever reached the "internal" server
    # an open port and a closed one read the same
    assert len(messages) == 1
    assert not any((stack.data / "work").glob("*/download/*"))


def test_redirect_to_loopback_is_refused(stack_factory: Callable[..., Stack],
                                         files: FileServer) -> None:
    # 127.0.0.2 plays a host the operator allowed; it redirects to another loopback port
    allowed = TrapServer(host="127.0.0.2")
    try:
        stack = stack_factory(TINGJI_ALLOW_PRIVATE_URLS="127.0.0.2/32")
        stack.worker(preload=False)  # as `tingji worker`: no task here needs the model
        tid = stack.submit_url(f"{allowed.url}/redirect?to={files.url}/talk.mp4")
        task = stack.finished(tid, 60)
        assert allowed.requests  # the allowed host was reached ...
        assert task["status"] == "failed" and task["error"]["type"] == "EgressRefused"
        assert "127.0.0.1" in task["error"]["message"]  # ... its redirect was not followed
        ok = stack.submit_url(f"{allowed.url}/redirect?to={allowed.url}/no-such.mp4")
        assert stack.finished(ok, 60)["error"]["type"] != "EgressRefused"
        # a redirect to another scheme: classified, permanent (not an internal error)
        local = stack.finished(stack.submit_url(
            f"{allowed.url}/redirect?to=file:///etc/passwd"), 60)
        assert local["status"] == "failed" and local["attempts"] == 1, local
        assert local["error"]["type"] == "UnsupportedURL"
    finally:
        allowed.close()


# ------------------------------------------------------------------ download caps
def test_chunked_download_stops_at_the_cap(stack_factory: Callable[..., Stack],
                                           trap: TrapServer) -> None:
    stack = stack_factory(TINGJI_MAX_DOWNLOAD_MB="1")
    stack.worker(preload=False)  # as `tingji worker`: no task here needs the model
    tid = stack.submit_url(f"{trap.url}/endless.mp3")
    task = stack.finished(tid, 60)
    assert task["status"] == "failed" and task["error"]["type"] == "TooLarge", task
    assert "TINGJI_MAX_DOWNLOAD_MB" in task["error"]["message"]
    assert task["attempts"] == 1
    # The worker read little over 1 MB and kept none of it; the server could write a few
    # MB more into loopback socket buffers (the extractor's first look and the download).
    assert tree_bytes(stack.data / "work") < 2**20
    assert trap.sent < 32 * 2**20, trap.sent  # of 300 MB


def test_download_cap_counts_all_parts(stack_factory: Callable[..., Stack],
                                       tmp_path: Path) -> None:
    import subprocess

    root = tmp_path / "www"
    root.mkdir()
    for i in (1, 2):  # ~0.75 MB each: each under a 1 MB cap, together over it
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"anoisesrc=d=47:seed={i}", "-b:a", "128k", str(root / f"p{i}.mp3")],
                       check=True)
    (root / "parts.html").write_text(
        "<html><head><title>x</title></head><body><audio src='p1.mp3'></audio>"
        "<audio src='p2.mp3'></audio></body></html>")
    server = FileServer(root)
    try:
        stack = stack_factory(TINGJI_MAX_DOWNLOAD_MB="1")
        stack.worker(preload=False)  # as `tingji worker`: no task here needs the model
        task = stack.finished(stack.submit_url(f"{server.url}/parts.html"), 60)
        assert task["status"] == "failed" and task["error"]["type"] == "TooLarge", task
        assert tree_bytes(stack.data / "work") < 2**20
    finally:
        server.close()


# ------------------------------------------------------------------ the media boundary
def test_indirect_media_never_reads_local_files(stack_factory: Callable[..., Stack],
                                                media: dict[str, Path], tmp_path: Path) -> None:
    secret = media["speech"]  # a local file the attacker names
    hls = tmp_path / "playlist.mp3"
    hls.write_text(f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:30\n"
                   f"#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:30.0,\n{secret}\n#EXT-X-ENDLIST\n")
    concat = tmp_path / "list.m4a"
    concat.write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    stack = stack_factory()
    stack.worker(preload=False)  # as `tingji worker`: no task here needs the model
    for path in (hls, concat):
        task = stack.finished(stack.upload(path), 60)
        assert task["status"] == "failed" and task["attempts"] == 1, task
        assert task["error"]["type"] == "UnsupportedMedia", task
        assert stack.http.get(f"/api/v1/task/{task['task_id']}/segments").json() == []
        stack.work_files_removed(task["task_id"])


def test_flac_bomb_fails_fast_and_flat(stack_factory: Callable[..., Stack],
                                       tmp_path: Path) -> None:
    bomb = flac_bomb(tmp_path / "bomb.flac", hours=37.3)  # 4.3 GB as 16 kHz WAV
    assert bomb.stat().st_size < 300_000
    stack = stack_factory()
    worker = stack.worker()
    rss_before = vm(worker.pid, "VmRSS")
    tid = stack.upload(bomb)
    task = stack.finished(tid, 60)
    assert task["status"] == "failed" and task["error"]["type"] == "TooLong", task
    assert "TINGJI_MAX_DURATION_S" in task["error"]["message"]
    ev = {e["event"]: e["at"] for e in stack.events(tid)}
    from datetime import datetime
    took = (datetime.fromisoformat(ev["failed"]) - datetime.fromisoformat(ev["claimed"]))
    assert took.total_seconds() < 10
    assert vm(worker.pid, "VmHWM") - rss_before < 200 * 2**20
    assert tree_bytes(stack.data / "work") < 50 * 2**20


async def test_undeclared_length_is_cut_while_decoding(tmp_path: Path) -> None:
    src = flac_bomb(tmp_path / "quiet.flac", hours=0.1, declare=False)  # 360 s, unstated
    out = tmp_path / "out.wav"
    with pytest.raises(PermanentTaskError) as err:
        await normalize(src, out, max_duration_s=60)
    assert err.value.type == "TooLong"
    assert not out.exists() and not list(tmp_path.glob("*.part.wav"))
    assert await normalize(src, out, max_duration_s=400) == pytest.approx(360, abs=1)


# ------------------------------------------------------------------ outcomes through db errors
FAULT_WHEN = {
    "complete": "NEW.status = 'completed'",
    "fail": "NEW.status = 'failed'",
    "release": "OLD.status = 'processing' AND NEW.status = 'pending'",
}


def inject(db_url: str, when: str | None) -> None:
    """Make the database refuse some task updates (``when``), or stop refusing (None):
    a real database error at the moment the worker writes an outcome."""
    async def run() -> None:
        engine = make_engine(db_url, pool_size=1)
        try:
            async with engine.begin() as conn:
                if db_url.startswith("sqlite"):
                    await conn.execute(text("DROP TRIGGER IF EXISTS inject_fault"))
                    if when:
                        await conn.execute(text(
                            f"CREATE TRIGGER inject_fault BEFORE UPDATE ON tasks WHEN {when} "
                            "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"))
                else:
                    await conn.execute(text("DROP TRIGGER IF EXISTS inject_fault ON tasks"))
                    await conn.execute(text(
                        "CREATE OR REPLACE FUNCTION inject_fault() RETURNS trigger AS $$ "
                        "BEGIN RAISE EXCEPTION 'injected fault'; END $$ LANGUAGE plpgsql"))
                    if when:
                        await conn.execute(text(
                            "CREATE TRIGGER inject_fault BEFORE UPDATE ON tasks FOR EACH ROW "
                            f"WHEN ({when}) EXECUTE FUNCTION inject_fault()"))
        finally:
            await engine.dispose()
    asyncio.run(run())


@pytest.mark.parametrize("write,db_url", [
    ("complete", "sqlite"), ("complete", "postgresql"), ("fail", "sqlite"),
    ("release", "sqlite")], indirect=["db_url"])
def test_outcome_writes_survive_database_errors(stack_factory: Callable[..., Stack],
                                                media: dict[str, Path], db_url: str,
                                                write: str) -> None:
    """The worker's code is the same on both backends and the injection differs, so one
    case runs on PostgreSQL too."""
    env = {"TINGJI_DRAIN_SECONDS": "0"}
    if not db_url.startswith("sqlite"):
        env["TINGJI_DATABASE_URL"] = db_url
    stack = stack_factory(**env)
    url = db_url if not db_url.startswith("sqlite") else \
        f"sqlite:///{stack.data / 'tingji.db'}"
    inject(url, FAULT_WHEN[write])
    try:
        worker = stack.worker()
        source = {"complete": media["speech"], "fail": media["text_mp3"],
                  "release": media["long"]}[write]
        tid = stack.upload(source)
        failing = {"complete": "could not record completed", "fail": "could not record failed",
                   "release": "could not record handed back"}[write]
        if write == "release":  # stop it mid-transcription: the hand-back is refused
            stack.pause_when(worker, lambda: stack.task(tid)["stage"] == "transcribe", 60,
                             "transcribing")
            worker.popen.send_signal(signal.SIGTERM)
            worker.resume()
        stack.wait(lambda: failing in worker.output(), 60, f"a refused {write}")
        assert stack.task(tid)["status"] == "processing"  # kept, not lost, while retrying
        if write == "release":
            inject(url, None)  # the database recovers while the worker retries
        else:
            worker.popen.send_signal(signal.SIGTERM)  # stop while the write is refused
        assert worker.popen.wait(timeout=60) == 0, worker.output()[-3000:]
        task = stack.task(tid)
        # not processing: handed back (a fallback when the outcome itself is refused)
        assert task["status"] == "pending", task
        if write == "complete":
            assert task["error"]["type"] == "InternalError"
        inject(url, None)
        again = stack.worker()
        end = stack.finished(tid, 120)
        assert end["status"] == ("failed" if write == "fail" else "completed"), end
        again.stop()
    finally:
        inject(url, None)


def test_internal_upload_route_serves_other_machines_only_with_a_token(
        tmp_path: Path, media: dict[str, Path]) -> None:
    """Without TINGJI_API_TOKEN, ``/api/v1/internal/upload/{id}`` is off, loopback clients
    included (behind a reverse proxy on the same machine every client is loopback).  The
    real app, in process, with the client's address set as a server would see it."""
    from litestar.testing import TestClient

    from db import migrate
    from server.app import create_app
    from tingji.settings import Settings

    def app_seen_from(settings: Settings) -> tuple[Any, dict[str, Any]]:
        app = create_app(settings)
        peer = {"addr": ("127.0.0.1", 40000)}

        async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope = {**scope, "client": peer["addr"]}
            await app(scope, receive, send)
        return asgi, peer

    for token in (None, "a-token"):
        data = tmp_path / f"data-{token}"
        env = {"TINGJI_DATA_DIR": str(data)} | ({"TINGJI_API_TOKEN": token} if token else {})
        settings = Settings.from_env(env)
        for d in (settings.data_dir, settings.uploads_dir):
            d.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(settings.database_url)
        asgi, peer = app_seen_from(settings)
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        with TestClient(app=asgi, base_url="http://127.0.0.1:8000") as c:
            with media["speech"].open("rb") as fh:
                made = c.post("/api/v1/process/audio", headers=auth,
                                    files={"file": ("talk.wav", fh, "audio/wav")})
            assert made.status_code == 202, made.text
            tid = made.json()["task_id"]
            path = f"/api/v1/internal/upload/{tid}"
            got = c.get(path, headers=auth)  # this machine (or a proxy on it)
            if token is None:
                assert got.status_code == 403
            else:
                assert got.status_code == 200 and got.content == media["speech"].read_bytes()
            peer["addr"] = ("192.0.2.7", 40000)  # another machine
            got = c.get(path, headers=auth)
            gone = c.delete(path, headers=auth)
            if token is None:
                assert got.status_code == gone.status_code == 403
                assert "TINGJI_API_TOKEN" in got.json()["error"]["message"], got.text
            else:
                assert got.status_code == 200 and got.content == media["speech"].read_bytes()
                assert gone.status_code == 409  # not completed: the upload is still needed
                wrong = c.get(path, headers={"Authorization": "Bearer wrong"})
                assert wrong.status_code == 401


# ------------------------------------------------------------------ model folders are data
def test_model_folders_cannot_run_code_in_the_worker(tiny_models: dict[str, str],
                                                     clips: list[Path], tmp_path: Path) -> None:
    """A model folder whose ``config.yaml`` asks funasr to trust its code
    (``trust_remote_code: true``, ``remote_code: payload.py``): funasr on its own imports
    the payload; the worker builds every model (ASR, VAD, punctuation, speakers, the VAD
    processes) as data and transcribes as usual."""
    import shutil

    from funasr import AutoModel

    from worker.asr import AsrConfig, AsrEngine
    from worker.batching import AsrJob
    from worker.engines.torch.vad_pool import VadPool

    def armed(role: str, src: str) -> str:
        folder = tmp_path / role
        shutil.copytree(src, folder)
        # one module name per folder: a module imported once is not imported again
        payload = tmp_path / f"payload_{role}.py"
        payload.write_text(f"open({str(tmp_path / ('ran-' + role))!r}, 'w').write('ran')\n")
        with (folder / "config.yaml").open("a", encoding="utf-8") as f:
            f.write(f"\ntrust_remote_code: true\nremote_code: {payload}\n")
        return str(folder)

    # the trap is real: funasr alone runs it
    AutoModel(model=armed("control", tiny_models["vad"]), device="cpu", disable_update=True,
              disable_pbar=True, log_level="ERROR")
    assert (tmp_path / "ran-control").read_text() == "ran"

    models = {role: armed(role, tiny_models[role]) for role in ("asr", "vad", "punc", "spk")}
    config = AsrConfig(model=models["asr"], vad_model=models["vad"],
                       punc_model=models["punc"], spk_model=models["spk"], device="cpu",
                       engine="torch", ncpu=1)
    eng = AsrEngine(config)
    eng._load()
    try:
        job = AsrJob(clips[2], speakers=2)  # loads the speaker model too
        eng._run_group([job])
        assert job.error is None and job.result.text, job.error
        assert eng.spk_loads == 1
    finally:
        eng.close()
    pool = VadPool(models["vad"], config.vad_kwargs(), 1, config.generate_kw)

    async def detect() -> Any:
        await pool.start()
        return await pool.detect(clips[2])
    try:
        assert asyncio.run(detect())[0]["value"]
    finally:
        pool.close()
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-control"]
