// srtrt serve's page: drop files, follow the queue (server-sent events), compare and download results.
// Plain browser JavaScript, no build step and nothing fetched from elsewhere: it works offline.
"use strict";

const SUFFIXES = [".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi"];
const $ = (id) => document.getElementById(id);
const inputs = new Map();  // job id -> object URL of the file this page sent (the "before" picture)
const outbox = [];         // files not yet accepted by the server: {key, file, state, message, sent}
let jobs = [];             // the server's queue, as the last event gave it
let server = null;
let selected = null;       // job id shown in the viewer
let sending = false;
let outboxKey = 0;
let lost = false;          // the event stream is down: what the server's jobs are now is not known
const rows = new Map();    // row key (a job id, or an outbox entry's key) -> its <li>, kept across renders

// ------------------------------------------------------------------ models and limits

async function loadServer() {
  const response = await fetch("/api/server");
  if (!response.ok) return;
  server = await response.json();
  const picker = $("model");
  const current = picker.value || server.default_model;
  picker.replaceChildren(...server.models.map((m) => new Option(`${m.id}${m.kind === "embedded" ? "" : ` (${m.kind})`}`, m.id)));
  if (current) picker.value = current;
  const size = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(0)} MP` : `${n.toLocaleString("en")} pixels`);  // 5000: not "0 MP"
  const mp = server.max_pixels ? `${size(server.max_pixels)} per image or frame, ` : "";
  $("limits").textContent = `Limits: ${mp}${(server.max_upload_bytes / 2 ** 20).toFixed(0)} MiB per file.`;
  showChosen();
}

function showChosen() {
  const model = server && server.models.find((m) => m.id === $("model").value);
  if ($("backend").value !== "auto") {
    $("chosen").textContent = `Backend ${$("backend").value}, as chosen.`;
  } else if (model && model.chosen) {
    $("chosen").textContent = `auto chose: ${model.chosen}`;
  } else {
    $("chosen").textContent = "auto: the fastest backend this machine has, measured when this model first runs.";
  }
}

// ------------------------------------------------------------------ sending files

function addFiles(files) {
  const others = [];
  for (const file of files) {
    const suffix = file.name.slice(file.name.lastIndexOf(".")).toLowerCase();
    if (SUFFIXES.includes(suffix)) {
      outbox.push({ key: `local-${outboxKey++}`, file, state: "waiting", message: "", sent: 0 });
    } else {
      others.push(file.name);
    }
  }
  if (others.length) notSent(others);
  render();
  sendNext();
}

// One row for the files not sent, saying why: a folder may hold many other files (notes, sidecars).
function notSent(names) {
  const name = names.length === 1 ? names[0] : `${names.length} files not sent`;
  const which = names.length === 1 ? "" : `${names.slice(0, 5).join(", ")}${names.length > 5 ? ", …" : ""}: `;
  const message = `${which}not a supported image or video (${SUFFIXES.join(" ")})`;
  outbox.push({ key: `local-${outboxKey++}`, file: { name }, state: "failed", message, sent: 0 });
}

async function sendNext() {
  if (sending) return;
  const entry = outbox.find((e) => e.state === "waiting");
  if (!entry) return;
  sending = true;
  entry.state = "uploading";
  render();
  const xhr = await post(entry);
  sending = false;
  if (xhr && (xhr.status === 202 || xhr.status === 201)) {
    const job = JSON.parse(xhr.responseText);
    inputs.set(job.id, URL.createObjectURL(entry.file));
    outbox.splice(outbox.indexOf(entry), 1);
    jobs = jobs.filter((j) => j.id !== job.id).concat([job]);
  } else if (xhr && xhr.status === 429) {  // the queue is full: wait as long as the server says, then again
    const seconds = Number(xhr.getResponseHeader("Retry-After")) || 2;
    entry.state = "waiting";
    entry.message = `queue full, retrying in ${seconds} s`;
    render();
    setTimeout(sendNext, seconds * 1000);
    return;
  } else {
    entry.state = "failed";
    entry.message = detail(xhr);
  }
  render();
  sendNext();
}

function post(entry) {
  return new Promise((resolve) => {
    const form = new FormData();
    form.append("model", $("model").value);
    form.append("backend", $("backend").value);
    form.append("file", entry.file, entry.file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/jobs");
    xhr.upload.onprogress = (e) => { entry.sent = e.lengthComputable ? e.loaded / e.total : 0; render(); };
    xhr.onload = () => resolve(xhr);
    xhr.onerror = () => resolve(null);
    xhr.send(form);
  });
}

function detail(xhr) {
  if (!xhr) return "upload failed: the server could not be reached";
  try { return JSON.parse(xhr.responseText).detail; } catch { return `HTTP ${xhr.status}`; }
}

// Folders arrive as directory entries: read them through (readEntries gives batches until empty).
async function filesOf(dataTransfer) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const files = [];
  const walk = async (entry) => {
    if (entry.isFile) {
      files.push(await new Promise((ok, fail) => entry.file(ok, fail)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  for (const entry of entries) await walk(entry);
  return files.sort((a, b) => a.name.localeCompare(b.name));
}

// ------------------------------------------------------------------ the queue

// One event stream per browser, however many tabs show the page: over HTTP/1.1 a browser opens at most
// six connections to a server, and a stream per tab took them all (a seventh tab never loaded, uploads
// hung). The tab holding the lock follows /api/events and passes on what comes to the other tabs.
const shared = "BroadcastChannel" in window && navigator.locks ? new BroadcastChannel("srtrt-events") : null;
let latest = null;  // the last list this tab's own stream gave: for a tab opened after it

function follow() {
  if (!shared) { stream(); return; }
  shared.onmessage = (e) => {
    const {kind, data} = e.data;
    if (kind === "hello" && latest !== null) shared.postMessage({kind: "jobs", data: latest});
    else if (kind === "jobs") received(data);
    else if (kind === "lost") lostConnection();
  };
  shared.postMessage({kind: "hello"});
  navigator.locks.request("srtrt-events", () => { stream(); return new Promise(() => {}); });  // held while open
}

function stream() {
  const events = new EventSource("/api/events");
  events.onerror = () => {
    lostConnection();
    if (shared) shared.postMessage({kind: "lost"});
    // the browser retries by itself while the server cannot be reached, but gives up on one that answers an error
    if (events.readyState === EventSource.CLOSED) setTimeout(stream, 3000);
  };
  events.addEventListener("jobs", (e) => {
    latest = e.data;
    if (shared) shared.postMessage({kind: "jobs", data: e.data});
    received(e.data);
  });
}

function lostConnection() {
  if (lost) return;
  lost = true;
  notice("Connection to the server lost; jobs in progress may be gone. Trying again…");
  render();
}

function received(data) {
  const old = jobs;
  const before = new Map(jobs.map((j) => [j.id, j.state]));
  jobs = JSON.parse(data);
  if (lost) reconnected(old);
  for (const job of jobs) {  // show a result of this page's as soon as it is done, unless another is open
    if (job.state === "done" && before.get(job.id) !== "done" && inputs.has(job.id)) {
      if (!selected || !jobs.some((j) => j.id === selected && j.state === "done")) select(job.id);
      loadServer();  // what auto chose is known now
    }
  }
  if (selected && !jobs.some((j) => j.id === selected)) { selected = null; $("viewer").hidden = true; }
  render();
}

// Back after a lost connection: a server that was restarted has none of the jobs it had.
function reconnected(old) {
  lost = false;
  const gone = old.filter((o) => !jobs.some((j) => j.id === o.id)).map((o) => o.name);
  const which = `${gone.slice(0, 5).join(", ")}${gone.length > 5 ? ", …" : ""}`;
  notice(gone.length ? `Reconnected, but the server no longer has ${gone.length === 1 ? "1 job" : `${gone.length} jobs`} `
                       + `of this page (was it restarted?): ${which}` : "");
  loadServer();
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

// Rows are made once per job (or file waiting to be sent) and then updated in place: a row rebuilt on each
// event would be replaced between a mouse press and its release, and the click lost.
function render() {
  const list = $("jobs");
  const wanted = jobs.map((j) => [j.id, jobView(j)]).concat(outbox.map((e) => [e.key, outboxView(e)]));
  const keys = new Set(wanted.map(([key]) => key));
  for (const [key, row] of rows) {
    if (!keys.has(key)) { row.remove(); rows.delete(key); }
  }
  wanted.forEach(([key, view], i) => {
    if (!rows.has(key)) rows.set(key, newRow());
    const row = rows.get(key);
    update(row, view);
    if (list.children[i] !== row) list.insertBefore(row, list.children[i] ?? null);
  });
  $("empty").hidden = wanted.length > 0;
  const waiting = jobs.filter((j) => j.state === "queued").length + outbox.filter((e) => e.state !== "failed").length;
  const running = jobs.filter((j) => j.state === "running").length;
  $("count").textContent = lost ? "connection lost" : wanted.length ? `${running} running, ${waiting} waiting` : "";
}

function jobView(job) {
  const { unit, done, total } = job.progress;
  const active = ["awaiting_input", "queued", "running"].includes(job.state);
  const view = { id: job.id, name: job.name, state: job.state, kind: job.state, selected: job.id === selected,
                 message: job.state === "failed" ? job.message : "", progress: null,
                 action: { label: active ? "cancel" : "remove", run: () => fetch(`/api/jobs/${job.id}`, { method: "DELETE" }) },
                 pick: job.state === "done" ? () => select(job.id) : null };
  if (job.state === "queued" && job.position) view.state = `queued #${job.position}`;
  if (job.state === "running") {
    // a video whose container gives no frame count (Matroska, WebM) counts its frames, as `srtrt run` does
    view.state = total ? `${done}/${total} ${unit}s` : done ? `${done} ${unit}${done === 1 ? "" : "s"}` : "starting";
    view.progress = [done, total];
  }
  if (job.cancel_requested && job.state === "running") view.state = "cancelling";
  if (lost && active) Object.assign(view, { state: "unknown", kind: "lost", progress: null, action: null });
  return view;
}

