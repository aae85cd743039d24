"""Webhooks: one signed message per task's final status and per batch, at least once,
through SIGKILLs of the API and the worker, retried with backoff.  Real processes, a
real receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.helpers.procs import start_server
from tests.helpers.stack import Stack
from worker.stages.webhooks import Dispatcher, verify

SECRET = "a webhook secret"
CALLBACK_SECRET = "a callback secret"


class Receiver:
    """Records every request; answers ``status`` (settable while it runs)."""

    def __init__(self) -> None:
        self.status = 500
        self.got: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None: ...

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = outer.status
                outer.got.append({"path": self.path, "headers": dict(self.headers.items()),
                                  "body": body, "status": status, "at": time.monotonic()})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def accepted(self) -> list[dict[str, Any]]:
        return [g for g in self.got if g["status"] == 200]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_signed_deliveries_survive_sigkill_and_refusals(
        stack_factory: Callable[..., Stack], media: dict[str, Path], receiver: Receiver
) -> None:
    # the three tasks are queued first and transcribed as one group, so their messages
    # begin together: the retries' delays double from then, and a message refused all
    # through a slow run (on a busy machine) would wait that long again after the restart
    stack = stack_factory(TINGJI_WEBHOOK_URL=receiver.url + "/all",
                          TINGJI_WEBHOOK_SECRET=SECRET, TINGJI_CALLBACK_SECRET=CALLBACK_SECRET,
                          TINGJI_WEBHOOK_RETRY_SECONDS="0.5", TINGJI_ASR_BATCH_TASKS="3")
    batch = str(uuid.uuid4())
    in_batch = [stack.upload(media["speech"], batch_id=batch),
                stack.upload(media["mp3"], batch_id=batch)]
    own = stack.upload(media["speech"], callback_url=receiver.url + "/own?token=t0k3n",
                       idempotency_key="own")
    worker = stack.worker()
    for tid in (*in_batch, own):
        assert stack.finished(tid)["status"] == "completed"
    # the receiver refuses (500): every message is retried with backoff
    stack.wait(lambda: any(n >= 4 for n in _attempts(receiver).values()), 60,
               "a message was not retried 4 times")
    refused_ids = set(_attempts(receiver))
    # both processes die between the status changes and the deliveries
    worker.kill()
    stack.server.kill()
    receiver.status = 200
    stack.server = start_server(stack.env, stack.root / "server2.log")
    stack.http.base_url = stack.server.url  # type: ignore[misc]
    stack.worker()
    stack.wait(lambda: len(receiver.accepted()) >= 5, 90, "not every message arrived")
    time.sleep(2)  # anything sent twice would arrive now

    accepted = receiver.accepted()
    ids = [g["headers"]["X-Tingji-Delivery"] for g in accepted]
    assert len(ids) == len(set(ids)) == 5, "one accepted delivery per message"
    assert refused_ids <= set(ids)  # the same delivery ids after the restart
    seen = set()
    for g in accepted:
        # the operator's receiver: the webhook secret; a submitter's own callback: the
        # callback secret, so what a submitter sees cannot be replayed to the operator
        headers = {k.lower(): v for k, v in g["headers"].items()}
        mine, other = (SECRET, CALLBACK_SECRET) if g["path"] == "/all" \
            else (CALLBACK_SECRET, SECRET)
        assert verify(mine, headers, g["body"]) and not verify(other, headers, g["body"])
        doc = json.loads(g["body"])
        assert doc["delivery_id"] == g["headers"]["X-Tingji-Delivery"]
        assert doc["event"] == g["headers"]["X-Tingji-Event"]
        subject = doc["task"]["task_id"] if "task" in doc else doc["batch"]["batch_id"]
        seen.add((g["path"], doc["event"], subject))
    assert seen == {("/all", "task.completed", in_batch[0]),
                    ("/all", "task.completed", in_batch[1]),
                    ("/all", "batch.finished", batch),
                    ("/all", "task.completed", own),
                    ("/own?token=t0k3n", "task.completed", own)}
    summary = next(json.loads(g["body"])["batch"] for g in accepted
                   if json.loads(g["body"])["event"] == "batch.finished")
    assert summary["total"] == 2 and summary["completed"] == 2
    assert {t["task_id"] for t in summary["tasks"]} == set(in_batch)

    # each attempt is in the task's history; the delays double (0.5 s base, jittered
    # between half and all of it), and the receiver's path and query are not shown
    events = stack.events(own)
    retries = [e for e in events if e["event"] == "webhook_retry"
               and e["detail"]["receiver"] == receiver.url]
    by_delivery: dict[str, list[dict[str, Any]]] = {}
    for e in retries:
        by_delivery.setdefault(e["detail"]["delivery_id"], []).append(e)
    for attempts in by_delivery.values():
        for e in attempts:
            k = e["detail"]["attempt"]
            delay = (datetime.fromisoformat(e["detail"]["next_attempt_at"])
                     - datetime.fromisoformat(e["at"])).total_seconds()
            assert 0.5 * 2 ** (k - 1) / 2 - 0.01 <= delay <= 0.5 * 2 ** (k - 1) + 0.01, e
    assert "t0k3n" not in json.dumps(events)
    delivered = [e for e in events if e["event"] == "webhook_delivered"]
    assert len(delivered) == 2 and all(e["detail"]["response"] == "HTTP 200"
                                       for e in delivered)


def _attempts(receiver: Receiver) -> dict[str, int]:
    counts: dict[str, int] = {}
    for g in list(receiver.got):
        d = g["headers"]["X-Tingji-Delivery"]
        counts[d] = counts.get(d, 0) + 1
    return counts


def test_callback_urls_obey_the_egress_policy(receiver: Receiver) -> None:
    """Without TINGJI_ALLOW_PRIVATE_URLS a callback to 127.0.0.1 is refused for good,
    before any request leaves; with it, the same message is delivered."""
    delivery = SimpleNamespace(id=str(uuid.uuid4()), event="task.completed",
                               url=receiver.url + "/x", body={"event": "task.completed"})
    ok, detail, permanent = Dispatcher(None, "d", secret=None)._post(  # type: ignore[arg-type]
        delivery)
    assert (ok, permanent) == (False, True) and "loopback" in detail
    assert receiver.got == []
    receiver.status = 204
    allowed = Dispatcher(None, "d", secret=None, allow_private=("127.0.0.0/8",))  # type: ignore[arg-type]
    assert allowed._post(delivery) == (True, "HTTP 204", False)
    assert len(receiver.got) == 1 and "X-Tingji-Signature" not in receiver.got[0]["headers"]


def test_the_operators_receiver_has_its_own_allow_list_and_secret(receiver: Receiver) -> None:
    """TINGJI_WEBHOOK_ALLOW_PRIVATE lets the operator's receiver (TINGJI_WEBHOOK_URL) be on
    a private network without opening that network to callback URLs; the operator's
    messages are signed with the webhook secret, a callback's with the callback secret."""
    receiver.status = 200
    operator = receiver.url + "/operator"
    dispatcher = Dispatcher(None, "d", secret=SECRET, operator_url=operator,  # type: ignore[arg-type]
                            operator_allow_private=("127.0.0.0/8",),
                            callback_secret=CALLBACK_SECRET)

    def delivery(url: str) -> Any:
        return SimpleNamespace(id=str(uuid.uuid4()), event="task.completed", url=url,
                               body={"event": "task.completed"})
    assert dispatcher._post(delivery(operator)) == (True, "HTTP 200", False)
    ok, detail, permanent = dispatcher._post(delivery(receiver.url + "/callback"))
    assert (ok, permanent) == (False, True) and "loopback" in detail
    [got] = receiver.got
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert got["path"] == "/operator" and verify(SECRET, headers, got["body"])
    # with the network open to all URLs, a callback goes out signed with its own secret
    dispatcher.allow_private = ("127.0.0.0/8",)
    assert dispatcher._post(delivery(receiver.url + "/callback"))[0]
    headers = {k.lower(): v for k, v in receiver.got[-1]["headers"].items()}
    assert verify(CALLBACK_SECRET, headers, receiver.got[-1]["body"])
    assert not verify(SECRET, headers, receiver.got[-1]["body"])


