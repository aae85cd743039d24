"""Real local servers for the network edges: a static file server for yt-dlp and an
OpenAI-compatible chat-completions stub for the LLM stages."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _QuietFiles(SimpleHTTPRequestHandler):
    refusals: list[int]  # statuses to answer first, one request each (set per server)
    lock: threading.Lock

    def log_message(self, *args: Any) -> None: ...

    def send_head(self) -> Any:
        with self.lock:
            status = self.refusals.pop(0) if self.refusals else None
        if status is not None:  # as a site refusing for now: no body worth reading
            self.send_error(status)
            return None
        return super().send_head()


class FileServer:
    """Serves a folder on 127.0.0.1 (yt-dlp's generic extractor downloads from it).
    ``refusals``: HTTP statuses answered first, one request each, as a site that
    refuses for a while (412, 429) and then serves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.refusals: list[int] = []
        handler = type("Files", (_QuietFiles,), {"refusals": self.refusals,
                                                 "lock": threading.Lock()})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                         partial(handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class StubBehaviour:
    fail_first: int = 0  # answer HTTP 500 to this many requests first
    delay_s: float = 0.0  # sleep this long before each answer
    truncate_over: int | None = None  # finish_reason=length when the input is longer
    # chapters, mind map and translation requests answered badly first (chapters out of
    # order, a mind map that is prose, a translation that loses a line), as models do
    bad_notes: int = 0  # of each kind
    bad_notes_sent: dict[str, int] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    failures_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class LlmStub:
    """``POST /v1/chat/completions``: polish answers "【润色】" + the input, a summary
    request answers "【摘要】" + the first 20 characters; chapters are a JSON array in a
    code fence (one chapter every three sentences, "第N章"), a mind map a Markdown list,
    a translation "EN:" + each numbered line; usage counts characters."""

    def __init__(self, behaviour: StubBehaviour | None = None) -> None:
        self.b = behaviour or StubBehaviour()
        stub = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None: ...

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                b = stub.b
                t0 = time.time()
                with b.lock:
                    fail = b.failures_sent < b.fail_first
                    if fail:
                        b.failures_sent += 1
                if b.delay_s:
                    time.sleep(b.delay_s)
                system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
                kind = ("chapters" if "章节" in system else "mindmap" if "思维导图" in system
                        else "translate" if "translate" in system
                        else "summary" if "摘要" in system else "polish")
                with b.lock:
                    b.calls.append({"kind": kind, "chars": len(user), "start": t0,
                                    "system": system, "user": user,
                                    "end": time.time(), "failed": fail,
                                    "model": body.get("model"),
                                    "max_tokens": body.get("max_tokens")})
                if fail:
                    self._send(500, {"error": {"message": "stub overloaded", "type": "server"}})
                    return
                finish = "stop"
                if kind == "polish":
                    out = "【润色】" + user
                    if b.truncate_over is not None and len(user) > b.truncate_over:
                        out, finish = out[: len(out) // 3], "length"
                elif kind == "summary":
                    out = "【摘要】" + user[:20]
                else:
                    with b.lock:
                        bad = b.bad_notes_sent.get(kind, 0) < b.bad_notes
                        b.bad_notes_sent[kind] = b.bad_notes_sent.get(kind, 0) + bad
                    out = _notes_answer(kind, user, bad)
                self._send(200, {
                    "id": "chatcmpl-stub", "object": "chat.completion", "created": int(t0),
                    "model": body.get("model", "stub"),
                    "choices": [{"index": 0, "finish_reason": finish,
                                 "message": {"role": "assistant", "content": out}}],
                    "usage": {"prompt_tokens": len(user), "completion_tokens": len(out),
                              "total_tokens": len(user) + len(out)}})

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _notes_answer(kind: str, user: str, bad: bool) -> str:
    numbered = [line.split(". ", 1) for line in user.splitlines() if ". " in line]
    if kind == "chapters":
        starts = [int(n) for n, _ in numbered][::3]
        if bad:  # out of order, as a model sometimes answers
            starts = starts[::-1]
        items = [{"start": n, "title": f"第{i}章", "summary": f"从第{n}句开始"}
                 for i, n in enumerate(starts, 1)]
        return "```json\n" + json.dumps(items, ensure_ascii=False) + "\n```"
    if kind == "mindmap":
        if bad:
            return "这段内容主要讲了几个方面，下面分别说明。"
        return "- 中心主题\n  - 要点一\n    - 细节\n  - 要点二\n"
    lines = [f"{n}. EN:{text}" for n, text in numbered]
    if bad and len(lines) > 1:
        lines = lines[:-1]  # a line lost: the window is asked again in halves
    return "\n".join(lines)


class TrapServer:
    """Hostile answers for the egress and download-cap tests, on 127.0.0.1 (or another
    loopback address): ``/endless.mp3`` streams ``endless_bytes`` of MP3-looking data
    chunked, without a Content-Length; ``/redirect?to=URL`` redirects; ``/secret.html``
    is an "internal" page with an ``og:title``.  ``sent`` counts the bytes streamed."""

    SECRET_TITLE = "INTERNAL-ADMIN-PAGE-TITLE"

    def __init__(self, host: str = "127.0.0.1", endless_bytes: int = 300 * 2**20,
                 members: tuple[Path, str] | None = None) -> None:
        trap = self
        self.sent = 0
        self.requests: list[str] = []

        class Handler(SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None: ...

            def do_GET(self) -> None:  # noqa: N802
                from urllib.parse import parse_qs, urlsplit

                trap.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif parts.path == "/members.mp3" and members is not None:
                    media, cookie = members  # served only with that cookie
                    if cookie not in (self.headers.get("Cookie") or ""):
                        self.send_error(403)
                        return
                    data = media.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "audio/mpeg")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif parts.path == "/secret.html":
                    page = (f"<html><head><meta property='og:title' content='{trap.SECRET_TITLE}'>"
                            "</head><body><video src='/endless.mp3'></video></body></html>")
                    data = page.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif parts.path == "/endless.mp3":
                    self.send_response(200)
                    self.send_header("Content-Type", "audio/mpeg")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    block = b"\xff\xfb\x90\x64" + bytes(64 * 1024 - 4)
                    try:
                        while trap.sent < endless_bytes:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                            trap.sent += len(block)
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:
                        pass  # the client stopped reading
                else:
                    self.send_error(404)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TcpProxy:
    """A TCP relay from a port on 127.0.0.1 to ``target``, taken down and brought back
    as a database server is restarted or stopped: ``down()`` resets every relayed
    connection and, until ``up()``, resets each new one as it arrives.  The relay keeps
    its port all along (closing the listener would let another process take it)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._serving = threading.Event()
        self._serving.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def up(self) -> None:
        self._serving.set()

    def down(self) -> None:
        self._serving.clear()
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            _reset(conn)

    def restart(self) -> None:
        self.down()
        self.up()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._serving.is_set():
                _reset(client)
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        with self._lock:
            if not self._serving.is_set():  # taken down meanwhile
                _reset(client)
                _reset(upstream)
                return
            self._open.update((client, upstream))
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with _quiet():
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.down()
        with _quiet():
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


def _reset(conn: socket.socket) -> None:
    """Close with a reset (RST), as a server that went away."""
    import struct

    with _quiet():
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def _quiet() -> Any:
    import contextlib

    return contextlib.suppress(OSError)


def raw_server(handle: Callable[[socket.socket], None]) -> Iterator[str]:
    """A raw TCP server on 127.0.0.1: ``handle`` gets each connection (on its thread)."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_run, args=(handle, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    srv.close()


def _run(handle: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn:
        try:
            conn.recv(65536)  # the request (small)
            handle(conn)
        except OSError:
            pass


def trickling(conn: Any) -> None:
    """An HTTP answer that never ends: one byte of its headers every 0.3 s."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
        conn.sendall(bytes([byte]))
        time.sleep(0.3)
