// gpuroam worker Web UI: a compact txt2img form for the A1111-compatible API.
// Everything that comes from the server or the user is inserted as text only.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 250;

const state = { busy: false, taskId: null, pollTimer: null, polling: false, infotexts: [] };

function newTaskId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `task(${hex})`;
}

function clearChildren(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

function present(v) {
  return v !== null && v !== undefined && String(v).trim() !== "";
}

function showError(lines) {
  const box = $("error");
  clearChildren(box);
  for (const line of [].concat(lines)) {
    box.appendChild(document.createElement("p")).textContent = line;
  }
  box.hidden = false;
}

function hideError() {
  clearChildren($("error"));
  $("error").hidden = true;
}

// Turn a non-200 response into human-readable lines.
async function errorLines(resp) {
  const lines = [];
  let body = null, text = "";
  try {
    text = await resp.text();
    body = JSON.parse(text);
  } catch (_) { /* not JSON */ }

  const detail = body && (body.detail ?? body.error ?? body.message);
  if (Array.isArray(detail)) {
    for (const item of detail) {
      if (item && typeof item === "object") {
        const loc = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "body").join(".") : "";
        lines.push(loc ? `${loc}: ${item.msg}` : String(item.msg ?? JSON.stringify(item)));
      } else {
        lines.push(String(item));
      }
    }
  } else if (present(detail)) {
    lines.push(typeof detail === "string" ? detail : JSON.stringify(detail));
    if (body && present(body.errors) && body.errors !== detail) lines.push(String(body.errors));
  } else if (text.trim()) {
    lines.push(text.trim().slice(0, 500));
  }

  let head = `HTTP ${resp.status}${resp.statusText ? " " + resp.statusText : ""}`;
  if (resp.status === 503) {
    const retry = resp.headers.get("Retry-After");
    head += retry ? ` — server busy, retry after ${retry} s` : " — server busy, try again shortly";
  }
  return [head, ...lines];
}

