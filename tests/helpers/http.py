"""What tests of the HTTP API check of every answer: the one error shape, a submission,
and subtitles parsed back (SRT by hand, WebVTT by an independent parser)."""

from __future__ import annotations

import io
import re

import httpx


def error_of(resp: httpx.Response, status: int) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    # tingji's code and message, and OpenAI's type and param (the same for every route)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "type", "param"}
    assert body["error"]["type"] == ("invalid_request_error" if status < 500 else "api_error")
    assert "Traceback" not in resp.text
    return body["error"]  # type: ignore[no-any-return]


def submit(client: httpx.Client, url: str = "https://www.bilibili.com/video/BV1GJ411x7h7",
           **kw: object) -> dict[str, object]:
    resp = client.post("/api/v1/process/bilibili", json={"video_url": url, **kw})
    assert resp.status_code == 202, resp.text
    return resp.json()  # type: ignore[no-any-return]


def check_srt(text: str) -> list[tuple[int, int, str]]:
    """Parse SRT; assert numbering, monotonic times, no empty or zero-length cue."""
    def ms(t: str) -> int:
        h, m, rest = t.split(":")
        s, milli = rest.split(",")
        return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(milli)
    cues = []
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    assert blocks, "empty SRT"
    last_end = -1
    for i, block in enumerate(blocks, 1):
        lines = block.split("\n")
        assert lines[0] == str(i)
        m = re.fullmatch(r"(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)", lines[1])
        assert m, lines[1]
        start, end = ms(m.group(1)), ms(m.group(2))
        body = "\n".join(lines[2:]).strip()
        assert body and start < end and start >= last_end
        last_end = end
        cues.append((start, end, body))
    return cues


def check_vtt(text: str) -> list[tuple[int, int, str]]:
    """Parse WebVTT with webvtt-py; assert monotonic, non-empty cues."""
    import webvtt

    def ms(t: str) -> int:  # webvtt-py's *_in_seconds are whole seconds
        h, m, s = t.split(":")
        return round((int(h) * 3600 + int(m) * 60 + float(s)) * 1000)
    cues = [(ms(c.start), ms(c.end), c.text) for c in webvtt.from_buffer(io.StringIO(text))]
    assert cues, "empty VTT"
    for (s1, e1, t1), (s2, _, _) in zip(cues, cues[1:] + [(10**12, 0, "")], strict=True):
        assert t1.strip() and s1 < e1 <= s2
    return cues
