"""Which URLs tingji accepts as sources (shared by the API and the command line), and the
control-character rule for any text that comes from outside."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

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


# ------------------------------------------------------------------ parts and lists
MAX_PARTS = 200  # parts of one multi-part video transcribed as one task
_SPEC = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_parts(spec: str) -> list[int]:
    """``"2-5,7"`` -> ``[2, 3, 4, 5, 7]``: part numbers from 1, in order, no repeats;
    ``ValueError`` (saying why) for anything else."""
    spec = spec.replace(" ", "")
    if not _SPEC.match(spec):
        raise ValueError(f"{spec[:40]!r} is not a part list like 2-5,7")
    parts: list[int] = []
    for item in spec.split(","):
        lo, _, hi = item.partition("-")
        first, last = int(lo), int(hi or lo)
        if not 1 <= first <= last <= MAX_PARTS:
            raise ValueError(f"parts are numbered 1 to {MAX_PARTS}, low to high: {item!r}")
        parts.extend(range(first, last + 1))
    if len(set(parts)) != len(parts):
        raise ValueError("a part is listed twice")
    return parts


def check_parts(parts: list[int]) -> list[int]:
    """A ``parts`` field: the same rules as ``parse_parts``."""
    return parse_parts(",".join(str(p) for p in parts)) if parts else []


def parts_in_url(url: str) -> list[int] | None:
    """The parts a URL's ``?p=`` selects (``p=2``, ``p=2-5,7``), or None.  The URL itself
    is fetched as given (Bilibili reads ``p`` itself; on another site ``p`` may mean
    something else, and a value that is no part list selects nothing)."""
    chosen = [unquote(kv[2:]) for kv in urlsplit(url).query.split("&") if kv.startswith("p=")]
    if not chosen:
        return None
    try:
        return parse_parts(chosen[-1])
    except ValueError:
        return None


# Playlist pages yt-dlp resolves to many videos: submitted, they become a batch (one
# task per entry).  Anything else can ask for it with ``expand: true``.
_LISTS = [
    re.compile(r"^https?://space\.bilibili\.com/\d+/(favlist|channel/collectiondetail|"
               r"channel/seriesdetail|lists/\d+|video|upload/video)(?:[/?#]|$)"),
    re.compile(r"^https?://space\.bilibili\.com/\d+/?(?:[?#]|$)"),
    re.compile(r"^https?://(www\.)?bilibili\.com/(medialist/(detail|play)|list/)"),
    re.compile(r"^https?://(www\.|m\.)?youtube\.com/(playlist\?|@[^/]+/?(videos)?(?:[?#]|$)|"
               r"channel/|c/)"),
]


def is_list_url(url: str) -> bool:
    return any(p.match(url) for p in _LISTS)