def test_a_hostile_callback_url_is_a_400_and_stores_nothing(
        stack_factory: Callable[..., Stack], media: dict[str, Path]) -> None:
    stack = stack_factory()
    for bad in ["file:///etc/passwd", "ftp://example.com/x", "http://exa mple.com/",
                "http://x\x00y/", "http://example.com/" + "x" * 5000, ""]:
        resp = stack.http.post("/api/v1/process/bilibili", json={
            "video_url": "https://example.com/a.mp4", "callback_url": bad})
        assert resp.status_code == 400, resp.text
        assert "callback_url" in resp.json()["error"]["message"], resp.text
    with open(media["speech"], "rb") as fh:  # the upload form's field too
        resp = stack.http.post("/api/v1/process/audio", files={"file": ("a.wav", fh)},
                               data={"callback_url": "gopher://example.com/"})
    assert resp.status_code == 400 and "callback_url" in resp.json()["error"]["message"]
    assert stack.http.get("/api/v1/tasks").json()["total"] == 0


def test_a_trickling_receiver_holds_up_no_task(stack_factory: Callable[..., Stack],
                                               media: dict[str, Path], files: Any) -> None:
    """The operator's receiver answers one byte every 0.3 s and never finishes: each
    attempt is cut at its deadline (10 s) and one runs at a time, while downloads,
    transcriptions and result writes go on: six tasks (two of them URLs) complete while
    fewer attempts have ended than there are tasks behind the first (tasks that waited
    for their messages would need one ended attempt each); the deliveries are tried
    again, each attempt an event naming the receiver's origin."""
    from tests.helpers.servers import raw_server, trickling

    server = raw_server(trickling)
    url = next(server)
    try:
        stack = stack_factory(TINGJI_WEBHOOK_URL=url, TINGJI_WEBHOOK_RETRY_SECONDS="0.5",
                              TINGJI_WEBHOOK_MAX_ATTEMPTS="2")
        stack.worker()
        tids = [stack.upload(media["speech"], reuse="false") for _ in range(4)]
        tids += [stack.submit_url(f"{files.url}/talk.mp4", reuse=False),
                 stack.submit_url(f"{files.url}/part1.mp3", reuse=False)]
        for tid in tids:
            assert stack.finished(tid, 120)["status"] == "completed"
        ended = [e for t in tids for e in stack.events(t)
                 if e["event"] in ("webhook_retry", "webhook_failed", "webhook_delivered")]
        assert len(ended) < len(tids) - 1, ended  # the tasks did not wait for messages
        tried = stack.wait(lambda: [e for t in tids for e in stack.events(t)
                                    if e["event"] == "webhook_retry"], 60, "a cut attempt")
        assert "127.0.0.1" in json.dumps(tried[0]["detail"])  # the origin is named
    finally:
        next(server, None)