async function loadWorkerInfo() {
  const el = $("worker-info");
  try {
    const resp = await fetch("/gpuroam/worker", { headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(String(resp.status));
    const w = await resp.json();
    const v = (x) => (present(x) ? String(x) : "n/a");
    el.textContent = `gpuroam worker — model ${v(w.model)} on ${v(w.device)}, ` +
      `region ${v(w.region)}, GPU ${v(w.gpu)}`;
    if (present(w.version)) el.title = `version ${w.version}` + (present(w.replica) ? `, replica ${w.replica}` : "");
    el.hidden = false;
  } catch (_) {
    el.hidden = true;
  }
}

async function loadSamplers() {
  const select = $("sampler");
  try {
    const resp = await fetch("/sdapi/v1/samplers", { headers: { Accept: "application/json" } });
    if (!resp.ok) return;
    const list = await resp.json();
    if (!Array.isArray(list) || list.length === 0) return;
    const current = select.value || "Euler a";
    clearChildren(select);
    for (const s of list) {
      if (!s || !present(s.name)) continue;
      select.appendChild(new Option(String(s.name), String(s.name)));
    }
    const names = Array.from(select.options, (o) => o.value);
    select.value = names.includes(current) ? current : names.includes("Euler a") ? "Euler a" : names[0];
  } catch (_) { /* keep the default option */ }
}

function setProgress(fraction, text) {
  $("progress").value = Math.max(0, Math.min(1, fraction || 0));
  $("progress-text").textContent = text;
}

async function pollProgress() {
  if (state.polling || !state.taskId) return;
  state.polling = true;
  const taskId = state.taskId;
  try {
    const resp = await fetch(`/sdapi/v1/progress?id_task=${encodeURIComponent(taskId)}`);
    if (!resp.ok || !state.busy || state.taskId !== taskId) return;
    const p = await resp.json();
    if (!state.busy || state.taskId !== taskId) return;  // finished while this poll was in flight
    const st = p.state || {};
    const parts = [];
    if (st.job_count > 1) parts.push(`Job ${Math.min((st.job_no || 0) + 1, st.job_count)}/${st.job_count}`);
    if (st.sampling_steps) parts.push(`Step ${st.sampling_step || 0}/${st.sampling_steps}`);
    parts.push(`${Math.round((p.progress || 0) * 100)}%`);
    if (p.eta_relative > 0) parts.push(`ETA ${p.eta_relative.toFixed(1)} s`);
    if (st.interrupted) parts.push("interrupting…");
    setProgress(p.progress, parts.join(" · "));
  } catch (_) { /* transient; keep polling */
  } finally {
    state.polling = false;
  }
}

function setBusy(busy) {
  state.busy = busy;
  $("generate").textContent = busy ? "Interrupt" : "Generate";
  $("generate").classList.toggle("danger", busy);
  $("txt2img").setAttribute("aria-busy", String(busy));
  if (busy) {
    state.pollTimer = setInterval(pollProgress, POLL_MS);
  } else {
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }
}

function readNumber(id, parse) {
  const v = parse($(id).value);
  return Number.isFinite(v) ? v : parse($(id).defaultValue);
}

function buildBody() {
  return {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    width: readNumber("width", parseInt),
    height: readNumber("height", parseInt),
    steps: readNumber("steps", parseInt),
    cfg_scale: readNumber("cfg_scale", parseFloat),
    seed: readNumber("seed", parseInt),
    sampler_name: $("sampler").value || "Euler a",
    batch_size: readNumber("batch_size", parseInt),
    n_iter: 1,
    force_task_id: state.taskId,
  };
}

const FINDING_GPU_MAX_MS = 20 * 60 * 1000;

// Seconds to wait before asking again when the endpoint says it is finding a GPU (the gateway's 503
// with finding_gpu: the service was asleep or lost its replicas), else null.
async function findingGpuWait(resp) {
  if (resp.status !== 503) return null;
  try {
    const body = await resp.clone().json();
    if (!body || body.finding_gpu !== true) return null;
    const seconds = Number(resp.headers.get("Retry-After") || body.retry_after_s);
    return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 60) : 5;
  } catch (_) {
    return null;
  }
}

async function generate() {
  if (state.busy) return;
  const form = $("txt2img");
  if (!form.checkValidity()) {
    form.reportValidity();
    return;
  }
  hideError();
  state.taskId = newTaskId();
  const body = buildBody();
  setBusy(true);
  setProgress(0, "Starting…");
  const started = performance.now();
  try {
    let resp;
    for (;;) {
      resp = await fetch("/sdapi/v1/txt2img", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      const wait = await findingGpuWait(resp);
      if (wait === null || performance.now() - started > FINDING_GPU_MAX_MS) break;
      const waited = Math.round((performance.now() - started) / 1000);
      setProgress(0, `Finding a GPU for this service… ${waited} s so far (seconds on one machine; ` +
        "a new cloud GPU node takes 2–15 minutes). It generates as soon as one is ready.");
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    }
    const elapsed = (performance.now() - started) / 1000;
    if (!resp.ok) {
      showError(await errorLines(resp));
      setProgress(0, "Failed");
      return;
    }
    const data = await resp.json();
    let info = {};
    try {
      info = typeof data.info === "string" ? JSON.parse(data.info) : (data.info || {});
    } catch (_) { info = {}; }
    showResult(data.images || [], info, resp.headers, elapsed);
    setProgress(1, `Done in ${elapsed.toFixed(2)} s`);
  } catch (err) {
    showError(["Request failed", String(err && err.message ? err.message : err)]);
    setProgress(0, "Failed");
  } finally {
    setBusy(false);
  }
}

async function interrupt() {
  if (!state.busy || !state.taskId) return;
  // Keep the button enabled (no focus loss); a second click simply re-sends.
  $("generate").textContent = "Interrupting…";
  try {
    await fetch(`/sdapi/v1/interrupt?id_task=${encodeURIComponent(state.taskId)}`, { method: "POST" });
  } catch (_) { /* the txt2img request will still finish */ }
}

function showResult(images, info, headers, elapsed) {
  const region = headers.get("X-Gpuroam-Region") || info.gpuroam_region;
  const gpu = headers.get("X-Gpuroam-GPU") || info.gpuroam_gpu;
  const replica = headers.get("X-Gpuroam-Replica") || info.gpuroam_replica;
  const served = [region, gpu].filter(present).map(String);
  $("served-by").textContent = served.length ? served.join(" · ") : "unknown";
  $("served-badge").title = present(replica) ? `replica ${replica}` : "";
  $("served-badge").hidden = false;

  const seeds = Array.isArray(info.all_seeds) && info.all_seeds.length ? info.all_seeds : [info.seed];
  $("seed-info").textContent = seeds.filter(present).join(", ") || "—";
  $("time-taken").textContent = `${elapsed.toFixed(2)} s`;
  state.infotexts = Array.isArray(info.infotexts) ? info.infotexts.map(String) : [];

  const gallery = $("gallery");
  clearChildren(gallery);
  if (images.length === 0) {
    const p = Object.assign(document.createElement("p"), { className: "placeholder" });
    p.textContent = "No images were returned.";
    gallery.appendChild(p);
    $("infotext").textContent = "";
    return;
  }
  images.forEach((b64, i) => {
    const btn = Object.assign(document.createElement("button"), { type: "button", className: "thumb" });
    btn.setAttribute("aria-label", `Image ${i + 1} of ${images.length}: select and view full size`);
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + b64;
    img.alt = `Generated image ${i + 1}` + (present(seeds[i]) ? `, seed ${seeds[i]}` : "");
    img.dataset.index = String(i);
    btn.appendChild(img);
    btn.addEventListener("click", () => {
      selectImage(i);
      openLightbox(img.src, img.alt);
    });
    btn.addEventListener("focus", () => selectImage(i));
    gallery.appendChild(btn);
  });
  selectImage(0);
}

function selectImage(i) {
  const thumbs = $("gallery").querySelectorAll(".thumb");
  thumbs.forEach((t, j) => t.classList.toggle("selected", j === i));
  $("infotext").textContent = state.infotexts[i] ?? state.infotexts[0] ?? "";
}

function openLightbox(src, alt) {
  const dlg = $("lightbox");
  Object.assign($("lightbox-img"), { src, alt });
  if (typeof dlg.showModal === "function") dlg.showModal();
  else window.open(src, "_blank", "noopener");
}

function init() {
  $("generate").addEventListener("click", () => (state.busy ? interrupt() : generate()));
  $("txt2img").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  for (const id of ["prompt", "negative_prompt"]) {
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        generate();
      }
    });
  }
  $("seed-random").addEventListener("click", () => { $("seed").value = "-1"; });
  const dlg = $("lightbox");
  dlg.addEventListener("click", (e) => {
    if (e.target === dlg || e.target.id === "lightbox-img") dlg.close();
  });
  loadWorkerInfo();
  loadSamplers();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
