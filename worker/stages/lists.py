"""``python -m worker.stages.lists URL``: what a URL holds (a multi-part video's parts, a
list's videos), as JSON on stdout, without downloading anything.

The API runs this in a child process for ``GET /api/v1/bilibili/parts``: yt-dlp stays
out of the API process, and a page that hangs is killed at the API's time limit.  The
trust boundary's egress policy and the cookies setting apply as for any fetch.
"""

from __future__ import annotations

import json
import sys

from tingji.settings import Settings
from worker.errors import PermanentTaskError, RetryableTaskError
from worker.stages.fetch import list_url


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m worker.stages.lists URL MAX_ITEMS", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    try:
        listing = list_url(argv[0], allow_private=settings.allow_private_urls,
                           max_items=int(argv[1]), cookies=settings.ytdlp_cookies,
                           proxy=settings.proxy)
    except (PermanentTaskError, RetryableTaskError) as exc:
        print(json.dumps({"error": {"type": exc.type, "message": str(exc),
                                    "retryable": isinstance(exc, RetryableTaskError)}}))
        return 1
    print(json.dumps(listing, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
