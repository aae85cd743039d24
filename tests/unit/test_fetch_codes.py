"""Every fetch failure gets a stable ``error.code`` (``worker.stages.refusals.classify``):
yt-dlp's real exceptions, with the HTTP status they carry or the words its extractors
use (Bilibili's included).  Transient codes are retried later without using attempts;
the others fail at once."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("yt_dlp")


def _http(status: int) -> BaseException:
    """A yt-dlp download error caused by an HTTP answer, as its networking layer raises
    it (the status is read from the cause, whatever the message says)."""
    from yt_dlp.networking import Response
    from yt_dlp.networking.exceptions import HTTPError
    from yt_dlp.utils import DownloadError, ExtractorError

    cause = HTTPError(Response(io.BytesIO(b""), "http://127.0.0.1/x", {}, status=status))
    inner = ExtractorError("Unable to download webpage", cause=cause)
    return DownloadError(f"ERROR: {inner}", exc_info=(type(inner), inner, None))


@pytest.mark.parametrize("status,code,retryable", [
    (412, "rate_limited", True), (429, "rate_limited", True), (404, "not_found", False),
    (410, "not_found", False), (401, "login_required", False), (403, "login_required", False),
    (503, "network", True), (400, "http_error", False)])
def test_http_statuses(status: int, code: str, retryable: bool) -> None:
    from worker.stages.refusals import classify

    err = classify(_http(status))
    assert (err.code, err.retryable, err.deferrable) == (code, retryable, retryable)
    assert "Traceback" not in err.message and err.message


@pytest.mark.parametrize("text,code", [
    ("[BiliBili] BV1x: Request is blocked by server (412), please wait and try later.",
     "rate_limited"),
    ("[BiliBili] BV1x: Request is rejected by server (352)", "rate_limited"),
    ("[BiliBili] BV1x: This video is only available for registered users", "login_required"),
    ("[BiliBili] BV1x: This video is for premium members only", "login_required"),
    ("[youtube] x: Video unavailable. This video has been removed by the uploader",
     "not_found"),
    ("Unsupported URL: https://example.com/page", "unsupported_url"),
    ("Unable to download webpage: <urlopen error [Errno 111] Connection refused>", "network"),
])
def test_extractor_messages(text: str, code: str) -> None:
    from yt_dlp.utils import DownloadError

    from worker.stages.refusals import classify

    assert classify(DownloadError(f"ERROR: {text}")).code == code


def test_geo_restriction_and_unknown_failures() -> None:
    from yt_dlp.utils import DownloadError, GeoRestrictedError

    from worker.stages.refusals import classify

    geo = GeoRestrictedError("This video is not available from your location")
    err = classify(geo)
    assert err.code == "geo_blocked" and not err.retryable
    odd = classify(DownloadError("ERROR: [generic] x: Unable to extract title"))
    # not named: retried with the task's attempts (an extractor may work next time)
    assert odd.code == "fetch_failed" and odd.retryable and not odd.deferrable
