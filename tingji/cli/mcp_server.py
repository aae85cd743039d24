"""``tingji mcp``: tingji as an MCP server, for agents (Claude Desktop, Cursor, ...).

It is a thin layer over ``tingji.client.AsyncClient``: every tool talks to the running
service over HTTP (``TINGJI_URL``, ``TINGJI_API_TOKEN``), so an agent's work is an
ordinary durable task, in the same queue and history as everything else.  Over stdio by
default; ``--http`` serves streamable HTTP on a loopback address, and acts with the
service's token for whoever connects, so: every request must carry its own bearer token
(``TINGJI_MCP_TOKEN``, or one made and printed at start), and the Host and Origin
headers must name the address it listens on (a web page that rebinds its DNS name to
loopback gets nothing).

An agent chooses the paths it sends to ``transcribe_file`` (and a prompt in a page it
read may choose for it): only audio and video files under ``TINGJI_MCP_FILE_ROOTS`` are
sent, and a missing file, one outside those folders and one that is not media get the
same answer.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import Resource as MCPResource

from tingji import __version__
from tingji.client import AsyncClient, ClientError, Task, TaskOptions, WaitTimeout
from tingji.mediafiles import allowed_media
from tingji.notes import clock
from tingji.settings import is_loopback

Format = Literal["txt", "md", "json", "srt", "vtt", "chapters", "mindmap"]
MIME = {"txt": "text/plain", "md": "text/markdown", "json": "application/json",
        "srt": "application/x-subrip", "vtt": "text/vtt", "chapters": "text/plain",
        "mindmap": "text/vnd.mermaid"}
LISTED_TRANSCRIPTS = 50  # the newest completed tasks listed as resources
MAX_WAIT_SECONDS = 3600.0

INSTRUCTIONS = """\
tingji transcribes Chinese (Mandarin) audio and video on the user's own machine:
Bilibili and other video URLs, or local audio/video files. Each transcription is a
durable task: if a tool call returns before the task has finished, the task goes on;
ask again with task_status or get_result using its task_id. Results come as plain
text, Markdown, JSON with timestamps, SRT or WebVTT subtitles."""

T = TypeVar("T")


def _brief(t: Task, with_text: bool = True) -> dict[str, Any]:
    """What an agent needs of a task: its state, and the transcript once it is done."""
    out: dict[str, Any] = {k: t.get(k) for k in ("task_id", "status", "stage", "progress",
                                                  "title", "source", "created_at",
                                                  "completed_at", "batch_id")}
    if t.get("error"):
        out["error"] = t["error"]["message"]  # type: ignore[index]
    result = t.get("result") or {}
    if result:
        out["duration_s"] = result.get("duration_s")
        if with_text:
            out["text"] = result.get("polished_text") or result.get("text") or ""
            if result.get("summary"):
                out["summary"] = result["summary"]
            chapters = [c for c in result.get("chapters") or [] if "sentence" in c]
            if chapters:
                out["chapters"] = [f"{clock(c['start_ms'])} {c['title']}" for c in chapters]
            if result.get("translation"):
                out["translation"] = result["translation"].get("text")
    if t["status"] not in ("completed", "failed", "cancelled"):
        out["note"] = ("still running: call task_status or get_result with this task_id "
                       "later")
    return out


def _options(hotwords: list[str] | None, speakers: int | Literal["auto"] | None,
             polish: bool | None, summarize: bool, notes: dict[str, Any] | None = None
             ) -> TaskOptions:
    opts: TaskOptions = {"summarize": summarize}
    for name, value in (notes or {}).items():  # chapters, mindmap, translate
        if value:
            opts[name] = value  # type: ignore[literal-required]
    if hotwords:
        opts["hotwords"] = hotwords
    if speakers is not None:
        opts["speakers"] = speakers
    if polish is not None:
        opts["polish"] = polish
    return opts


def build_server(api: Callable[[], AsyncClient], file_roots: tuple[Path, ...] = ()
                 ) -> MCPServer:
    """The MCP server; ``api`` makes a client of the tingji service (one per call)."""

    class Server(MCPServer):
        async def list_resources(self) -> list[MCPResource]:
            """The fixed resources, then the newest finished transcripts."""
            fixed = await super().list_resources()
            try:
                async with api() as tj:
                    page = await tj.tasks(status="completed", limit=LISTED_TRANSCRIPTS)
            except ClientError:
                return fixed
            return fixed + [MCPResource(
                uri=f"tingji://task/{t['task_id']}/txt",
                name=f"transcript-{t['task_id'][:8]}",
                title=t.get("title") or t.get("source") or t["task_id"],
                description=f"transcript of {t.get('source') or 'an upload'} "
                            f"(completed {t.get('completed_at')})",
                mime_type="text/plain") for t in page["tasks"]]

    server = Server("tingji", version=__version__, instructions=INSTRUCTIONS,
                    log_level="WARNING")

    async def call(work: Callable[[AsyncClient], Coroutine[Any, Any, T]]) -> T:
        try:
            async with api() as tj:
                return await work(tj)
        except ClientError as exc:
            raise ToolError(str(exc)) from None

    async def submit_and_wait(tj: AsyncClient, submitted: dict[str, Any], wait_seconds: float,
                              ctx: Context) -> dict[str, Any]:
        task_id = submitted["task_id"]
        if wait_seconds <= 0:
            return _brief(await tj.task(task_id))

        async def progress(t: Task) -> None:
            await ctx.report_progress(round(t["progress"] * 100, 1), 100,
                                      f"{t['status']} {t.get('stage') or ''}".strip())
        try:
            done = await tj.wait(task_id, timeout=min(wait_seconds, MAX_WAIT_SECONDS),
                                 interval=1.0, on_progress=progress)
        except WaitTimeout as exc:
            return _brief(exc.task)
        return _brief(done)

    @server.tool()
    async def transcribe_url(url: str, ctx: Context, hotwords: list[str] | None = None,
                             speakers: int | Literal["auto"] | None = None,
                             polish: bool | None = None, summarize: bool = False,
                             chapters: bool = False, mindmap: bool = False,
                             translate: str | None = None, parts: list[int] | None = None,
                             wait_seconds: float = 600) -> dict[str, Any]:
        """Transcribe a video or audio URL (Bilibili, YouTube, a direct media link...).

        Waits up to wait_seconds for the transcript (0: return at once); the task goes on
        either way.  hotwords: names and terms to favour; speakers: "auto" or 2-16 to
        label who speaks; chapters, mindmap, translate ("en", "ja", ...): notes the LLM
        writes; parts: which parts of a multi-part Bilibili video."""
        opts = _options(hotwords, speakers, polish, summarize,
                        {"chapters": chapters, "mindmap": mindmap, "translate": translate})
        if parts:
            opts["parts"] = parts

        async def work(tj: AsyncClient) -> dict[str, Any]:
            got = await tj.submit_url(url, **opts)
            if got.get("kind") == "list":
                return {**_brief(await tj.task(got["task_id"]), with_text=False),
                        "note": f"a list: its entries become tasks of batch "
                                f"{got.get('batch_id')}; see list_tasks"}
            return await submit_and_wait(tj, dict(got), wait_seconds, ctx)
        return await call(work)

    @server.tool()
    async def transcribe_file(path: str, ctx: Context, hotwords: list[str] | None = None,
                              speakers: int | Literal["auto"] | None = None,
                              polish: bool | None = None, summarize: bool = False,
                              chapters: bool = False, mindmap: bool = False,
                              translate: str | None = None,
                              wait_seconds: float = 600) -> dict[str, Any]:
        """Transcribe a local audio or video file (a path on this machine); it is
        uploaded to the tingji service.  Waits up to wait_seconds for the transcript."""
        file = allowed_media(path, file_roots)
        if file is None:
            where = ", ".join(map(str, file_roots)) or "none: TINGJI_MCP_FILE_ROOTS is unset"
            raise ToolError(f"{path}: not an audio or video file tingji mcp may send (it "
                            f"sends those under the folders of TINGJI_MCP_FILE_ROOTS: "
                            f"{where})")

        async def work(tj: AsyncClient) -> dict[str, Any]:
            got = await tj.submit_file(file, **_options(
                hotwords, speakers, polish, summarize,
                {"chapters": chapters, "mindmap": mindmap, "translate": translate}))
            return await submit_and_wait(tj, dict(got), wait_seconds, ctx)
        return await call(work)

    @server.tool()
    async def task_status(task_id: str) -> dict[str, Any]:
        """A task's status, stage and progress; its transcript text once completed.
        task_id may be the first 8 characters."""
        async def work(tj: AsyncClient) -> dict[str, Any]:
            return _brief(await tj.task(await tj.resolve(task_id)))
        return await call(work)

    @server.tool()
    async def get_result(task_id: str, format: Format = "txt",  # noqa: A002
                         lang: str | None = None) -> str:
        """A completed task's result: txt (plain text), md (Markdown with summary,
        chapters and mind map), json (segments with timestamps), srt or vtt (subtitles;
        lang: the translation's language or "bilingual"), chapters (one "mm:ss title"
        a line), mindmap (Mermaid)."""
        async def work(tj: AsyncClient) -> str:
            return await tj.result(await tj.resolve(task_id), format, lang)
        return await call(work)

    @server.tool()
    async def list_tasks(status: Literal["pending", "processing", "completed", "failed",
                                         "cancelled"] | None = None,
                         limit: int = 20) -> list[dict[str, Any]]:
        """Tasks, newest first, without their text (get_result has it)."""
        async def work(tj: AsyncClient) -> list[dict[str, Any]]:
            page = await tj.tasks(status, limit=max(1, min(limit, 200)))
            return [_brief(t, with_text=False) for t in page["tasks"]]
        return await call(work)

    @server.tool()
    async def cancel_task(task_id: str) -> dict[str, Any]:
        """Cancel a pending or running task."""
        async def work(tj: AsyncClient) -> dict[str, Any]:
            return await tj.cancel(await tj.resolve(task_id))
        return await call(work)

    @server.resource("tingji://task/{task_id}/{fmt}", name="transcript",
                     description="a completed task's transcript; fmt is txt, md, json, srt "
                                 "or vtt")
    async def transcript(task_id: str, fmt: str) -> str:
        if fmt not in MIME:
            raise ResourceError(f"unknown format {fmt!r}: one of {', '.join(MIME)}")
        try:
            async with api() as tj:
                return await tj.result(task_id, fmt)  # type: ignore[arg-type]
        except ClientError as exc:
            raise ResourceError(str(exc)) from None

    return server


class BearerGuard:
    """ASGI: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error": "a bearer token is required (TINGJI_MCP_TOKEN)"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="tingji-mcp"'),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def host_names(host: str, port: int) -> tuple[list[str], list[str]]:
    """The Host and Origin values a client of ``host:port`` sends: the address itself
    (IPv6 in brackets) and ``localhost`` for the usual loopback addresses."""
    ip = ipaddress.ip_address(host) if host != "localhost" else None
    names = [f"[{ip.compressed}]" if ip is not None and ip.version == 6
             else (ip.compressed if ip is not None else host)]
    if host == "localhost" or (ip is not None and ip.compressed in ("127.0.0.1", "::1")):
        names.append("localhost")
    hosts = [f"{n}:{port}" for n in names]
    return hosts, [f"http://{h}" for h in hosts]


def serve(url: str, token: str | None, *, http: bool = False, host: str = "127.0.0.1",
          port: int = 8765, mcp_token: str | None = None,
          file_roots: tuple[Path, ...] = ()) -> int:
    server = build_server(lambda: AsyncClient(url, token, timeout=120.0), file_roots)
    if not http:
        server.run("stdio")
        return 0
    if not is_loopback(host):
        raise SystemExit("tingji mcp: --http listens on loopback only (it acts with the "
                         "service's token for whoever connects)")
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    if not mcp_token:
        mcp_token = secrets.token_urlsafe(24)
        print(f"tingji mcp: clients send 'Authorization: Bearer {mcp_token}' (set "
              "TINGJI_MCP_TOKEN to choose it)", file=sys.stderr, flush=True)
    hosts, origins = host_names(host, port)
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                         allowed_hosts=hosts, allowed_origins=origins)
    app = server.streamable_http_app(transport_security=security, host=host)
    uvicorn.run(BearerGuard(app, mcp_token), host=host, port=port, log_level="warning")
    return 0
