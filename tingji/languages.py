"""Target languages for translation (``translate: "en"``): a BCP 47 code as users write
it, checked the same way by the API, the command line and the worker."""

from __future__ import annotations

import re

NAMES = {
    "en": "English", "ja": "Japanese", "ko": "Korean", "fr": "French", "de": "German",
    "es": "Spanish", "ru": "Russian", "pt": "Portuguese", "it": "Italian",
    "vi": "Vietnamese", "th": "Thai", "ar": "Arabic", "zh": "Simplified Chinese",
    "zh-hans": "Simplified Chinese", "zh-hant": "Traditional Chinese",
    "zh-tw": "Traditional Chinese (Taiwan)", "yue": "Cantonese (written)",
}
_CODE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")


def check_language(code: str) -> str:
    """A language code ("en", "ja", "zh-Hant"), lower-cased; ValueError if it is not
    one (or is "bilingual", which names a way to download subtitles)."""
    low = code.strip().lower()
    if low == "bilingual":
        raise ValueError("'bilingual' is a way to download subtitles, not a language")
    if len(low) > 20 or not _CODE.match(low):
        raise ValueError(f"{code[:30]!r} is not a language code (such as en, ja, zh-Hant)")
    return low


def language_name(code: str) -> str:
    """What the LLM is told to translate into."""
    return NAMES.get(code.lower(), f"the language whose BCP 47 code is {code!r}")
