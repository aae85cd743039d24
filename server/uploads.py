"""Streaming multipart uploads: the file part goes straight to
``$TINGJI_DATA_DIR/uploads/<generated name>`` chunk by chunk, never whole in memory.
Over the size limit, an empty file, or a broken request: the partial file is removed
and nothing is enqueued.  The client's file name is kept only as metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from litestar.status_codes import (
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_507_INSUFFICIENT_STORAGE,
)
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from server.errors import ApiError, bad_request
from tingji.urls import strip_control_chars

MAX_FIELD_BYTES = 64 * 1024
MAX_LIST_ITEMS = 8  # values of a repeated list field (name[])
_SAFE_SUFFIX = frozenset(".mp3 .mp4 .m4a .aac .wav .flac .ogg .opus .webm .mkv .mov .avi "
                         ".flv .wma .amr .3gp .ts .m4v .mpeg .mpg .wmv .caf .aiff".split())


@dataclass
class StoredUpload:
    path: Path
    stored_name: str
    filename: str
    content_type: str | None
    size: int
    fields: dict[str, str] = field(default_factory=dict)
    sha256: str = ""  # of the stored bytes, computed while they arrive


def too_large(limit_mb: int) -> ApiError:
    return ApiError(HTTP_413_REQUEST_ENTITY_TOO_LARGE, "too_large",
                    f"the upload is larger than the limit of {limit_mb} MB "
                    "(TINGJI_MAX_UPLOAD_MB)")


def bytes_in(folder: Path) -> int:
    """The bytes of the files in ``folder`` (the uploads waiting for their tasks)."""
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0
    return total


# room an upload must leave on the data folder's disk: its audio, the database, outputs
DISK_RESERVE_BYTES = 64 * 2**20


def disk_full(free: int | None = None, want: int | None = None) -> ApiError:
    said = f" ({free / 2**20:.0f} MB free" + (f", this upload is {want / 2**20:.0f} MB"
                                              if want else "") + ")" if free is not None else ""
    return ApiError(HTTP_507_INSUFFICIENT_STORAGE, "disk_full",
                    f"the disk holding the data folder is full{said}; nothing was stored. "
                    "Free some space (tingji prune --older-than DAYS removes old tasks' "
                    "files) and send it again", {"Retry-After": "300"})


def _free_bytes(folder: Path) -> int:
    place = folder
    while not place.exists() and place != place.parent:
        place = place.parent
    return shutil.disk_usage(place).free


class UploadGate:
    """Admits an upload before its body is read: at most ``max_concurrent`` at once
    (429), and the uploads folder plus what is arriving under ``max_pending_bytes``
    (507), each answer saying which setting bounds it; the queue's capacity is checked by
    the route, also before the body."""

    def __init__(self, folder: Path, max_concurrent: int, max_pending_bytes: int) -> None:
        self.folder, self.max_concurrent = folder, max_concurrent
        self.max_pending_bytes = max_pending_bytes
        self.active = 0
        self.reserved = 0  # bytes announced by the uploads arriving now

    @contextlib.asynccontextmanager
    async def admit(self, announced: int | None, limit: int) -> AsyncIterator[None]:
        want = min(announced, limit) if announced is not None else limit
        held = await asyncio.to_thread(bytes_in, self.folder)
        # no await from here to the increment: concurrent requests see each other
        if self.active >= self.max_concurrent:
            raise ApiError(HTTP_429_TOO_MANY_REQUESTS, "too_many_uploads",
                           f"{self.active} uploads are arriving already, the most at once "
                           "(TINGJI_MAX_CONCURRENT_UPLOADS); try again shortly",
                           {"Retry-After": "5"})
        if held + self.reserved + want > self.max_pending_bytes:
            gb = self.max_pending_bytes / 2**30
            raise ApiError(HTTP_507_INSUFFICIENT_STORAGE, "uploads_full",
                           f"the uploads waiting for their tasks hold {held / 2**30:.1f} GB, "
                           f"and this one would pass the limit of {gb:g} GB "
                           "(TINGJI_MAX_PENDING_UPLOAD_GB); try again when tasks have run",
                           {"Retry-After": "300"})
        if announced is not None:
            free = await asyncio.to_thread(_free_bytes, self.folder)
            if free - self.reserved < announced + DISK_RESERVE_BYTES:
                raise disk_full(free, announced)
        self.active += 1
        self.reserved += want
        try:
            yield
        finally:
            self.active -= 1
            self.reserved -= want


class _Receiver:
    """Callbacks for python-multipart's streaming parser."""

    def __init__(self, uploads: Path, limit: int, field_names: frozenset[str]) -> None:
        self.uploads, self.limit, self.field_names = uploads, limit, field_names
        self.fields: dict[str, str] = {}
        self.file: IO[bytes] | None = None
        self.upload: StoredUpload | None = None
        self.error: ApiError | None = None
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._field_buf = bytearray()
        self._is_file = False
        self.hash = hashlib.sha256()

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.part_begin, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished}

    def part_begin(self) -> None:
        self._headers, self._name, self._is_file = {}, None, False
        self._field_buf = bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if b"filename" not in params:
            # Known fields only, each once, checked before their data arrives: memory
            # stays bounded by (number of fields) x MAX_FIELD_BYTES.
            if name not in self.field_names:
                self.error = bad_request(f"unknown form field {name[:60]!r}; known fields: "
                                         f"file, {', '.join(sorted(self.field_names))}")
            elif name in self.fields and not (name.endswith("[]") and
                                              self.fields[name].count(",") < MAX_LIST_ITEMS - 1):
                # a list field (OpenAI's timestamp_granularities[]) repeats, a few times
                self.error = bad_request(f"{name}: given more than once")
            return
        if name != "file":
            self.error = bad_request(f"unexpected file field {name!r}; send it as 'file'")
            return
        if self.upload is not None:
            self.error = bad_request("file: send exactly one file")
            return
        self._is_file = True
        filename = params[b"filename"].decode("utf-8", "replace")
        filename = filename.replace("\\", "/").rsplit("/", 1)[-1]
        filename = strip_control_chars(filename)[:255].strip() or "upload"
        suffix = Path(filename).suffix.lower()
        stored = f"{uuid.uuid4()}{suffix if suffix in _SAFE_SUFFIX else ''}"
        ctype = self._headers.get(b"content-type")
        self.upload = StoredUpload(self.uploads / stored, stored, filename,
                                   ctype.decode("latin-1") if ctype else None, 0)
        self.file = open(self.upload.path, "xb")  # noqa: SIM115  (closed in part_end/cleanup)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error:
            return
        if self._is_file and self.file is not None and self.upload is not None:
            self.upload.size += end - start
            if self.upload.size > self.limit:
                self.error = too_large(self.limit // 2**20)
                return
            try:
                self.file.write(data[start:end])
            except OSError as exc:
                self.error = self._refused_write(exc)
                return
            self.hash.update(data[start:end])
        else:
            self._field_buf += data[start:end]
            if len(self._field_buf) > MAX_FIELD_BYTES:
                self.error = bad_request(f"{self._name}: form field too long")

    def part_end(self) -> None:
        if self._is_file and self.file is not None:
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
            except OSError as exc:
                self.error = self._refused_write(exc)
                return
            self.file.close()
            self.file = None
        elif self._name is not None and not self.error:
            try:
                value = self._field_buf.decode("utf-8")
                if self._name in self.fields:  # a repeated list field: comma-joined
                    value = f"{self.fields[self._name]},{value}"
                self.fields[self._name] = value
            except UnicodeDecodeError:
                self.error = bad_request(f"{self._name}: not UTF-8 text")

    def _refused_write(self, exc: OSError) -> ApiError:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise exc
        return disk_full()

    def cleanup(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # its buffer cannot be written: dropped
                self.file.close()
            self.file = None
        if self.upload is not None:
            self.upload.path.unlink(missing_ok=True)


async def receive_upload(content_type: str, stream: AsyncIterator[bytes], uploads: Path,
                         limit_bytes: int, field_names: frozenset[str]) -> StoredUpload:
    """Parse a multipart body as it arrives; returns the stored file and the form fields."""
    ctype, params = parse_options_header(content_type.encode("latin-1"))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise bad_request("send the file as multipart/form-data with a 'file' field",
                          code="unsupported_media_type")
    uploads.mkdir(parents=True, exist_ok=True)
    rx = _Receiver(uploads, limit_bytes, field_names)
    parser = MultipartParser(params[b"boundary"], rx.callbacks())
    try:
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
            if rx.error:
                raise rx.error
        parser.finalize()
        if rx.error:
            raise rx.error
        if rx.upload is None:
            raise bad_request("file: no file in the request (multipart field 'file')")
        if rx.upload.size == 0:
            raise bad_request("file: the uploaded file is empty")
        rx.upload.fields = rx.fields
        rx.upload.sha256 = rx.hash.hexdigest()
        return rx.upload
    except MultipartParseError as exc:
        rx.cleanup()
        raise bad_request(f"malformed multipart body: {exc}") from None
    except BaseException:
        rx.cleanup()
        raise


ORPHAN_AGE_S = 3600.0  # an upload still being written has a fresh mtime


async def sweep_orphans(uploads: Path, referenced: Callable[[], Awaitable[set[str]]], *,
                        min_age_s: float = ORPHAN_AGE_S) -> list[str]:
    """Delete uploaded files no task refers to (the API died between writing the file
    and committing its task), once they are ``min_age_s`` old.  Returns their names."""
    if not uploads.is_dir():
        return []
    cutoff = time.time() - min_age_s
    old = {p.name: p for p in uploads.iterdir() if p.is_file() and p.stat().st_mtime < cutoff}
    if not old:
        return []
    known = await referenced()
    removed = []
    for name, path in old.items():
        if name not in known:
            path.unlink(missing_ok=True)
            removed.append(name)
    return removed


async def accept_upload(request: Any, settings: Any, reads: Any, gate: UploadGate,
                        field_names: frozenset[str]) -> StoredUpload:
    """An upload route's body: refused before it is read when it is announced too large,
    when the queue is full (429, as a submission would be) or by the gate; then stored."""
    from db.errors import QueueFull

    limit = settings.max_upload_mb * 2**20
    header = request.headers.get("content-length")
    announced = int(header) if header and header.isdigit() else None
    if announced is not None and announced > limit + 2**20:
        raise too_large(settings.max_upload_mb)
    pending = (await reads.counts())["pending"]
    if pending >= settings.max_pending:
        raise QueueFull(pending, settings.max_pending, 30)
    async with gate.admit(announced, limit + 2**20):
        return await receive_upload(request.headers.get("content-type", ""), request.stream(),
                                    settings.uploads_dir, limit, field_names)
