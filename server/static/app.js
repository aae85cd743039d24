/* tingji web page: submit, follow live progress (Server-Sent Events, falling back to
   polling), read and download results.  Plain JavaScript, no build step, no CDN. */
"use strict";

const I18N = {
  en: {
    token: "API token", token_hint: "TINGJI_API_TOKEN", save: "Save", submit: "Submit",
    links_label: "Links (one per line: Bilibili, b23.tv or any media URL)",
    drop: "Drop audio or video files here, or", choose: "choose files",
    polish: "Polish (LLM)", summarize: "Summary (LLM)", chapters_opt: "Chapters (LLM)",
    mindmap_opt: "Mind map (LLM)", translate_opt: "Translate (LLM)", chapters: "Chapters",
    mindmap: "Mind map", bilingual: "Bilingual SRT", chapters_stage: "chapters",
    mindmap_stage: "mind map", translate: "translating",
    no_llm: "No LLM is configured on this server (TINGJI_LLM_BASE_URL)", priority: "Priority", send: "Transcribe",
    queue: "Queue", tasks: "Tasks", all: "All", col_source: "Source", col_status: "Status",
    col_progress: "Progress", col_elapsed: "Time", waiting: "waiting", empty: "No tasks yet.", more: "More",
    back: "← All tasks", download: "Download", summary: "Summary", polished: "Polished",
    raw: "Raw transcript", subtitles: "Subtitles", history: "History", cancel: "Cancel",
    retry: "Retry", next_try: "next try", st_pending: "pending", st_processing: "processing",
    st_completed: "completed", st_failed: "failed", st_cancelled: "cancelled",
    pending: "pending", processing: "processing", completed: "completed", failed: "failed",
    cancelled: "cancelled", fetch: "fetching", transcribe: "transcribing",
    polish_stage: "polishing", summarize_stage: "summarizing", export: "exporting",
    workers: "workers", no_workers: "No worker is running: start one with `tingji worker`.",
    model_loaded: "model loaded", model_not_loaded: "model not loaded yet",
    heartbeat: "heartbeat", ago: "s ago", nothing: "Give a link or choose a file.",
    queued: "Queued", uploading: "Uploading", live_title: "live updates",
    capacity: "capacity", saved: "Token saved.", not_found: "Task not found.",
    hotwords: "Hotwords", list_parts: "List parts", choose_parts: "Parts to transcribe", reading: "Reading the page…",
    one_link: "Give exactly one link to list its parts.",
    is_list: "A list: each of its videos becomes a task of one batch.",
    list_queued: "List queued: its videos will join batch",
  },
  zh: {
    token: "API 令牌", token_hint: "TINGJI_API_TOKEN", save: "保存", submit: "提交",
    links_label: "链接（每行一个：B 站、b23.tv 或任意媒体地址）",
    drop: "把音频或视频文件拖到这里，或", choose: "选择文件",
    polish: "润色（LLM）", summarize: "摘要（LLM）", chapters_opt: "章节（LLM）",
    mindmap_opt: "思维导图（LLM）", translate_opt: "翻译（LLM）", chapters: "章节",
    mindmap: "思维导图", bilingual: "双语字幕", chapters_stage: "分章节中",
    mindmap_stage: "绘制导图中", translate: "翻译中",
    no_llm: "服务器未配置 LLM（TINGJI_LLM_BASE_URL）", priority: "优先级", send: "开始转写",
    queue: "队列", tasks: "任务", all: "全部", col_source: "来源", col_status: "状态",
    col_progress: "进度", col_elapsed: "用时", waiting: "等待", empty: "还没有任务。", more: "更多",
    back: "← 全部任务", download: "下载", summary: "摘要", polished: "润色稿",
    raw: "原始转写", subtitles: "字幕", history: "历史", cancel: "取消", retry: "重试",
    next_try: "下次尝试", st_pending: "排队中", st_processing: "处理中", st_completed: "已完成", st_failed: "失败",
    st_cancelled: "已取消", pending: "排队中", processing: "处理中", completed: "已完成",
    failed: "失败", cancelled: "已取消", fetch: "下载中", transcribe: "转写中",
    polish_stage: "润色中", summarize_stage: "摘要中", export: "导出中",
    workers: "工作进程", no_workers: "没有运行中的工作进程：请用 `tingji worker` 启动。",
    model_loaded: "模型已加载", model_not_loaded: "模型尚未加载",
    heartbeat: "心跳", ago: " 秒前", nothing: "请填写链接或选择文件。",
    queued: "已加入队列", uploading: "上传中", live_title: "实时更新",
    capacity: "容量", saved: "令牌已保存。", not_found: "找不到该任务。",
    hotwords: "热词", list_parts: "列出分 P", choose_parts: "要转写的分 P", reading: "正在读取页面…",
    one_link: "请只填写一个链接来列出分 P。",
    is_list: "这是一个列表：其中每个视频都会成为同一批次的一个任务。",
    list_queued: "列表已加入队列：其中的视频将加入批次",
  },
};
const LANG = (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
const T = (k) => I18N[LANG][k] ?? I18N.en[k] ?? k;
const $ = (sel, root = document) => root.querySelector(sel);

const state = {
  tasks: new Map(), order: [], filter: "", limit: 50, total: 0,
  lastEventId: null, sse: null, pollTimer: null, view: null, viewTask: null,
};

/* ------------------------------------------------------------------ api */
function token() { return localStorage.getItem("tingji.token") || ""; }
function authHeaders(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra;
}
async function api(path, { method = "GET", json, body } = {}) {
  const headers = authHeaders(json !== undefined ? { "Content-Type": "application/json" } : {});
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: json !== undefined ? JSON.stringify(json) : body });
  } catch (e) {
    throw new Error(LANG === "zh" ? "无法连接到 tingji 服务。" : "Cannot reach the tingji service.");
  }
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp;
}
async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body.error) return `${body.error.message} (HTTP ${resp.status})`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${resp.status}`;
}
async function getJSON(path) { return (await api(path)).json(); }

// a failure as people read it: its code (rate_limited, not_found, ...) and, for a
// pending task, when it is tried again
function errorLine(task) {
  const e = task.error;
  const code = e.code ? `[${e.code}] ` : "";
  const next = task.status === "pending" && task.next_attempt_at
    ? ` (${T("next_try")} ${new Date(task.next_attempt_at).toLocaleString()})` : "";
  return `${code}${e.message}${next}`;
}

function flash(message, kind = "error") {
  const el = $("#flash");
  el.textContent = message;
  el.className = kind === "info" ? "info" : "";
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, kind === "info" ? 3000 : 8000);
}

/* ------------------------------------------------------------------ formatting */
function stageLabel(t) {
  if (t.status !== "processing") return T(`st_${t.status}`);
  const s = t.stage || "fetch";
  return T(["polish", "summarize", "chapters", "mindmap"].includes(s) ? `${s}_stage` : s);
}
function fmtSeconds(s) {
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}`
           : `${m}:${String(r).padStart(2, "0")}`;
}
function elapsed(t) {
  // the time a task has run (since a worker first took it); a task no worker has taken
  // yet shows how long it has waited, marked as waiting, and one cancelled before it
  // ran shows none
  const now = Date.now();
  if (!t.started_at) {
    return t.status === "pending"
      ? `${T("waiting")} ${fmtSeconds((now - Date.parse(t.created_at)) / 1000)}` : "—";
  }
  const end = t.completed_at ? Date.parse(t.completed_at) : now;
  return fmtSeconds((end - Date.parse(t.started_at)) / 1000);
}
function fmtMs(ms) {
  const s = Math.floor(ms / 1000), milli = ms % 1000;
  return `${fmtSeconds(s)}.${String(milli).padStart(3, "0").slice(0, 1)}`;
}
function sourceText(t) { return t.title || t.source || t.task_id; }

