"""Polish and summary over any OpenAI-compatible API (DeepSeek, Qwen/DashScope, vLLM,
Ollama) with the official ``openai`` client.

The client itself retries 429, 5xx, connection errors and timeouts with exponential
backoff (honouring ``Retry-After``).  Text is split at sentence ends into chunks that
fit the budget and polished concurrently (bounded by a worker-wide semaphore).  A
reply cut off by the token limit (``finish_reason == "length"``) is re-split and
polished in halves; a chunk that still cannot be polished fails the stage (retryable):
unpolished text is never passed off as polished.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from worker.errors import RetryableTaskError

POLISH_PROMPT = (
    "你是专业的中文文字编辑。下面是一段语音识别得到的文字稿。请修正错别字和同音误识别、"
    "补全和规范标点、去掉口头禅和重复，并按意思合理分段。不要增加原文没有的内容，不要删减"
    "信息，不要总结，不要加任何说明。只输出润色后的正文。"
)
# added when the transcript is labelled by speaker (a task with ``speakers``)
SPEAKERS_NOTE = (
    "文字稿每段开头的 [S1]、[S2] 等是说话人标记：保留每个标记和它所在的段落，"
    "不要合并不同说话人的段落，也不要改动标记。"
)
SPEAKER_TAG = re.compile(r"^\[S\d+\] ", re.MULTILINE)
SUMMARY_PROMPT = (
    "你是会议与课程记录助手。请用中文为下面的文字稿写一份摘要：先用一两句话概括主题，"
    "再用要点列出主要内容和结论。只输出摘要。"
)
REDUCE_PROMPT = (
    "下面是同一份长文字稿各部分的摘要。请把它们合并成一份完整、连贯的中文摘要：先概括主题，"
    "再用要点列出主要内容和结论。只输出摘要。"
)
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…\n])")


@dataclass
class LlmConfig:
    base_url: str
    api_key: str | None
    model: str
    timeout_s: float = 120.0
    max_retries: int = 4
    chunk_chars: int = 1500
    max_tokens: int = 4096
    temperature: float = 0.3


@dataclass
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    calls: int = 0

    def add(self, usage: Any) -> None:
        self.calls += 1
        if usage is not None:
            self.tokens_in += int(getattr(usage, "prompt_tokens", 0) or 0)
            self.tokens_out += int(getattr(usage, "completion_tokens", 0) or 0)


@dataclass
class LlmOptions:
    model: str
    temperature: float
    max_tokens: int
    usage: Usage = field(default_factory=Usage)


def split_text(text: str, max_chars: int) -> list[str]:
    """Chunks of whole sentences, each at most ``max_chars`` (a sentence longer than
    that is cut)."""
    chunks: list[str] = []
    cur = ""
    for sentence in (s for s in _SENTENCE_END.split(text) if s.strip()):
        while len(sentence) > max_chars:
            if cur:
                chunks.append(cur)
                cur = ""
            chunks.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        if len(cur) + len(sentence) > max_chars and cur:
            chunks.append(cur)
            cur = ""
        cur += sentence
    if cur.strip():
        chunks.append(cur)
    return chunks


class Llm:
    def __init__(self, config: LlmConfig, concurrency: int) -> None:
        from openai import AsyncOpenAI

        self.config = config
        self.client = AsyncOpenAI(base_url=config.base_url, api_key=config.api_key or "none",
                                  timeout=config.timeout_s, max_retries=config.max_retries)
        self.sem = asyncio.Semaphore(concurrency)

    def options(self, payload_options: dict[str, Any]) -> LlmOptions:
        return LlmOptions(
            model=payload_options.get("llm_model") or self.config.model,
            temperature=payload_options["temperature"]
            if payload_options.get("temperature") is not None else self.config.temperature,
            # the API refuses more; tasks queued before a lower limit was set are capped
            max_tokens=min(payload_options.get("max_tokens") or self.config.max_tokens,
                           self.config.max_tokens))

    async def chat(self, system: str, text: str, opts: LlmOptions) -> tuple[str, str]:
        import openai

        async with self.sem:
            try:
                resp = await self.client.chat.completions.create(
                    model=opts.model, temperature=opts.temperature, max_tokens=opts.max_tokens,
                    messages=[{"role": "system", "content": system},
                              {"role": "user", "content": text}])
            except openai.APIStatusError as exc:
                raise RetryableTaskError(
                    f"LLM request failed: HTTP {exc.status_code} from {self.config.base_url}: "
                    f"{str(exc.message)[:200]}", type="LlmError") from None
            except openai.APIError as exc:  # connection errors, timeouts, bad responses
                raise RetryableTaskError(f"LLM request failed: {type(exc).__name__}: "
                                         f"{str(exc)[:200]}", type="LlmError") from None
        opts.usage.add(resp.usage)
        if not resp.choices:
            raise RetryableTaskError("LLM returned no choices", type="LlmError")
        choice = resp.choices[0]
        return (choice.message.content or "").strip(), choice.finish_reason or "stop"

    async def _polish_chunk(self, chunk: str, opts: LlmOptions, depth: int = 0) -> str:
        prompt = POLISH_PROMPT + SPEAKERS_NOTE if SPEAKER_TAG.search(chunk) else POLISH_PROMPT
        out, finish = await self.chat(prompt, chunk, opts)
        if finish == "length":
            halves = split_text(chunk, max(1, len(chunk) // 2))
            if depth >= 3 or len(halves) < 2 and len(chunk) < 40:
                raise RetryableTaskError(
                    f"the LLM reply stays truncated (max_tokens={opts.max_tokens}) even for "
                    f"a {len(chunk)}-character chunk", type="LlmTruncated")
            if len(halves) < 2:
                halves = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2:]]
            parts = await asyncio.gather(*(self._polish_chunk(h, opts, depth + 1)
                                           for h in halves))
            return "".join(parts)
        if not out:
            raise RetryableTaskError("the LLM returned an empty polish", type="LlmError")
        return out

    async def polish(self, text: str, opts: LlmOptions) -> str:
        chunks = split_text(text, self.config.chunk_chars)
        parts = await asyncio.gather(*(self._polish_chunk(c, opts) for c in chunks))
        return "\n\n".join(parts)

    async def summarize(self, text: str, opts: LlmOptions) -> str:
        limit = self.config.chunk_chars * 4
        if len(text) <= limit:
            out, _ = await self.chat(SUMMARY_PROMPT, text, opts)
        else:
            parts = await asyncio.gather(*(self.chat(SUMMARY_PROMPT, c, opts)
                                           for c in split_text(text, limit)))
            out, _ = await self.chat(REDUCE_PROMPT, "\n\n".join(p for p, _ in parts), opts)
        if not out:
            raise RetryableTaskError("the LLM returned an empty summary", type="LlmError")
        return out

    async def close(self) -> None:
        await self.client.close()
