"""Where a task's files live under ``TINGJI_DATA_DIR``, and what a task is "of": the one
owner of both, for the worker (fetch, export, clean-up), the API (uploads, downloads)
and ``tingji prune``.

    uploads/<stored name>   the uploaded file (kept until the task completes or is pruned)
    work/<task id>/         downloads and the normalized audio (until the task finishes)
    results/<task id>/      result.txt / .md / .json / .srt, audio.opus (the audio kept
                            for playing along, TINGJI_KEEP_AUDIO)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def source_of(payload: dict[str, Any] | None) -> str | None:
    """The task's source as users know it: the URL, or the uploaded file's own name."""
    payload = payload or {}
    return payload.get("video_url") or (payload.get("upload") or {}).get("filename")


def title_of(task_id: str, title: str | None, payload: dict[str, Any] | None) -> str:
    """A title to show and to name files by: the page's or file's, else the task id."""
    return title or source_of(payload) or task_id


AUDIO_FILE = "audio.opus"


@dataclass(frozen=True, slots=True)
class TaskFiles:
    data_dir: Path
    task_id: str
    stored_upload: str | None = None  # the upload's generated name, for upload tasks

    @classmethod
    def of(cls, data_dir: Path, task_id: str, payload: dict[str, Any] | None) -> TaskFiles:
        upload = (payload or {}).get("upload") or {}
        return cls(data_dir, task_id, upload.get("stored_name"))

    @property
    def work(self) -> Path:
        return self.data_dir / "work" / self.task_id

    @property
    def results(self) -> Path:
        return self.data_dir / "results" / self.task_id

    @property
    def audio(self) -> Path:
        return self.results / AUDIO_FILE

    @property
    def upload(self) -> Path | None:
        return self.data_dir / "uploads" / self.stored_upload if self.stored_upload else None

    def write_results(self, files: dict[str, str]) -> list[str]:
        """``results/<task>/result.<ext>`` for each rendered format, each replaced
        atomically; their names."""
        self.results.mkdir(parents=True, exist_ok=True)
        for ext, text in files.items():
            tmp = self.results / f".result.{ext}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.results / f"result.{ext}")
        return sorted(f"result.{ext}" for ext in files)

    def remove(self, *, work: bool = True, upload: bool = False, results: bool = False
               ) -> None:
        """Delete what is asked for; what is already gone is fine."""
        if work:
            shutil.rmtree(self.work, ignore_errors=True)
        if results:
            shutil.rmtree(self.results, ignore_errors=True)
        if upload and self.upload is not None:
            self.upload.unlink(missing_ok=True)