/* ------------------------------------------------------------------ task list */
function upsert(task, withEvents = true) {
  const known = state.tasks.has(task.task_id);
  state.tasks.set(task.task_id, task);
  if (!known) {
    state.order.unshift(task.task_id);
    state.order.sort((a, b) => Date.parse(state.tasks.get(b).created_at) -
                                Date.parse(state.tasks.get(a).created_at));
  }
  renderRow(task);
  if (state.viewTask === task.task_id) {
    renderTaskView(task, false, withEvents).catch((e) => flash(e.message));
  }
}

function visible(task) { return !state.filter || task.status === state.filter; }

function renderRow(task) {
  const tbody = $("#tasks tbody");
  let tr = tbody.querySelector(`tr[data-id="${task.task_id}"]`);
  if (!visible(task)) { if (tr) tr.remove(); updateEmpty(); return; }
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.id = task.task_id;
    tr.innerHTML = `<td class="src"><a></a></td><td><span class="badge"></span></td>
      <td class="prog"><progress max="1" value="0"></progress><small></small></td>
      <td class="time"></td><td class="act"></td>`;
    const idx = state.order.filter((id) => visible(state.tasks.get(id))).indexOf(task.task_id);
    const rows = tbody.querySelectorAll("tr");
    tbody.insertBefore(tr, rows[idx] || null);
  }
  const a = tr.querySelector(".src a");
  a.textContent = sourceText(task);
  a.href = `#/task/${task.task_id}`;
  a.title = task.source || "";
  const badge = tr.querySelector(".badge");
  badge.textContent = T(`st_${task.status}`);
  badge.className = `badge ${task.status}`;
  const bar = tr.querySelector("progress");
  bar.value = task.status === "completed" ? 1 : task.progress;
  tr.querySelector(".prog small").textContent = task.status === "processing"
    ? `${stageLabel(task)} ${Math.round(task.progress * 100)}%`
    : (task.status === "failed" && task.error ? errorLine(task) : "")
      || (task.status === "pending" && task.error ? errorLine(task) : "");
  tr.querySelector(".time").textContent = elapsed(task);
  renderActions(tr.querySelector(".act"), task);
  updateEmpty();
}

