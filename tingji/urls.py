"""Which URLs tingji accepts as sources (shared by the API and the command line), and the
control-character rule for any text that comes from outside."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
_WS = re.compile(r"\s")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_chars(text: str) -> bool:
    """NUL and other C0 control characters: never valid in a URL, a name or a key (and
    PostgreSQL cannot store NUL in text)."""
    return _CONTROL.search(text) is not None


def strip_control_chars(text: str) -> str:
    """Text from outside (a file name, a page title) made safe to store and show."""
    return _CONTROL.sub("", text)


def url_problem(url: str) -> str | None:
    """None for an http(s) URL yt-dlp may fetch; otherwise why not, in a few words."""
    if len(url) > MAX_URL_LENGTH:
        return f"URL longer than {MAX_URL_LENGTH} characters"
    if _WS.search(url):
        return "URL contains whitespace"
    if has_control_chars(url):
        return "URL contains control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as exc:
        return f"malformed URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"only http and https URLs are accepted, not {parts.scheme or 'no scheme'!r}"
    if not parts.hostname:
        return "URL has no host"
    if port == 0:
        return "URL has an invalid port"
    return None


def looks_like_url(source: str) -> bool:
    return "://" in source[:16] or source.lower().startswith(("http:", "https:"))
