"""TINGJI_YTDLP_COOKIES: members-only media downloads with the user's cookies, whose
contents never reach the task, its events, the logs or the database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers.servers import TrapServer
from tests.helpers.stack import Stack

SECRET = "SESSDATA=3f0c9-very-secret-session"


def test_cookies_reach_ytdlp_and_nothing_else(stack_factory: Callable[..., Stack],
                                              media: dict[str, Path], tmp_path: Path) -> None:
    name, value = SECRET.split("=", 1)
    jar = tmp_path / "cookies.txt"
    jar.write_text("# Netscape HTTP Cookie File\n"
                   f"127.0.0.1\tFALSE\t/\tFALSE\t0\t{name}\t{value}\n")
    before = jar.read_bytes()
    server = TrapServer(members=(media["mp3"], SECRET))
    try:
        without = stack_factory()
        without.worker(preload=False)  # as `tingji worker`: refused at the fetch
        refused = without.finished(without.submit_url(f"{server.url}/members.mp3"), 60)
        assert refused["status"] == "failed" and "403" in refused["error"]["message"]

        stack = stack_factory(TINGJI_YTDLP_COOKIES=str(jar))
        worker = stack.worker()
        tid = stack.submit_url(f"{server.url}/members.mp3")
        task = stack.finished(tid, 90)
        assert task["status"] == "completed", task
        leaks = [str(task), str(stack.events(tid)), worker.output(), stack.server.output()]
        leaks += [p.read_bytes().decode("latin-1") for p in stack.data.rglob("*")
                  if p.is_file()]
        assert not any(value in text for text in leaks)
        assert jar.read_bytes() == before  # yt-dlp wrote its jar to a private copy
    finally:
        server.close()

