"""Downloads go through a proxy only when ``TINGJI_PROXY`` names one: ``HTTP_PROXY`` and
friends in the worker's environment are not used (a proxy there would take requests
past the egress policy, which then sees only the proxy's address).  Real yt-dlp, a
real media server and a recording proxy on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from worker.errors import PermanentTaskError, RetryableTaskError
from worker.stages.fetch import list_url


@pytest.fixture
def proxy() -> Iterator[dict[str, Any]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None: ...

        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.requestline)
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET  # noqa: N815

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "seen": seen}
    httpd.shutdown()
    httpd.server_close()


def test_downloads_ignore_proxies_in_the_environment(files: Any, proxy: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, proxy["url"])
    listing = list_url(f"{files.url}/parts.html", allow_private=("127.0.0.0/8",),
                       max_items=10)
    assert len(listing["entries"]) == 2 and listing["title"] == "两集讲座"
    assert proxy["seen"] == []


def test_tingji_proxy_is_used(files: Any, proxy: dict[str, Any]) -> None:
    with pytest.raises((PermanentTaskError, RetryableTaskError)):
        list_url(f"{files.url}/parts.html", allow_private=("127.0.0.0/8",), max_items=10,
                 proxy=proxy["url"])
    assert proxy["seen"] and proxy["seen"][0].startswith(f"GET {files.url}/parts.html")


def test_a_bad_proxy_setting_names_the_variable() -> None:
    from tingji.settings import Settings, SettingsError

    assert Settings.from_env({"TINGJI_PROXY": "socks5://127.0.0.1:1080"}).proxy
    with pytest.raises(SettingsError, match="TINGJI_PROXY"):
        Settings.from_env({"TINGJI_PROXY": "ftp://user:pw@host"})