function renderActions(cell, task) {
  // Rebuild the buttons only when they change: a button replaced under the pointer
  // (progress arrives every half second) would swallow the click.
  const key = `${task.task_id}:${task.status}:${task.cancel_requested}`;
  if (cell.dataset.key === key) return;
  cell.dataset.key = key;
  cell.replaceChildren();
  const add = (label, cls, fn) => {
    const b = document.createElement("button");
    b.textContent = T(label);
    b.className = cls;
    b.addEventListener("click", async (ev) => {
      ev.preventDefault();
      b.disabled = true;
      try { await fn(); } catch (e) { flash(e.message); } finally { b.disabled = false; }
    });
    cell.append(b);
  };
  if (task.status === "pending" || (task.status === "processing" && !task.cancel_requested)) {
    add("cancel", "cancel", async () => {
      const r = await (await api(`/api/v1/task/${task.task_id}/cancel`, { method: "POST" })).json();
      await refreshTask(r.task_id);
    });
  }
  if (task.status === "failed" || task.status === "cancelled") {
    add("retry", "retry", async () => {
      const r = await (await api(`/api/v1/task/${task.task_id}/retry`, { method: "POST" })).json();
      await refreshTask(r.task_id);
    });
  }
}

function updateEmpty() {
  $("#empty").hidden = $("#tasks tbody").children.length > 0;
  $("#more").hidden = state.order.length >= state.total;
}

async function refreshTask(id) { upsert(await getJSON(`/api/v1/task/${id}`)); }

async function loadTasks() {
  const params = new URLSearchParams({ limit: String(state.limit) });
  if (state.filter) params.set("status", state.filter);
  const page = await getJSON(`/api/v1/tasks?${params}`);
  state.total = page.total;
  const ids = new Set(page.tasks.map((t) => t.task_id));
  for (const t of page.tasks) state.tasks.set(t.task_id, t);
  state.order = [...new Set([...page.tasks.map((t) => t.task_id), ...state.order])]
    .filter((id) => ids.has(id) || state.tasks.has(id));
  state.order.sort((a, b) => Date.parse(state.tasks.get(b).created_at) -
                              Date.parse(state.tasks.get(a).created_at));
  const tbody = $("#tasks tbody");
  tbody.replaceChildren();
  for (const id of state.order) {
    const t = state.tasks.get(id);
    if (ids.has(id) || !state.filter || t.status === state.filter) renderRow(t);
  }
  updateEmpty();
}

