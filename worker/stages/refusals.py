"""What a site's refusal means: each yt-dlp failure becomes a task error with a stable
``code`` (``rate_limited``, ``network``, ``not_found``, ``login_required``, ``geo_blocked``,
``unsupported_url``, ``no_audio``, ``http_error``, ``fetch_failed``).  Those that heal with
time (``worker.errors.TRANSIENT_CODES``) are tried again later without using attempts.
"""

from __future__ import annotations

import logging

from worker.errors import PermanentTaskError, RetryableTaskError, out_of_space

log = logging.getLogger("tingji.worker.fetch")


NETWORK_ERROR = ("download failed: a network error (the host could not be reached, or the "
                 "connection broke)")

# yt-dlp's words for each class of refusal (its extractors' messages, Bilibili's included)
_SAYS = (
    ("rate_limited", ("too many requests", "rate limit", "rate-limit", "(412)", "(352)",
                      "please wait and try later", "risk control", "请求过于频繁")),
    ("geo_blocked", ("geo restriction", "geo-restrict", "not available from your location",
                     "not available in your country", "地区")),
    ("login_required", ("login", "log in", "sign in", "registered users", "premium",
                        "members only", "member-only", "purchase", "private video",
                        "cookies", "大会员", "付费")),
    ("not_found", ("video unavailable", "has been removed", "been deleted", "does not exist",
                   "no longer available", "not found", "啥都木有", "稿件不可见")),
    ("unsupported_url", ("unsupported url", "is not a valid url")),
    ("no_audio", ("no video formats", "requested format is not available")),
    ("network", ("connection refused", "timed out", "connection reset", "remote end closed",
                 "name or service not known", "temporary failure in name resolution",
                 "network is unreachable", "no route to host", "connection aborted",
                 "eof occurred", "incomplete read")),
)

_STATUS_CODE = {412: "rate_limited", 429: "rate_limited", 404: "not_found", 410: "not_found",
                401: "login_required", 403: "login_required", 451: "geo_blocked"}

_MESSAGES = {
    "rate_limited": "the site refuses requests for now (HTTP {status}: rate limit or risk "
                    "control); tingji tries again later",
    "network": NETWORK_ERROR,
    "not_found": "the video was not found (deleted, or a wrong link)",
    "login_required": "the video needs a login or membership (TINGJI_YTDLP_COOKIES gives "
                      "yt-dlp a browser's cookies)",
    "geo_blocked": "the video is not available from this machine's location",
    "unsupported_url": "no audio or video found at this URL",
    "no_audio": "no downloadable audio",
    "http_error": "the server answered HTTP {status} for this URL",
}


def _http_status(exc: BaseException | None) -> int | None:
    """The HTTP status behind a yt-dlp error (its ``exc_info``, ``cause`` chain)."""
    seen = 0
    while exc is not None and seen < 8:
        status = getattr(exc, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
        info = getattr(exc, "exc_info", None)
        nxt = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__ or (
            info[1] if isinstance(info, tuple) and len(info) > 1 else None)
        exc = nxt if nxt is not exc else None
        seen += 1
    return None


def _network(exc: BaseException | None) -> bool:
    """A connection that could not be made or broke (timeouts, resets, DNS)."""
    from yt_dlp.networking.exceptions import TransportError

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (TransportError, ConnectionError, TimeoutError)):
            return True
        info = getattr(exc, "exc_info", None)
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__ or (
            info[1] if isinstance(info, tuple) and len(info) > 1 else None)
        seen += 1
    return False


def classify(exc: BaseException) -> PermanentTaskError | RetryableTaskError:
    """A yt-dlp failure -> a task error with a stable ``code`` and a message for people.
    ``rate_limited`` and ``network`` heal with time (tried again later without using
    attempts); the others are permanent.  Network errors get one text whatever their
    cause (refused, reset, timed out), so task errors cannot map which ports answer."""
    from yt_dlp.utils import GeoRestrictedError

    msg = str(exc).replace("ERROR: ", "").strip()
    low = msg.lower()
    if out_of_space(exc):
        return RetryableTaskError("the disk is full: the download could not be written; "
                                  "tried again later, without using an attempt, once space "
                                  "is freed", type="DiskFull", code="disk_full")
    status = _http_status(exc)
    code = _STATUS_CODE.get(status) if status else None
    if code is None and isinstance(exc, GeoRestrictedError):
        code = "geo_blocked"
    if code is None:
        code = next((c for c, words in _SAYS if any(w in low for w in words)), None)
    if code is None and status is not None and status >= 500:
        code = "network"  # the server is in trouble: it heals like the network
    elif code is None and status is not None:
        code = "http_error"
    if code is None and _network(exc):
        code = "network"
    if code is None:  # an extractor that failed in a way it does not name: retried
        log.info("download failed (will retry): %s", msg[:500])
        return RetryableTaskError(f"download failed: {msg[:300]}", type="FetchFailed",
                                  code="fetch_failed")
    text = _MESSAGES[code].format(status=status or "-")
    if status is not None and "{status}" not in _MESSAGES[code]:
        text = f"{text} (HTTP {status})"
    if code in ("rate_limited", "network"):
        log.info("download refused or broken (%s, tried again later): %s", code, msg[:500])
        return RetryableTaskError(text if code == "network" else f"{text} ({msg[:200]})",
                                  type="FetchFailed", code=code)
    kind = {"unsupported_url": "UnsupportedURL", "no_audio": "NoAudio"}.get(code,
                                                                          "Unavailable")
    return PermanentTaskError(f"{text} ({msg[:200]})", type=kind, code=code)
