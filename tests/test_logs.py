"""``TINGJI_LOG_FORMAT=json``: the API's and the worker's log lines as JSON objects with
the task, worker and stage they concern."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.procs import start_server
from tests.helpers.stack import Stack


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a log, parsed: a line that is not one JSON object fails the test."""
    out = []
    for line in text.splitlines():
        if line.strip():
            doc = json.loads(line)
            assert isinstance(doc, dict) and {"ts", "level", "logger", "message"} <= set(doc)
            out.append(doc)
    return out


def test_worker_and_api_log_json_lines(stack_factory: Callable[..., Stack],
                                       media: dict[str, Path]) -> None:
    stack = stack_factory(TINGJI_LOG_FORMAT="json")
    worker = stack.worker()
    ok = stack.upload(media["speech"])
    bad = stack.upload(media["text_mp3"])
    assert stack.finished(ok)["status"] == "completed"
    assert stack.finished(bad)["status"] == "failed"
    wid = stack.http.get("/api/v1/queue").json()["workers"][0]["id"]
    worker.stop()

    lines = json_lines(worker.output())
    started = [d for d in lines if d["message"].startswith("worker ") and "started" in
               d["message"]]
    assert started and started[0]["worker_id"] == wid and started[0]["level"] == "info"
    about_ok = [d for d in lines if d.get("task_id") == ok]
    assert about_ok and all(d["worker_id"] == wid for d in about_ok)
    assert any(d["message"].endswith(": completed") for d in about_ok)
    failed = [d for d in lines if d.get("task_id") == bad and "failed" in d["message"]]
    assert failed and failed[0]["stage"] == "fetch"  # it failed in the stage that read it
    assert any(d["logger"] == "stdout" and "funasr" in d["message"] for d in lines)

    # the API: its banner, and the sweep of an upload no task refers to
    stack.server.stop()
    orphan = stack.data / "uploads" / "orphan.wav"
    orphan.write_bytes(b"RIFF")
    os.utime(orphan, (0, 0))
    api = start_server(stack.env, stack.root / "api2.log")
    try:
        stack.wait(lambda: not orphan.exists(), 30, "the orphan was not swept")
    finally:
        api.stop()
    lines = json_lines(stack.server.output()) + json_lines(api.output())
    assert any(d["logger"] == "tingji.server" and d["message"].startswith("tingji API on")
               for d in lines)
    assert any("orphan.wav" in d["message"] and d["level"] == "info" for d in lines)