/* ------------------------------------------------------------------ queue panel */
let llmShown = null;
function showLlm(configured) {
  // polish and summaries need an LLM on the server: without one they are off and greyed,
  // and the box says why; the first answer sets polish's default, the user's choice stays
  if (llmShown === configured) return;
  const first = llmShown === null;
  llmShown = configured;
  for (const id of ["#polish", "#summarize", "#chapters", "#mindmap", "#translate"]) {
    const box = $(id);
    box.disabled = !configured;
    box.closest("label").title = configured ? "" : T("no_llm");
    if (!configured && box.tagName === "SELECT") box.value = "";
    else if (!configured) box.checked = false;
  }
  if (configured && first) $("#polish").checked = true;
}

async function loadQueue() {
  let q;
  try { q = await getJSON("/api/v1/queue"); } catch (e) { return; }
  showLlm(q.llm);
  const counts = $("#queue-counts");
  counts.replaceChildren();
  for (const k of ["pending", "processing", "completed", "failed"]) {
    const span = document.createElement("span");
    const b = document.createElement("b");
    b.textContent = q[k];
    span.append(b, ` ${T(k)}`);
    counts.append(span);
  }
  const cap = document.createElement("span");
  cap.className = "muted";
  cap.textContent = `${T("capacity")} ${q.capacity}`;
  counts.append(cap);
  const list = $("#workers");
  list.replaceChildren();
  const alive = q.workers.filter((w) => w.alive);
  if (!alive.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = T("no_workers");
    list.append(li);
  }
  for (const w of q.workers.filter((w) => w.alive || !w.current_task_id).slice(0, 8)) {
    const li = document.createElement("li");
    const dot = document.createElement("span");
    dot.className = `dot ${w.alive ? "alive" : ""}`;
    const age = Math.round((Date.now() - Date.parse(w.heartbeat_at)) / 1000);
    li.append(dot, `${w.hostname} · pid ${w.pid} · ${T("heartbeat")} ${age}${T("ago")} · `
      + (w.model_loads ? T("model_loaded") : T("model_not_loaded")));
    list.append(li);
  }
}

/* ------------------------------------------------------------------ live updates */
function setLive(mode) {
  const el = $("#live");
  el.className = `live ${mode}`;
  el.dataset.mode = mode;
}

function startPolling() {
  if (state.pollTimer) return;
  setLive("polling");
  state.pollTimer = setInterval(async () => {
    try {
      await loadTasks();
      if (state.viewTask) await openTask(state.viewTask, false);
    } catch (_) { /* keep polling */ }
  }, 3000);
}
function stopPolling() { clearInterval(state.pollTimer); state.pollTimer = null; }

async function connectEvents(delay = 1000) {
  const controller = new AbortController();
  state.sse = controller;
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (state.lastEventId !== null) headers["Last-Event-ID"] = String(state.lastEventId);
  try {
    const resp = await fetch("/api/v1/events", { headers, signal: controller.signal });
    if (!resp.ok) throw new Error(await errorText(resp));
    stopPolling();
    setLive("on");
    delay = 1000;
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        handleEvent(block);
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
  }
  startPolling();  // the stream dropped: poll until it is back
  setTimeout(() => connectEvents(Math.min(delay * 2, 15000)), delay);
}

function handleEvent(block) {
  let event = "message", data = "", id = null;
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data += (data ? "\n" : "") + value;
    else if (field === "id") id = value;
  }
  if (id !== null && /^\d+$/.test(id)) state.lastEventId = Number(id);
  if (!data) return;
  const msg = JSON.parse(data);
  if (event === "hello") {
    if (state.lastEventId === null) state.lastEventId = msg.last_event_id;
  } else if (event === "task") {
    upsert(msg.task);
    loadQueue();
  } else if (event === "progress") {
    const t = state.tasks.get(msg.task_id);
    if (t && t.status === "processing") {
      upsert({ ...t, stage: msg.stage, progress: msg.progress, message: msg.message }, false);
    }
  }
}

