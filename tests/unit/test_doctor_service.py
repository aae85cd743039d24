"""``tingji doctor`` beside a running service: it says which service answers and what its
workers loaded, and a FAIL of this shell's model, engine, database or LLM settings that
the working service evidently does not share is a note, not a failure."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tingji.cli.doctor import Finding, check_service, running_service, softened
from tingji.settings import Settings


@pytest.fixture
def service() -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"workers": [], "llm": False, "asked": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None: ...

        def do_GET(self) -> None:  # noqa: N802
            state["asked"].append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"pending": 0, "processing": 0, "workers": state["workers"],
                               "llm": state["llm"]}).encode()
            self.send_response(200 if self.path == "/api/v1/queue" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_a_running_service_is_read_and_softens_what_it_does_not_share(
        service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINGJI_URL", service["url"])
    monkeypatch.setenv("TINGJI_API_TOKEN", "t0ken")
    service["workers"] = [
        {"alive": True, "model": "/models/asr + fsmn-vad + ct-punc"},
        {"alive": False, "model": "an old one"}]
    found = running_service(Settings.from_env({}))
    assert found is not None and found.models == ["/models/asr + fsmn-vad + ct-punc"]
    assert service["asked"] == [("/api/v1/queue", "Bearer t0ken")]
    lines = [f.line() for f in check_service(found)]
    assert lines[0].startswith("[ ok ] service: running at " + service["url"])
    assert "/models/asr" in lines[0] and "LLM not configured" in lines[0]

    shell_fail = Finding("model ASR", False, "paraformer-zh: not cached", "tingji models download")
    note = softened(shell_fail, found)
    assert note.ok is None and "this shell's settings" in note.detail
    assert softened(Finding("database", False, "cannot open"), found).ok is None
    # what the service does not show to work stays a failure
    assert softened(Finding("llm", False, "cannot connect"), found).ok is False
    assert softened(Finding("ffmpeg", False, "not found"), found).ok is False
    assert softened(shell_fail, None) is shell_fail


def test_a_service_with_no_model_loaded_proves_nothing_of_the_models(
        service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINGJI_URL", service["url"])
    service["llm"] = True
    found = running_service(Settings.from_env({}))
    assert found is not None and found.models == []
    assert softened(Finding("onnx ASR", False, "no graphs"), found).ok is False
    assert softened(Finding("llm", False, "cannot connect"), found).ok is None


def test_no_service_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TINGJI_URL", f"http://127.0.0.1:{port}")
    assert running_service(Settings.from_env({})) is None
    [line] = [f.line() for f in check_service(None)]
    assert line.startswith("[note] service: no service answers here")
