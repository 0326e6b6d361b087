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

function follow() {
  const events = new EventSource("/api/events");
  events.addEventListener("jobs", (e) => {
    const before = new Map(jobs.map((j) => [j.id, j.state]));
    jobs = JSON.parse(e.data);
    for (const job of jobs) {  // show a result of this page's as soon as it is done, unless another is open
      if (job.state === "done" && before.get(job.id) !== "done" && inputs.has(job.id)) {
        if (!selected || !jobs.some((j) => j.id === selected && j.state === "done")) select(job.id);
        loadServer();  // what auto chose is known now
      }
    }
    if (selected && !jobs.some((j) => j.id === selected)) { selected = null; $("viewer").hidden = true; }
    render();
  });
}

function render() {
  const list = $("jobs");
  const rows = jobs.map(jobRow).concat(outbox.map(outboxRow));
  list.replaceChildren(...rows);
  $("empty").hidden = rows.length > 0;
  const waiting = jobs.filter((j) => j.state === "queued").length + outbox.filter((e) => e.state !== "failed").length;
  const running = jobs.filter((j) => j.state === "running").length;
  $("count").textContent = rows.length ? `${running} running, ${waiting} waiting` : "";
}

function jobRow(job) {
  const { unit, done, total } = job.progress;
  let state = job.state;
  if (job.state === "queued" && job.position) state = `queued #${job.position}`;
  if (job.state === "running") state = total ? `${done}/${total} ${unit}s` : "starting";
  if (job.cancel_requested && job.state === "running") state = "cancelling";
  const row = item(job.name, state, job.state, job.state === "failed" ? job.message : "",
                   job.state === "running" ? [done, total] : null);
  row.dataset.id = job.id;
  if (job.id === selected) row.classList.add("selected");
  const active = ["awaiting_input", "queued", "running"].includes(job.state);
  row.querySelector(".row").append(button(active ? "cancel" : "remove", () => fetch(`/api/jobs/${job.id}`, { method: "DELETE" })));
  if (job.state === "done") row.addEventListener("click", () => select(job.id));
  return row;
}

function outboxRow(entry) {
  const state = entry.state === "uploading" ? `uploading ${Math.round(entry.sent * 100)} %` : entry.state;
  const row = item(entry.file.name, state, entry.state === "failed" ? "failed" : "queued", entry.message,
                   entry.state === "uploading" ? [entry.sent, 1] : null);
  if (entry.state !== "uploading") {
    row.querySelector(".row").append(button("remove", () => { outbox.splice(outbox.indexOf(entry), 1); render(); }));
  }
  return row;
}

function item(name, state, kind, message, progress) {
  const row = document.createElement("li");
  row.className = `job ${kind}`;
  const line = document.createElement("div");
  line.className = "row";
  line.append(span("name", name), span("state", state));
  row.append(line);
  if (progress) {
    const bar = document.createElement("progress");
    [bar.value, bar.max] = [progress[0], progress[1] || 1];
    row.append(bar);
  }
  if (message) {
    const text = document.createElement("p");
    text.className = `message${kind === "failed" ? " bad" : ""}`;
    text.textContent = message;
    row.append(text);
  }
  return row;
}

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  return s;
}

function button(label, action) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", (e) => { e.stopPropagation(); action(); });
  return b;
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
