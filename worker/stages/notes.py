"""The notes an LLM writes from a transcript: chapters, a mind map, a translation.

Every answer is checked before it is kept, because a model's answer is text that only
looks like the shape asked for: chapters must start on real sentences, in order; a mind
map must be one outline; a translation must give one line per sentence.  A bad answer
is asked again with what was wrong (chapters, mind map: up to ``ASKS`` times); a
translation window whose line count does not match is asked again in halves, down to
one sentence.  What still does not fit fails the stage as retryable: an unchecked
answer is never kept.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tingji.languages import language_name
from worker.errors import RetryableTaskError

if TYPE_CHECKING:
    from worker.stages.llm import Llm, LlmOptions

ASKS = 3  # tries for one chapters or mind-map answer
WINDOW_CHARS = 6000  # of numbered sentences, for chapters
TRANSLATE_LINES = 40  # sentences a translation window starts with
MAX_DEPTH = 4  # mind-map levels below its centre

CHAPTERS_PROMPT = (
    "你是视频和课程的笔记助手。下面是按句编号的文字稿，每行是“编号. 句子”。请按话题把内容分成"
    "章节（每章若干句，章节数随长度而定，通常 3 到 10 章）。只输出一个 JSON 数组，不要任何说明："
    '[{{"start": 本章第一句的编号, "title": "不超过 15 个字的标题", "summary": "一句话概括"}}]。'
    "第一章的 start 必须是 {first}，各章的 start 严格递增，且不超过 {last}。")
MINDMAP_PROMPT = (
    "你是笔记助手。请把下面文字稿的内容整理成思维导图的大纲，用 Markdown 无序列表输出：第一行"
    "“- ”后是中心主题，其下每深一层多缩进两个空格，最多四层，每个节点不超过 20 个字。"
    "只输出这个列表，不要任何说明。")
TRANSLATE_PROMPT = (
    "You translate subtitles. Translate each numbered line below into {language}. Answer "
    "with exactly {n} lines numbered 1 to {n} as in the input (\"1. ...\"), one line per "
    "input line in the same order: do not merge, split, skip or explain anything.")


class SentenceLike(Protocol):
    @property
    def start_ms(self) -> int: ...
    @property
    def text(self) -> str: ...


class BadAnswer(ValueError):
    """The model's answer does not have the shape asked for (the message says how)."""


def _numbered(sentences: Sequence[SentenceLike], first: int) -> str:
    return "\n".join(f"{first + i}. {s.text.strip()}" for i, s in enumerate(sentences))


def _json_array(answer: str) -> list[Any]:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", answer.strip())
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end < start:
        raise BadAnswer("the answer holds no JSON array")
    try:
        value = json.loads(body[start:end + 1])
    except json.JSONDecodeError as exc:
        raise BadAnswer(f"the JSON array does not parse: {exc.msg}") from None
    if not isinstance(value, list) or not value:
        raise BadAnswer("the JSON array is empty")
    return value


def parse_chapters(answer: str, first: int, last: int) -> list[dict[str, Any]]:
    """``[{"sentence", "title", "summary"}]`` from an answer to ``CHAPTERS_PROMPT`` for
    sentences ``first``..``last``; BadAnswer unless the chapters start at ``first`` and
    go strictly forward within the window."""
    chapters: list[dict[str, Any]] = []
    for item in _json_array(answer):
        if not isinstance(item, dict):
            raise BadAnswer("each chapter must be a JSON object")
        try:
            start = int(item["start"])
        except (KeyError, TypeError, ValueError):
            raise BadAnswer("each chapter needs a sentence number in \"start\"") from None
        title = " ".join(str(item.get("title") or "").split())[:60]
        if not title:
            raise BadAnswer(f"the chapter at sentence {start} has no title")
        summary = " ".join(str(item.get("summary") or "").split())[:300]
        if chapters and start <= chapters[-1]["sentence"]:
            raise BadAnswer(f"chapter starts must increase: {start} comes after "
                            f"{chapters[-1]['sentence']}")
        if not first <= start <= last:
            raise BadAnswer(f"sentence {start} is not between {first} and {last}")
        chapters.append({"sentence": start, "title": title, "summary": summary})
    if chapters[0]["sentence"] != first:
        raise BadAnswer(f"the first chapter must start at sentence {first}, "
                        f"not {chapters[0]['sentence']}")
    return chapters


def parse_outline(answer: str, title: str) -> dict[str, Any]:
    """A nested ``{"title", "children"}`` tree from a Markdown list; several top-level
    items go under ``title``.  BadAnswer for text that is not a list item, or a list of
    fewer than three items."""
    items: list[tuple[int, str]] = []
    for line in answer.splitlines():
        if not line.strip() or line.strip().startswith("```"):
            continue
        m = re.match(r"^(\s*)(?:[-*+]|\d+[.)])\s+(.+)$", line.expandtabs(2))
        if m is None:
            raise BadAnswer(f"not a list item: {line.strip()[:40]!r}")
        text = re.sub(r"^\*\*(.+)\*\*$", r"\1", m.group(2).strip())[:80]
        items.append((len(m.group(1)), text))
    if len(items) < 3:
        raise BadAnswer("the outline needs a centre and at least two items under it")
    indents = sorted({indent for indent, _ in items})
    nodes = [(indents.index(indent), text) for indent, text in items]
    root: dict[str, Any] = {"title": title, "children": []}
    if sum(1 for level, _ in nodes if level == 0) == 1 and nodes[0][0] == 0:
        root = {"title": nodes[0][1], "children": []}
        nodes = [(level - 1, text) for level, text in nodes[1:]]
    stack = [(-1, root)]
    for level, text in nodes:
        level = min(level, stack[-1][0] + 1, MAX_DEPTH - 1)  # no level skipped
        while stack[-1][0] >= level:
            stack.pop()
        node: dict[str, Any] = {"title": text, "children": []}
        stack[-1][1]["children"].append(node)
        stack.append((level, node))
    if not root["children"]:
        raise BadAnswer("the outline has nothing under its centre")
    return root