/* ------------------------------------------------------------------ submit */
function chosenFiles() { return state.files || []; }
function setFiles(list) {
  state.files = [...list];
  const ul = $("#chosen");
  ul.replaceChildren(...state.files.map((f) => {
    const li = document.createElement("li");
    li.textContent = `${f.name} (${(f.size / 1048576).toFixed(1)} MB)`;
    return li;
  }));
}

function options() {
  const hotwords = $("#hotwords").value.split(/[\s,，、;；]+/).filter(Boolean);
  return {
    polish: $("#polish").checked, summarize: $("#summarize").checked,
    ...($("#chapters").checked ? { chapters: true } : {}),
    ...($("#mindmap").checked ? { mindmap: true } : {}),
    ...($("#translate").value ? { translate: $("#translate").value } : {}),
    priority: Number($("#priority").value || 0),
    ...(hotwords.length ? { hotwords } : {}),  // a form field joins them with commas
  };
}

function upload(file, opts) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file);
    for (const [k, v] of Object.entries(opts)) form.append(k, String(v));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/process/audio");
    const t = token();
    if (t) xhr.setRequestHeader("Authorization", `Bearer ${t}`);
    const bar = $("#upload-progress");
    bar.hidden = false;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
    xhr.onload = () => {
      bar.hidden = true;
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 202 || xhr.status === 200) resolve(body);  // 200: already submitted
      else reject(new Error(body && body.error ? `${file.name}: ${body.error.message}`
                                               : `${file.name}: HTTP ${xhr.status}`));
    };
    xhr.onerror = () => { bar.hidden = true; reject(new Error(`${file.name}: upload failed`)); };
    xhr.send(form);
  });
}

/* Parts of a multi-part video (or the videos of a list), read without submitting. */
async function listParts() {
  const links = $("#links").value.split(/\n/).map((s) => s.trim()).filter(Boolean);
  const box = $("#parts"), list = $("#parts-list"), note = $("#parts-note");
  box.hidden = true;
  list.replaceChildren();
  if (links.length !== 1) { note.textContent = T("one_link"); return; }
  note.textContent = T("reading");
  let doc;
  try {
    doc = await getJSON(`/api/v1/bilibili/parts?url=${encodeURIComponent(links[0])}`);
  } catch (e) { note.textContent = ""; flash(e.message); return; }
  state.partsFor = links[0];
  note.textContent = `${doc.title} (${doc.count})${doc.is_list ? ` ${T("is_list")}` : ""}`;
  if (doc.is_list) return;
  list.replaceChildren(...doc.parts.map((p) => {
    const label = document.createElement("label");
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.checked = true;
    tick.value = String(p.number);
    label.append(tick, ` P${p.number} ${p.title}${p.duration_s ? ` (${fmtSeconds(p.duration_s)})` : ""}`);
    return label;
  }));
  box.hidden = doc.parts.length < 2;
}

function chosenParts(link) {
  if ($("#parts").hidden || state.partsFor !== link) return null;
  const boxes = [...$("#parts-list").querySelectorAll("input[type=checkbox]")];
  const picked = boxes.filter((b) => b.checked).map((b) => Number(b.value));
  return picked.length === boxes.length ? null : picked;  // all: no selection needed
}