function outboxView(entry) {
  const uploading = entry.state === "uploading";
  return { name: entry.file.name, state: uploading ? `uploading ${Math.round(entry.sent * 100)} %` : entry.state,
           kind: entry.state === "failed" ? "failed" : "queued", message: entry.message, selected: false,
           progress: uploading ? [entry.sent, 1] : null, pick: null,
           action: uploading ? null : { label: "remove", run: () => { outbox.splice(outbox.indexOf(entry), 1); render(); } } };
}

// A row's elements, found again by update(); what its button and a click on it do is read from its current view.
function newRow() {
  const row = document.createElement("li");
  const line = document.createElement("div");
  line.className = "row";
  const act = document.createElement("button");
  act.addEventListener("click", (e) => { e.stopPropagation(); if (row.view.action) row.view.action.run(); });
  line.append(span("name"), span("state"), act);
  row.append(line, document.createElement("progress"), document.createElement("p"));
  row.addEventListener("click", () => { if (row.view.pick) row.view.pick(); });
  return row;
}

function update(row, view) {
  row.view = view;
  row.className = `job ${view.kind}${view.selected ? " selected" : ""}`;
  if (view.id) row.dataset.id = view.id;
  const [line, bar, text] = row.children;
  const [name, state, act] = line.children;
  setText(name, view.name);
  setText(state, view.state);
  act.hidden = !view.action;
  if (view.action) setText(act, view.action.label);
  bar.hidden = !view.progress;
  if (view.progress) {
    const [done, total] = view.progress;
    bar.max = total || 1;
    if (total) bar.value = done; else bar.removeAttribute("value");  // no value: an indeterminate bar
  }
  text.className = `message${view.kind === "failed" ? " bad" : ""}`;
  text.hidden = !view.message;
  setText(text, view.message);
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function span(cls) {
  const s = document.createElement("span");
  s.className = cls;
  return s;
}

// ------------------------------------------------------------------ the viewer

function select(id) {
  const job = jobs.find((j) => j.id === id);
  if (!job || job.state !== "done") return;
  selected = id;
  $("viewer").hidden = false;
  $("viewer-name").textContent = job.result_name;
  $("download").href = `${job.result_url}?download=1`;
  $("download").setAttribute("download", job.result_name);
  const video = /\.(mp4|m4v|mkv|mov|webm|avi)$/i.test(job.result_name);
  $("compare").hidden = video;
  $("slider").hidden = video;
  $("video").hidden = !video;
  if (video) {
    $("video").src = job.result_url;
    $("viewer-size").textContent = "";
  } else {
    $("video").removeAttribute("src");
    const before = $("before");
    before.hidden = !inputs.has(id);
    if (inputs.has(id)) before.src = inputs.get(id); else before.removeAttribute("src");
    $("after").src = job.result_url;
  }
  render();
}

function layout() {
  const after = $("after");
  if (!after.naturalWidth) return;
  const zoom = $("zoom").value;
  const scale = zoom === "fit" ? Math.min(1, ($("stage").clientWidth - 4) / after.naturalWidth) : Number(zoom);
  const [w, h] = [after.naturalWidth * scale, after.naturalHeight * scale];
  for (const img of [after, $("before")]) { img.style.width = `${w}px`; img.style.height = `${h}px`; }
  $("viewer-size").textContent = `${after.naturalWidth} × ${after.naturalHeight} px`;
}

function slide() {
  const at = $("slider").value;
  $("before-clip").style.clipPath = `inset(0 ${100 - at}% 0 0)`;
  $("divider").style.left = `${at}%`;
}

function setMode() {
  const side = $("mode").value === "side";
  $("compare").classList.toggle("side", side);
  $("viewer").classList.toggle("side", side);
  $("before-clip").style.clipPath = side ? "none" : "";
  if (!side) slide();
}

// ------------------------------------------------------------------ wiring

function wire() {
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(await filesOf(e.dataTransfer));
  });
  for (const id of ["files", "folder"]) {
    $(id).addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  }
  $("model").addEventListener("change", showChosen);
  $("backend").addEventListener("change", showChosen);
  $("after").addEventListener("load", layout);
  $("before").addEventListener("error", () => { $("before").hidden = true; });  // a format this browser cannot show
  $("zoom").addEventListener("change", layout);
  $("mode").addEventListener("change", setMode);
  $("slider").addEventListener("input", slide);
  window.addEventListener("resize", () => { if ($("zoom").value === "fit") layout(); });
  slide();
}

wire();
loadServer();
follow();
