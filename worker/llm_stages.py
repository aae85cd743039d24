"""One task's LLM stages, each checkpointed like fetch and transcribe: polish, summary,
chapters, mind map and translation, in that order, each only where the task asks for it.

A stage is skipped, with the reason in ``result.llm``, only where it cannot run at all
(no LLM configured on this worker, an empty transcript); an LLM that fails or keeps
answering badly fails the stage as retryable, so the task is tried again and resumes
at the first stage without a checkpoint (a finished polish is never asked again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from db.models import Stage
from db.reads import Checkpoint
from worker.stages.notes import NoteWriter

if TYPE_CHECKING:
    from db.values import SegmentRow
    from worker.stages.llm import Llm, LlmOptions

# TaskRun._stage: runs a stage's body between its start and its checkpoint
RunStage = Callable[..., Awaitable[tuple[dict[str, Any], float]]]


@dataclass
class Notes:
    """What the LLM stages produced (None: not asked, or skipped) and, per stage, its
    model and tokens or why it was skipped."""

    polished: str | None = None
    summary: str | None = None
    chapters: list[dict[str, Any]] | None = None
    mindmap: dict[str, Any] | None = None
    translation: dict[str, Any] | None = None
    llm: dict[str, Any] = field(default_factory=dict)

    def tokens(self, kind: str) -> int:
        return sum(int(n.get(kind, 0)) for n in self.llm.values())


async def write_notes(run_stage: RunStage, llm: Llm | None, options: dict[str, Any],
                      cps: dict[Stage, Checkpoint], text: str, segments: Sequence[SegmentRow],
                      title: str, seconds: dict[str, float], timeout: float) -> Notes:
    """Runs the LLM stages a task's ``options`` ask for that are not checkpointed yet,
    each through ``run_stage`` (its checkpoint, events and time limit)."""
    opts = llm.options(options) if llm else None
    notes = Notes()

    async def stage(stage: Stage, key: str, produce: Callable[[LlmOptions], Awaitable[Any]]
                    ) -> Any:
        cp = cps.get(stage)
        if cp is not None:
            notes.llm[stage.value] = {k: v for k, v in cp.output.items() if k != key}
            return cp.output.get(key)
        if opts is None:
            notes.llm[stage.value] = {"skipped": "no LLM configured (TINGJI_LLM_BASE_URL)"}
            return None
        if not text.strip():
            notes.llm[stage.value] = {"skipped": "empty transcript"}
            return None
        before_in, before_out = opts.usage.tokens_in, opts.usage.tokens_out

        async def body() -> dict[str, Any]:
            assert opts is not None
            return {key: await produce(opts), "model": opts.model,
                    "tokens_in": opts.usage.tokens_in - before_in,
                    "tokens_out": opts.usage.tokens_out - before_out}
        out, seconds[stage.value] = await run_stage(stage, body, timeout=timeout)
        notes.llm[stage.value] = {k: v for k, v in out.items() if k != key}
        return out[key]

    assert llm is not None or opts is None
    if options.get("polish"):
        notes.polished = await stage(Stage.POLISH, "polished_text",
                                     lambda o: llm.polish(text, o))  # type: ignore[union-attr]
    if options.get("summarize"):
        source = notes.polished or text
        notes.summary = await stage(Stage.SUMMARIZE, "summary",
                                    lambda o: llm.summarize(source, o))  # type: ignore[union-attr]
    if options.get("chapters"):
        notes.chapters = await stage(
            Stage.CHAPTERS, "chapters",
            lambda o: NoteWriter(llm, o).chapters(segments))  # type: ignore[arg-type]
    if options.get("mindmap"):
        source = notes.polished or text
        notes.mindmap = await stage(
            Stage.MINDMAP, "mindmap",
            lambda o: NoteWriter(llm, o).mindmap(source, title))  # type: ignore[arg-type]
    if lang := options.get("translate"):
        async def translate(o: LlmOptions) -> dict[str, Any]:
            lines = await NoteWriter(llm, o).translate(segments, lang)  # type: ignore[arg-type]
            return {"lang": lang, "text": "\n".join(lines), "sentences": lines}
        notes.translation = await stage(Stage.TRANSLATE, "translation", translate)
    return notes