async function submit(ev) {
  ev.preventDefault();
  const links = $("#links").value.split(/\n/).map((s) => s.trim()).filter(Boolean);
  const files = chosenFiles();
  if (!links.length && !files.length) { flash(T("nothing")); return; }
  const btn = $("#submit-btn");
  btn.disabled = true;
  const opts = options();
  let queued = 0;
  try {
    if (links.length === 1) {
      const parts = chosenParts(links[0]);
      const r = await (await api("/api/v1/process/bilibili", {
        method: "POST", json: { video_url: links[0], ...opts, ...(parts ? { parts } : {}) },
      })).json();
      await refreshTask(r.task_id);
      if (r.kind === "list") flash(`${T("list_queued")} ${r.batch_id}`, "info");
      queued += 1;
      $("#parts").hidden = true;
      $("#parts-note").textContent = "";
    } else if (links.length > 1) {
      const r = await (await api("/api/v1/process/batch",
        { method: "POST", json: { urls: links, ...opts } })).json();
      for (const id of r.task_ids) await refreshTask(id);
      queued += r.task_ids.length;
    }
    if ($("#links").value.split(/\n/).map((s) => s.trim()).filter(Boolean).join("\n")
        === links.join("\n")) $("#links").value = "";  // not links typed meanwhile
    for (const f of files) {
      const r = await upload(f, opts);
      await refreshTask(r.task_id);
      queued += 1;
    }
    // files chosen while these uploaded stay chosen for the next submission
    const rest = chosenFiles().filter((f) => !files.includes(f));
    setFiles(rest);
    if (!rest.length) $("#files").value = "";
    flash(`${T("queued")}: ${queued}`, "info");
  } catch (e) {
    flash(e.message);
  } finally {
    btn.disabled = false;
  }
}

/* ------------------------------------------------------------------ task page */
async function openTask(id, full = true) {
  let task;
  try { task = await getJSON(`/api/v1/task/${id}`); } catch (e) { flash(e.message); return; }
  state.tasks.set(id, task);
  await renderTaskView(task, full);
}

async function renderTaskView(task, full, withEvents = true) {
  $("#t-title").textContent = sourceText(task);
  $("#t-source").textContent = task.source || "";
  const badge = $("#t-status");
  badge.textContent = T(`st_${task.status}`);
  badge.className = `badge ${task.status}`;
  $("#t-stage").textContent = task.status === "processing"
    ? `${stageLabel(task)} ${Math.round(task.progress * 100)}%` : "";
  $("#t-progress").value = task.status === "completed" ? 1 : task.progress;
  renderActions($("#t-actions"), task);
  const err = $("#t-error");
  err.hidden = !task.error || task.status === "completed";
  err.textContent = task.error ? errorLine(task) : "";
  const done = task.status === "completed" && task.result;
  $("#t-downloads").hidden = !done;
  $("#t-texts").hidden = !done;
  $("#t-summary-card").hidden = !(done && task.result.summary);
  $("#t-subs-card").hidden = !done;
  if (done) {
    const polished = task.result.polished_text || "";
    $("#t-polished").textContent = polished;
    $("#t-polished-col").hidden = !polished;
    $("#t-texts .columns").classList.toggle("single", !polished);
    $("#t-raw").textContent = task.result.text || "";
    $("#t-summary").textContent = task.result.summary || "";
  }
  renderNotes(done ? task.result : null);
  const justDone = Boolean(done) && state.viewDone !== true;
  state.viewDone = Boolean(done);
  if (done && (full || justDone)) {
    const segs = await getJSON(`/api/v1/task/${task.task_id}/segments`);
    state.segs = segs;
    await loadAudio(task);
    $("#t-subs").replaceChildren(...segs.map((s) => {
      const li = document.createElement("li");
      li.dataset.start = s.start_ms;
      li.addEventListener("click", () => seek(s.start_ms));
      const time = document.createElement("time");
      time.textContent = `${fmtMs(s.start_ms)} → ${fmtMs(s.end_ms)}`;
      li.append(time);
      if (s.speaker) {  // S1, S2, ... or the name given to the speaker
        const who = document.createElement("b");
        who.className = "speaker";
        who.textContent = `${s.speaker}：`;
        li.append(who);
      }
      li.append(s.text);
      if (s.translation) {  // the LLM's translation of this sentence, under it
        const tr = document.createElement("div");
        tr.className = "translation";
        tr.textContent = s.translation;
        li.append(tr);
      }
      return li;
    }));
  }
  if (withEvents) await renderEvents(task.task_id);
}

/* the kept audio (Opus) plays along: the sentence being spoken is highlighted, a click
   on a sentence or a chapter seeks to it */
