"""The punctuation model's side of the ONNX engine's text, written for tingji: the
words a CT-Transformer sees, and its inference around the forward pass (windows of 20
words, the carry of an unfinished sentence, the final full stop), reproducing funasr
1.4.16's answers (``tests/unit/test_onnx_text.py`` holds them equal)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

T = TypeVar("T")
_ENGLISH_WORD = re.compile(r"[a-zA-Z']+")


# ----------------------------------------------------------------------------- words
class Segmenter(Protocol):
    def cut(self, sentence: str, HMM: bool = ...) -> Iterable[str]: ...  # noqa: N803


def words_for_punctuation(text: str, segmenter: Segmenter | None = None) -> list[str]:
    """The punctuation model's words of a text.  Character-level models: every
    non-ASCII character alone, runs of ASCII characters as one word.  Word-level models
    (a jieba ``segmenter`` with the model's dictionary): English words as they are,
    each run of other words joined and cut by the segmenter."""
    if segmenter is None:
        words: list[str] = []
        for chunk in text.split():
            for ascii_run, chars in itertools.groupby(chunk, key=lambda c: len(c.encode()) == 1):
                run = "".join(chars)
                words.extend([run] if ascii_run else list(run))
        return words
    out: list[str] = []
    for english, run in itertools.groupby(text.split(), key=_is_english):
        if english:
            out.extend(run)
        else:
            out.extend(segmenter.cut("".join(run), HMM=False))
    return out


def _is_english(word: str) -> bool:
    return _ENGLISH_WORD.fullmatch(word) is not None


def windows(items: Sequence[T], size: int = 20) -> list[Sequence[T]]:
    """``items`` in windows of ``size`` (the last may be shorter); a sequence no longer
    than one window -- the empty one included -- is its own single window."""
    if size < 2:
        raise ValueError("a window holds at least two items")
    if len(items) <= size:
        return [items]
    return [items[n:n + size] for n in range(0, len(items), size)]


def read_seg_dict(path: Path) -> dict[str, str]:
    """A model's ``seg_dict``: one word a line, then the tokens it is spelled with."""
    table: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        word, *spelling = line.split() or [""]
        if word:  # blank lines are skipped (funasr stops at them with an IndexError)
            table[word] = " ".join(spelling)
    return table


# ----------------------------------------------------------------------------- punctuation
_STOPS = ("。", "？")
_ASCII_MARK = {"，": ",", "。": ".", "？": "?"}
_LONGEST_UNCUT = 200  # words without a full stop before a comma may end the sentence


def punctuate(words: Sequence[str], ids: Sequence[int],
              marks_of: Callable[[np.ndarray], Sequence[int]], marks: Sequence[str],
              end_id: int, *, word_level: bool = False, size: int = 20
              ) -> tuple[str, np.ndarray]:
    """CT-Transformer's inference around its forward pass (``marks_of``: ids -> one
    mark id per id): the punctuated text and one mark id per word (per character of a
    Chinese word for ``word_level`` models).

    The words go through the model ``size`` at a time.  Each window but the last is cut
    after its last full stop or question mark; the rest is carried into the next
    window, so sentences are marked with their whole context.  A carry that grows past
    200 words with no full stop is cut at its last comma, which becomes a full stop.
    The text ends with a full stop."""
    out_text: list[str] = []
    out_marks: list[list[int]] = []
    begin = 0
    ends = [*range(size, len(words), size), len(words)]
    for end in ends:
        found = [int(m) for m in marks_of(np.asarray(ids[begin:end], dtype=np.int64))]
        if end < len(words):
            found = found[:_sentence_cut(found, marks, end_id) + 1]
        out_text.append(_render(list(words[begin:begin + len(found)]), found, marks))
        out_marks.append(found)
        begin += len(found)
    text, closed = _close("".join(out_text))
    if closed and out_marks[-1]:
        out_marks[-1][-1] = end_id
    per_word = [m for window in out_marks for m in window]
    if word_level:
        per_word = _per_character(words, per_word)
    return text, np.asarray(per_word, dtype=np.int64)


def _sentence_cut(found: list[int], marks: Sequence[str], end_id: int) -> int:
    """Where a window that is not the last ends: its last stop (not among the first
    three words nor the very last), else -- in a window over 200 words -- its last
    comma, turned into a full stop (``found`` is changed), else nowhere (-1: all of it
    is carried)."""
    comma = -1
    for i in range(len(found) - 2, 1, -1):
        if marks[found[i]] in _STOPS:
            return i
        if comma < 0 and marks[found[i]] == "，":
            comma = i
    if len(found) > _LONGEST_UNCUT and comma >= 0:
        found[comma] = end_id
        return comma
    return -1


def _ascii_initial(word: str) -> bool:
    return len(word[0].encode()) == 1


def _render(words: list[str], found: list[int], marks: Sequence[str]) -> str:
    """Words and their marks as text: Latin words spaced and capitalised at a window's
    or sentence's start, a Latin word's marks in their ASCII form, ``_`` for none."""
    text = []
    for i, word in enumerate(words):
        latin = _ascii_initial(word)
        if latin and (i == 0 or marks[found[i - 1]] in _STOPS):
            word = word.capitalize()
        if latin and (i == 0 or _ascii_initial(words[i - 1])):
            word = " " + word
        text.append(word)
        mark = marks[found[i]]
        if mark != "_":
            text.append(_ASCII_MARK.get(mark, mark) if latin else mark)
    return "".join(text)


def _close(text: str) -> tuple[str, bool]:
    """The text with a final full stop (a trailing comma becomes one): (text, whether
    its end was changed)."""
    tail = text[-1]
    if tail in ("，", "、"):
        return text[:-1] + "。", True
    if tail == ",":
        return text[:-1] + ".", True
    ascii_tail = len(tail.encode()) == 1
    if not ascii_tail and tail not in _STOPS:
        return text + "。", True
    if ascii_tail and tail not in (".", "?"):
        return text + ".", True
    return text, False


def _per_character(words: Sequence[str], found: list[int]) -> list[int]:
    """A word-level model's marks, one per character: a Chinese word of n characters
    gets "no mark" (1) n-1 times, then its own.  (Whether a word is Chinese is judged
    from ``\\u0e00``, funasr's bound.)"""
    out: list[int] = []
    for word, mark in zip(words, found, strict=False):
        if "\u0e00" <= word[0] <= "\u9fa5" and len(word) > 1:
            out.extend([1] * (len(word) - 1))
        out.append(mark)
    out.extend(found[len(words):])
    return out