def parse_lines(answer: str, n: int) -> list[str]:
    """The ``n`` translations of a numbered answer, in order; BadAnswer if the numbers
    are not exactly 1..n.  A one-line window may come back unnumbered."""
    found: dict[int, str] = {}
    loose: list[str] = []
    for line in answer.strip().splitlines():
        m = re.match(r"^\s*(\d+)\s*[.、:：)）]\s*(.*)$", line)
        if m is None:
            if line.strip():
                loose.append(line.strip())
            continue
        number, text = int(m.group(1)), m.group(2).strip()
        if number in found or not text:
            raise BadAnswer(f"line {number} is repeated or empty")
        found[number] = text
    if n == 1 and not found and len(loose) == 1:
        return loose
    if sorted(found) != list(range(1, n + 1)):
        raise BadAnswer(f"{len(found)} numbered lines for {n} sentences")
    return [found[i] for i in range(1, n + 1)]


@dataclass
class NoteWriter:
    """Asks ``llm`` for one task's notes with ``opts`` (its model, limits and usage)."""

    llm: Llm
    opts: LlmOptions

    async def _ask(self, system: str, text: str, parse: Any, what: str) -> Any:
        complaint = ""
        for _ in range(ASKS):
            prompt = system + (f"\n上一次的回答不合要求：{complaint}。请重新回答。"
                               if complaint else "")
            answer, finish = await self.llm.chat(prompt, text, self.opts)
            if finish == "length":
                complaint = "the answer was cut off by the token limit"
                continue
            try:
                return parse(answer)
            except BadAnswer as exc:
                complaint = str(exc)
        raise RetryableTaskError(f"the LLM's {what} was unusable {ASKS} times: {complaint}",
                                 type="LlmBadAnswer")

    async def chapters(self, sentences: Sequence[SentenceLike]) -> list[dict[str, Any]]:
        """Chapters over windows of whole sentences; each chapter's ``start_ms`` is its
        first sentence's."""
        windows: list[tuple[int, int]] = []  # [first, end) indexes
        first = size = 0
        for i, s in enumerate(sentences):
            if size and size + len(s.text) > WINDOW_CHARS:
                windows.append((first, i))
                first, size = i, 0
            size += len(s.text) + 6
        windows.append((first, len(sentences)))

        async def window(lo: int, hi: int) -> list[dict[str, Any]]:
            prompt = CHAPTERS_PROMPT.format(first=lo + 1, last=hi)
            return await self._ask(prompt, _numbered(sentences[lo:hi], lo + 1),
                                   lambda a: parse_chapters(a, lo + 1, hi), "chapters")
        found = await asyncio.gather(*(window(lo, hi) for lo, hi in windows))
        return [{"start_ms": int(sentences[c["sentence"] - 1].start_ms), **c}
                for part in found for c in part]

    async def mindmap(self, text: str, title: str) -> dict[str, Any]:
        """An outline tree; a long transcript is outlined in parts under one centre."""
        from worker.stages.llm import split_text

        parts = split_text(text, WINDOW_CHARS)
        trees = await asyncio.gather(*(self._ask(
            MINDMAP_PROMPT, part, lambda a: parse_outline(a, title), "mind map")
            for part in parts))
        if len(trees) == 1:
            return trees[0]
        return {"title": title, "children": [t for tree in trees for t in tree["children"]]}

    async def translate(self, sentences: Sequence[SentenceLike], lang: str) -> list[str]:
        """One translation per sentence, in windows of ``TRANSLATE_LINES``; a window whose
        answer does not number its lines as its sentences is asked again in halves."""
        texts = [s.text.strip() for s in sentences]

        async def window(lo: int, hi: int) -> list[str]:
            system = TRANSLATE_PROMPT.format(language=language_name(lang), n=hi - lo)
            answer, finish = await self.llm.chat(system, _numbered(sentences[lo:hi], 1),
                                                 self.opts)
            try:
                if finish == "length":
                    raise BadAnswer("cut off by the token limit")
                return parse_lines(answer, hi - lo)
            except BadAnswer as exc:
                if hi - lo == 1:
                    raise RetryableTaskError(
                        f"the LLM's translation of sentence {lo + 1} was unusable: {exc}",
                        type="LlmBadAnswer") from None
                mid = (lo + hi) // 2
                halves = await asyncio.gather(window(lo, mid), window(mid, hi))
                return halves[0] + halves[1]
        bounds = [(lo, min(lo + TRANSLATE_LINES, len(texts)))
                  for lo in range(0, len(texts), TRANSLATE_LINES)]
        found = await asyncio.gather(*(window(lo, hi) for lo, hi in bounds))
        return [line for part in found for line in part]