async function loadAudio(task) {
  const player = $("#t-audio");
  const kept = task.result && task.result.audio;
  player.hidden = !kept;
  if (!kept || player.dataset.task === task.task_id) return;
  player.dataset.task = task.task_id;
  const path = `/api/v1/task/${task.task_id}/audio`;
  if (token()) {  // an <audio> cannot send the token: fetch it, then play the copy
    const resp = await api(path);
    player.src = URL.createObjectURL(await resp.blob());
  } else {
    player.src = path;  // the browser asks for byte ranges as it seeks
  }
}
function seek(ms) {
  const player = $("#t-audio");
  if (player.hidden) return;
  player.currentTime = ms / 1000;
  player.play().catch(() => { /* autoplay refused: the position is set all the same */ });
  highlight();
}
function highlight() {
  const ms = $("#t-audio").currentTime * 1000;
  const segs = state.segs || [];
  let at = -1;
  for (let i = 0; i < segs.length && segs[i].start_ms <= ms + 1; i++) at = i;
  const items = document.querySelectorAll("#t-subs li");
  items.forEach((li, i) => li.classList.toggle("playing", i === at));
  if (at >= 0 && items[at]) items[at].scrollIntoView({ block: "nearest" });
}

/* the mind map drawn as a tree, left to right: SVG made here (no renderer to load, and
   nothing the page's CSP would have to allow: attributes and classes, no inline style) */
function drawMindmap(tree) {
  const NS = "http://www.w3.org/2000/svg", COL = 190, ROW = 30, CHARS = 11;
  const nodes = [];
  let leaves = 0;
  (function place(node, depth) {
    const kids = node.children || [];
    const item = { node, depth, y: 0, kids: [] };
    nodes.push(item);
    if (!kids.length) { item.y = leaves++ * ROW + ROW / 2; return item; }
    item.kids = kids.map((k) => place(k, depth + 1));
    item.y = (item.kids[0].y + item.kids[item.kids.length - 1].y) / 2;
    return item;
  })(tree, 0);
  const depth = Math.max(...nodes.map((n) => n.depth)) + 1;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "mm");
  svg.setAttribute("viewBox", `0 0 ${depth * COL} ${Math.max(1, leaves) * ROW}`);
  svg.setAttribute("width", depth * COL);
  svg.setAttribute("role", "img");
  const el = (name, attrs) => {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  for (const n of nodes) {
    const x = n.depth * COL;
    for (const k of n.kids) {  // a curve from the end of this label to the child
      const x1 = x + COL - 24, x2 = k.depth * COL + 2;
      svg.append(el("path", { class: "mm-link",
        d: `M${x1},${n.y} C${x1 + 14},${n.y} ${x2 - 14},${k.y} ${x2},${k.y}` }));
    }
    const title = String(n.node.title || "");
    const label = title.length > CHARS ? `${title.slice(0, CHARS - 1)}…` : title;
    const g = el("g", { class: `mm-node mm-depth-${Math.min(n.depth, 3)}` });
    g.append(el("rect", { x: x + 2, y: n.y - 11, width: COL - 26, height: 22, rx: 6 }));
    const text = el("text", { x: x + 10, y: n.y + 4 });
    text.textContent = label;
    const tip = el("title", {});
    tip.textContent = title;
    g.append(text, tip);
    svg.append(g);
  }
  return svg;
}

function renderNotes(result) {
  // the LLM's chapters (each on a sentence) and mind map (an outline), where asked for
  const chapters = ((result && result.chapters) || []).filter((c) => "sentence" in c);
  $("#t-chapters-card").hidden = !chapters.length;
  $("#dl-chapters").hidden = !chapters.length;
  $("#t-chapters").replaceChildren(...chapters.map((c) => {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = fmtMs(c.start_ms);
    const title = document.createElement("strong");
    title.textContent = c.title;
    li.append(time, " ", title, c.summary ? ` — ${c.summary}` : "");
    li.addEventListener("click", () => seek(c.start_ms));
    return li;
  }));
  const map = result && result.mindmap;
  $("#t-mindmap-card").hidden = !map;
  $("#dl-mindmap").hidden = !map;
  const outline = (node) => {
    const li = document.createElement("li");
    li.textContent = node.title;
    if ((node.children || []).length) {
      const ul = document.createElement("ul");
      ul.append(...node.children.map(outline));
      li.append(ul);
    }
    return li;
  };
  const root = document.createElement("ul");
  root.className = "mm-outline";
  if (map) root.append(outline(map));
  $("#t-mindmap").replaceChildren(...(map ? [drawMindmap(map), root] : []));
  $("#dl-bilingual").hidden = !(result && result.translation);
}

