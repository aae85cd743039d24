"""Text around the ONNX engine's graphs, written for tingji: tokens and their
timestamps into text, punctuation windows, sentences with their times.

The ONNX engine must give the very text, sentences and timestamps that the torch engine
(funasr itself) gives, so each function here reproduces one of funasr 1.4.16's result
steps, quirks included (they are named where they matter: a user would see them as a
difference between the engines).  None of it imports funasr or torch.
``tests/unit/test_onnx_text.py`` checks each function against funasr's with generated
token, punctuation and timestamp sequences wherever funasr is installed.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

log = logging.getLogger("tingji.worker.onnx")

Stamp = list[int]  # [start_ms, end_ms]

# tokens that never reach the text
_CONTROL_TOKENS = frozenset({"<s>", "</s>", "<unk>", "<OOV>"})
# the same, as substrings, plus the space, are ignored when a piece's script is judged
_IGNORED_IN_PIECE = (" ", "</s>", "<s>", "<unk>", "<OOV>")
# punctuation ids 2.. of ct-punc's list, as sentence ends (ids 0 and 1: none)
_SENTENCE_MARKS = ("，", "。", "？", "、")
_TAG = re.compile(r"<\|[^|]*\|>")  # <|zh|>, <|NEUTRAL|> ... in multilingual models' text



# ----------------------------------------------------------------------------- scripts
def _han_or_digit(piece: str) -> bool:
    """CJK ideograph (basic block), digit, or "@" -- compared as strings, so a piece of
    several characters is judged mostly by its first one, as funasr judges it."""
    return "\u4e00" <= piece <= "\u9fff" or "0" <= piece <= "9" or piece == "@"


def _clean(piece: str) -> str:
    for ignored in _IGNORED_IN_PIECE:
        piece = piece.replace(ignored, "")
    return piece


def _all_han(pieces: Iterable[str]) -> bool:
    """Every piece (after cleaning) counts as Chinese; an empty sequence does not."""
    cleaned = [_clean(p) for p in pieces]
    return bool(cleaned) and all(_han_or_digit(p) for p in cleaned)


def _all_latin(pieces: Iterable[str]) -> bool:
    """Every piece (after cleaning) is a word of letters other than Chinese ones, or an
    apostrophe; an empty sequence is not."""
    cleaned = [_clean(p) for p in pieces]
    if not cleaned:
        return False
    for p in cleaned:
        if p.isalpha():
            if _han_or_digit(p):
                return False
        elif p != "'":
            return False
    return True


def _ascii_letter(piece: str) -> bool:
    """One ASCII letter (a UTF-8 byte string's ``isalpha`` knows no other letters)."""
    return len(piece) == 1 and piece.encode("utf-8").isalpha()


# ----------------------------------------------------------------------------- tokens
def tokens_to_text(tokens: Sequence[str | bytes], stamps: Sequence[Stamp] | None = None
                   ) -> tuple[str, list[Stamp] | None, list[str]]:
    """Decoded tokens (and their timestamps) -> (text, timestamps, words).

    Chinese characters are kept as they are; subword pieces (``ab@@`` ``c``) are glued
    into words separated by spaces, each word timed from its first piece to its last;
    single spelled-out letters (``a b c``) become one upper-case abbreviation.  With
    timestamps the text has a space between every word (the punctuation model splits it
    again); without, the words are joined as written.  Timestamps are indexed by the
    token's position once control tokens are dropped, so ``stamps`` must hold one per
    remaining token.  ``stamps`` is ``None`` in the result when none were given.
    """
    pieces = [t if isinstance(t, str) else t.decode("utf-8") for t in tokens]
    pieces = [p for p in pieces if p not in _CONTROL_TOKENS]
    timed = stamps is not None
    if _all_han(pieces):
        words = [p.replace(" ", "") for p in pieces]
        times: list[Stamp] = list(stamps) if timed else []
    elif _all_latin(pieces):
        words, times = _glue_latin(pieces, stamps)
    else:
        words, times = _glue_mixed(pieces, stamps)
    words, times = _abbreviations(words, times if timed else None)
    kept = [w for w in words if w != " "]
    if timed:
        return " ".join(kept).strip(), times, kept
    return "".join(words).strip(), None, kept


def _glue_latin(pieces: list[str], stamps: Sequence[Stamp] | None
                ) -> tuple[list[str], list[Stamp]]:
    """Subword pieces -> words, each followed by a " " word; a word still open at the
    end (its last piece ends in ``@@``) is dropped, as funasr drops it."""
    words: list[str] = []
    times: list[Stamp] = []
    word = ""
    start = None
    for n, piece in enumerate(pieces):
        if stamps is not None and start is None:
            start = stamps[n][0]
        if "@@" in piece:
            word += piece.replace("@@", "")
            continue
        words += [word + piece, " "]
        word = ""
        if stamps is not None:
            times.append([start, stamps[n][1]])
            start = None
    return words, times


def _glue_mixed(pieces: list[str], stamps: Sequence[Stamp] | None
                ) -> tuple[list[str], list[Stamp]]:
    """Chinese characters and subword pieces in one text.  A Chinese piece takes back
    the space after a preceding Latin word; a piece that is neither (punctuation, a
    mixed token) is kept as it is and gets no timestamp.

    A Chinese piece that follows an unfinished subword (``ab@@`` then ``中``) is timed
    as that subword: its first piece's start, its last piece's end."""
    words: list[str] = []
    times: list[Stamp] = []
    word = ""
    latin_space = False  # the last word written is a Latin word and its " "
    start, end = -1, -1
    fresh = True  # the next piece's timestamp starts a word
    for n, piece in enumerate(pieces):
        if fresh and stamps is not None:
            start, end = stamps[n]
        kind = _kind(piece)
        if kind == "other":  # kept as it is, untimed
            words.append(piece)
            continue
        if kind == "subword":
            word += piece.replace("@@", "")
        elif kind == "latin":
            words += [word + piece, " "]
            word = ""
        else:
            if latin_space:
                words.pop()
            words.append(piece)
        latin_space = kind == "latin"
        if stamps is not None:
            if kind != "han":
                end = stamps[n][1]
            fresh = kind != "subword"
            if fresh:
                times.append([start, end])
    return words, times


def _kind(piece: str) -> str:
    """A piece of a mixed text: ``han`` (every character Chinese, a digit or "@"),
    ``subword`` (holds ``@@``), ``latin`` (a word of other letters), or ``other``."""
    if piece and all(_han_or_digit(c) for c in piece):
        return "han"
    if "@@" in piece:
        return "subword"
    return "latin" if _all_latin(piece) else "other"


def _abbreviations(words: list[str], stamps: list[Stamp] | None
                   ) -> tuple[list[str], list[Stamp]]:
    """Runs of single ASCII letters separated by single spaces (``a b c``) -> one
    upper-case word timed from its first letter to its last.  The other words keep
    their timestamps, looked up by their index among the non-space words (and left
    without one when there are fewer timestamps than words)."""
    ends: dict[int, int] = {}  # first letter's index -> last letter's index
    n = 0
    while n < len(words):
        last = n
        while (_ascii_letter(words[last]) and last + 2 < len(words)
               and words[last + 1] == " " and _ascii_letter(words[last + 2])):
            last += 2
        if last > n:
            ends[n] = last
            n = last + 1
        else:
            n += 1
    # the timestamp index of every word: how many non-space words stand before it
    index = list(itertools.accumulate((w != " " for w in words), initial=0))[:-1]
    out: list[str] = []
    times: list[Stamp] = []
    n = 0
    while n < len(words):
        if n in ends:
            last = ends[n]
            out.append("".join(w.upper() for w in words[n:last + 1:2]))
            if stamps is not None:
                start = stamps[index[n]][0]
                if index[last] < len(stamps):
                    times.append([start, stamps[index[last]][1]])
            n = last + 1
            continue
        out.append(words[n])
        if stamps is not None and words[n] != " " and index[n] < len(stamps):
            times.append(list(stamps[index[n]][:2]))
        n += 1
    return out, times


# ----------------------------------------------------------------------------- sentences
def sentences_from_punctuation(punctuation: Sequence[int] | None, stamps: Sequence[Stamp],
                               text: str) -> list[dict[str, Any]]:
    """The punctuated sentences of one task: ``text`` holds the words the punctuation
    model saw (space-separated), ``punctuation`` one id per word (2..5: ，。？、 end a
    sentence), ``stamps`` one [start, end] per word.  Each sentence: its text with the
    mark, start, end and the timestamps of its words.  Words after the last mark form no
    sentence.  Lengths that differ are logged and walked to the longest, missing items
    as ``None`` (funasr's zip_longest).

    Without punctuation, one entry holds everything, its ``text`` a *list* of words --
    funasr's shape, which readers of ``sentence_info`` must accept."""
    if text is None or stamps is None or not len(stamps) or not text:
        return []
    words = text.split()
    if punctuation is None or not len(punctuation):
        return [{"text": words, "start": stamps[0][0], "end": stamps[-1][1],
                 "timestamp": stamps}]
    if len(punctuation) != len(stamps):
        log.warning("length mismatch between punc and timestamp")
    sentences: list[dict[str, Any]] = []
    said = ""
    times: list[Any] = []
    start: Any = stamps[0][0]
    end: Any = stamps[0][1]
    for mark, stamp, word in itertools.zip_longest(punctuation, stamps, words):
        if start is None and stamp is not None:
            start = stamp[0]
        if word is not None:
            latin_edge = _latin_initial(word[0]) or (said and _latin_initial(said[-1]))
            said += (" " + word) if latin_edge else word
        times.append(stamp)
        if stamp is not None:
            end = stamp[1]
        mark = 1 if mark is None else int(mark)
        if mark > 1:
            sentences.append({"text": said + _SENTENCE_MARKS[mark - 2], "start": start,
                              "end": end, "timestamp": times})
            said, times, start = "", [], None
    return sentences


def _latin_initial(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def sentences_from_segments(results: Sequence[dict[str, Any]],
                            segments: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """One sentence per VAD segment with text (when there is no punctuation model, or
    its marks do not line up with the timestamps): timed by its tokens when it has
    any, by the segment otherwise.  Timestamps may be [ms, ms] pairs or dicts in
    seconds (``start_time``/``end_time``)."""
    sentences = []
    for result, segment in zip(results, segments, strict=False):
        text = _TAG.sub("", str(result.get("text", ""))).strip()
        if not text:
            continue
        raw = result.get("timestamp")
        if raw is None:
            raw = result.get("timestamps", [])
        times = [t for t in map(_stamp_ms, raw or []) if t is not None]
        sentences.append({
            "start": times[0][0] if times else segment[0],
            "end": times[-1][1] if times else segment[1],
            "text": text, "sentence": text, "timestamp": times,
        })
    return sentences


def _stamp_ms(item: Any) -> Stamp | None:
    if isinstance(item, dict):
        if item.get("start_time") is None or item.get("end_time") is None:
            return None
        return [int(float(item["start_time"]) * 1000), int(float(item["end_time"]) * 1000)]
    if isinstance(item, (list, tuple)) and len(item) >= 2:
        return [int(item[0]), int(item[1])]
    return None


def join_segment_texts(texts: Iterable[str]) -> str:
    """The VAD segments' texts as one text for the punctuation model: tags removed,
    empty ones dropped, a space between two texts unless both sides are Chinese."""
    parts = [t for t in (_TAG.sub("", text).strip() for text in texts) if t]
    seams = ("" if _han(left[-1]) and _han(right[0]) else " "
             for left, right in itertools.pairwise(parts))
    # each part with the seam after it (none after the last; no parts, no text)
    return "".join(part + seam for part, seam in zip(parts, [*seams, ""], strict=False))


def _han(ch: str) -> bool:
    """CJK ideographs, extension A included: no space between two of them."""
    return "\u3400" <= ch <= "\u9fff"