async function renderEvents(id) {
  const events = await getJSON(`/api/v1/task/${id}/events`);
  $("#t-events tbody").replaceChildren(...events.map((e) => {
    const tr = document.createElement("tr");
    const detail = e.detail ? Object.entries(e.detail)
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ") : "";
    for (const text of [new Date(e.at).toLocaleString(), e.event,
                        e.to_status ? `${e.from_status || ""} → ${e.to_status}` : "", detail]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

async function download(fmt, lang) {
  const id = state.viewTask;
  const query = fmt ? `?format=${fmt}${lang ? `&lang=${lang}` : ""}` : "";
  const resp = await api(`/api/v1/download/${id}${query}`);
  const blob = await resp.blob();
  const disposition = resp.headers.get("Content-Disposition") || "";
  const m = disposition.match(/filename\*=UTF-8''([^;]+)/);
  const name = m ? decodeURIComponent(m[1]) : `tingji-${id.slice(0, 8)}.${fmt || "zip"}`;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

/* ------------------------------------------------------------------ routing */
async function route() {
  const m = location.hash.match(/^#\/task\/([0-9a-f-]{36})$/);
  if (m) {
    state.viewTask = m[1];
    state.viewDone = undefined;
    $("#list-view").hidden = true;
    $("#task-view").hidden = false;
    await openTask(m[1], true);
  } else {
    state.viewTask = null;
    $("#task-view").hidden = true;
    $("#list-view").hidden = false;
  }
}

function translate() {
  document.documentElement.lang = LANG === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = T(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = T(el.dataset.i18nPlaceholder);
  }
  for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = T(el.dataset.i18nTitle);
}

async function start() {
  translate();
  $("#token").value = token();
  $("#token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    localStorage.setItem("tingji.token", $("#token").value.trim());
    flash(T("saved"), "info");
    if (state.sse) state.sse.abort();
    await boot();
  });
  $("#submit-form").addEventListener("submit", submit);
  $("#parts-btn").addEventListener("click", listParts);
  $("#files").addEventListener("change", (ev) => setFiles(ev.target.files));
  const drop = $("#drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); setFiles(ev.dataTransfer.files); });
  $("#status-filter").addEventListener("change", async (ev) => {
    state.filter = ev.target.value;
    try { await loadTasks(); } catch (e) { flash(e.message); }
  });
  $("#more").addEventListener("click", async () => {
    state.limit = Math.min(500, state.limit + 50);
    try { await loadTasks(); } catch (e) { flash(e.message); }
  });
  $("#t-audio").addEventListener("timeupdate", highlight);
  $("#t-audio").addEventListener("seeked", highlight);
  for (const b of document.querySelectorAll("#t-downloads button")) {
    b.addEventListener("click", () => download(b.dataset.fmt, b.dataset.lang)
      .catch((e) => flash(e.message)));
  }
  window.addEventListener("hashchange", route);
  setInterval(() => {  // tick elapsed times of running tasks
    for (const tr of document.querySelectorAll("#tasks tbody tr")) {
      const t = state.tasks.get(tr.dataset.id);
      if (t && (t.status === "processing" || t.status === "pending")) {
        tr.querySelector(".time").textContent = elapsed(t);
      }
    }
  }, 1000);
  setInterval(loadQueue, 5000);
  await boot();
}

async function boot() {
  try {
    await loadTasks();
    await loadQueue();
  } catch (e) {
    flash(e.message);
  }
  await route();
  connectEvents();
}

start();
