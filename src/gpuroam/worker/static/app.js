// gpuroam worker Web UI: A1111's txt2img, img2img (with inpainting), Extras and PNG Info tabs over the
// A1111-compatible API. Everything that comes from the server or the user is inserted as text only.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 250;
const TAB_TITLES = { txt2img: "txt2img", img2img: "img2img", extras: "Extras", pnginfo: "PNG Info" };

const state = {
  mode: "txt2img", busy: false, taskId: null, pollTimer: null, polling: false,
  infotexts: [], images: [], selected: 0,
  init: null, extrasSource: null, pngParameters: null,
};
const mask = { painted: false, drawing: false, last: null };

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

function placeholder(text) {
  const p = Object.assign(document.createElement("p"), { className: "placeholder" });
  p.textContent = text;
  return p;
}

function showError(lines, boxId = "error") {
  const box = $(boxId);
  clearChildren(box);
  for (const line of [].concat(lines)) {
    box.appendChild(document.createElement("p")).textContent = line;
  }
  box.hidden = false;
}

function hideError(boxId = "error") {
  clearChildren($(boxId));
  $(boxId).hidden = true;
}

function failureLines(err) {
  return ["Request failed", String(err && err.message ? err.message : err)];
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

async function getJson(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
  return resp.json();
}

function postJson(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
}

async function loadWorkerInfo() {
  const el = $("worker-info");
  try {
    const w = await getJson("/gpuroam/worker");
    const v = (x) => (present(x) ? String(x) : "n/a");
    el.textContent = `gpuroam worker — model ${v(w.model)} on ${v(w.device)}, ` +
      `region ${v(w.region)}, GPU ${v(w.gpu)}`;
    if (present(w.version)) el.title = `version ${w.version}` + (present(w.replica) ? `, replica ${w.replica}` : "");
    el.hidden = false;
  } catch (_) {
    el.hidden = true;
  }
}

// Replace a select's options with `names` (strings), keeping its choice if still offered, else `fallback`.
function fillSelect(select, names, fallback) {
  const offered = names.filter(present).map(String);
  if (offered.length === 0) return;
  const current = select.value;
  clearChildren(select);
  for (const name of offered) select.appendChild(new Option(name, name));
  select.value = offered.includes(current) ? current : offered.includes(fallback) ? fallback : offered[0];
}

const namesOf = (list) => (Array.isArray(list) ? list.map((item) => item && item.name) : []);

async function loadSamplers() {
  try {
    fillSelect($("sampler"), namesOf(await getJson("/sdapi/v1/samplers")), "Euler a");
  } catch (_) { /* keep the default option */ }
}

async function loadUpscalers() {
  try {
    const [upscalers, latent] = await Promise.all([
      getJson("/sdapi/v1/upscalers"), getJson("/sdapi/v1/latent-upscale-modes"),
    ]);
    const names = namesOf(upscalers);
    fillSelect($("hr_upscaler"), [...namesOf(latent), ...names], "Latent");
    fillSelect($("upscaler_1"), names, "Lanczos");
    fillSelect($("upscaler_2"), names, "None");
  } catch (_) { /* keep the default options */ }
}

// ---- LoRA and embedding pickers ----

// Insert `text` at the prompt's caret (at its end if it never had focus), spaced from its neighbours.
function insertIntoPrompt(text) {
  const prompt = $("prompt");
  const start = prompt.selectionStart ?? prompt.value.length;
  const end = prompt.selectionEnd ?? start;
  const before = prompt.value.slice(0, start);
  const after = prompt.value.slice(end);
  const lead = before && !/\s$/.test(before) ? " " : "";
  const trail = after && !/^\s/.test(after) ? " " : "";
  prompt.value = before + lead + text + trail + after;
  const caret = (before + lead + text).length;
  prompt.setSelectionRange(caret, caret);
}

function fillPicker(listId, names, emptyText, tokenOf) {
  const list = $(listId);
  clearChildren(list);
  if (names.length === 0) list.appendChild(placeholder(emptyText));
  for (const name of names) {
    const token = tokenOf(name);
    const chip = Object.assign(document.createElement("button"), { type: "button", className: "chip" });
    chip.textContent = name;
    chip.title = `Add ${token} to the prompt`;
    chip.addEventListener("click", () => insertIntoPrompt(token));
    list.appendChild(chip);
  }
}

async function loadNetworks() {
  const loras = getJson("/sdapi/v1/loras")
    .then((list) => fillPicker("lora-list", namesOf(list).filter(present).map(String),
      "No LoRA on this worker.", (name) => `<lora:${name}:1>`));
  const embeddings = getJson("/sdapi/v1/embeddings")
    .then((body) => fillPicker("embedding-list", Object.keys((body && body.loaded) || {}),
      "No embeddings on this worker.", (name) => name));
  const failed = (listId, what) => () => fillPicker(listId, [], `The ${what} list could not be read.`, null);
  await Promise.all([loras.catch(failed("lora-list", "LoRA")), embeddings.catch(failed("embedding-list", "embedding"))]);
}

async function refreshNetworks() {
  const button = $("networks-refresh");
  button.disabled = true;
  try {
    await Promise.allSettled([
      fetch("/sdapi/v1/refresh-loras", { method: "POST" }),
      fetch("/sdapi/v1/refresh-embeddings", { method: "POST" }),
    ]);
    await loadNetworks();
  } finally {
    button.disabled = false;
  }
}

// ---- tabs ----

function selectTab(name, focus = false) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    if (on && focus) tab.focus();
  }
  const generating = name === "txt2img" || name === "img2img";
  $("generate-panel").hidden = !generating;
  $("extras-panel").hidden = name !== "extras";
  $("pnginfo-panel").hidden = name !== "pnginfo";
  if (generating) {
    state.mode = name;
    $("generate-panel").setAttribute("aria-labelledby", `tab-${name}`);
    for (const section of document.querySelectorAll("[data-only]")) {
      const on = section.dataset.only === name;
      section.hidden = !on;
      section.disabled = !on;
    }
  }
  $("page-sub").textContent = TAB_TITLES[name];
  document.title = `gpuroam · ${TAB_TITLES[name]}`;
}

function onTabKey(e) {
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  const at = tabs.indexOf(e.target);
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[e.key];
  if (at < 0 || to === undefined) return;
  e.preventDefault();
  selectTab(tabs[(to + tabs.length) % tabs.length].dataset.tab, true);
}

// ---- images from files ----

// An image as the API wants it (base64 without the data: prefix) with its URL and natural size.
function imageFromDataUrl(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve({
      url, base64: url.slice(url.indexOf(",") + 1), width: img.naturalWidth, height: img.naturalHeight,
    });
    img.onerror = () => reject(new Error("the browser cannot read this file as an image"));
    img.src = url;
  });
}

function readImageFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  }).then(imageFromDataUrl);
}

// Calls use(image) with the file chosen in `input`, or shows why it cannot be read in `errorBox`.
function onImageChosen(input, errorBox, use) {
  input.addEventListener("change", async () => {
    const file = input.files && input.files[0];
    if (!file) return;
    hideError(errorBox);
    try {
      use(await readImageFile(file));
    } catch (err) {
      showError([`Cannot open ${file.name}`, String(err && err.message ? err.message : err)], errorBox);
    }
  });
}

// ---- img2img: the initial image and the inpainting mask painted over it ----

function setInitImage(image) {
  state.init = image;
  $("init-preview").src = image.url;
  const canvas = $("mask-canvas");
  canvas.width = image.width;  // the mask is drawn, and sent, at the image's own size; this also clears it
  canvas.height = image.height;
  $("init-stage").hidden = false;
  setMaskPainted(false);
}

function setMaskPainted(painted) {
  mask.painted = painted;
  $("inpaint-options").disabled = !painted;
  $("mask-clear").disabled = !painted;
  $("mask-status").textContent = !state.init ? "Choose an image to start from."
    : painted ? `Inpainting: the ${$("inpainting_mask_invert").value === "1" ? "unpainted" : "painted"} part ` +
      `is redrawn (mask ${state.init.width}×${state.init.height}).`
    : "img2img redraws the whole image. Paint over it to redraw only there (inpainting).";
}

function clearMask() {
  const canvas = $("mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  setMaskPainted(false);
}

// The pointer's position in mask pixels, and the brush's width there (its size is in screen pixels).
function maskPoint(e) {
  const canvas = $("mask-canvas");
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  return {
    x: (e.clientX - box.left) * scale,
    y: (e.clientY - box.top) * (canvas.height / box.height),
    brush: Number($("brush-size").value) * scale,
  };
}

function paint(e) {
  const ctx = $("mask-canvas").getContext("2d");
  const p = maskPoint(e);
  ctx.fillStyle = ctx.strokeStyle = "#fff";
  ctx.beginPath();
  if (mask.last) {
    ctx.lineWidth = p.brush;
    ctx.lineCap = "round";
    ctx.moveTo(mask.last.x, mask.last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
  } else {
    ctx.arc(p.x, p.y, p.brush / 2, 0, 2 * Math.PI);
    ctx.fill();
  }
  mask.last = p;
  if (!mask.painted) setMaskPainted(true);
}

function initMaskPainting() {
  const canvas = $("mask-canvas");
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    mask.drawing = true;
    mask.last = null;
    paint(e);
  });
  canvas.addEventListener("pointermove", (e) => { if (mask.drawing) paint(e); });
  for (const end of ["pointerup", "pointercancel", "lostpointercapture"]) {
    canvas.addEventListener(end, () => { mask.drawing = false; mask.last = null; });
  }
  $("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = $("brush-size").value; });
  $("mask-clear").addEventListener("click", clearMask);
  $("inpainting_mask_invert").addEventListener("change", () => setMaskPainted(mask.painted));
}

// The mask as A1111 takes it: a PNG of the initial image's size, white where the image is redrawn.
function maskBase64() {
  const painted = $("mask-canvas");
  const out = Object.assign(document.createElement("canvas"), { width: painted.width, height: painted.height });
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(painted, 0, 0);
  const url = out.toDataURL("image/png");
  return url.slice(url.indexOf(",") + 1);
}

// ---- txt2img and img2img ----

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
  $("generate-form").setAttribute("aria-busy", String(busy));
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

function buildBody(mode) {
  const body = {
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
    tiling: $("tiling").checked,
    force_task_id: state.taskId,
  };
  if (mode === "txt2img" && $("enable_hr").checked) {
    Object.assign(body, {
      enable_hr: true,
      hr_upscaler: $("hr_upscaler").value,
      hr_scale: readNumber("hr_scale", parseFloat),
      hr_second_pass_steps: readNumber("hr_second_pass_steps", parseInt),
      denoising_strength: readNumber("hr_denoising_strength", parseFloat),
      hr_resize_x: readNumber("hr_resize_x", parseInt),
      hr_resize_y: readNumber("hr_resize_y", parseInt),
    });
  }
  if (mode === "img2img") {
    Object.assign(body, {
      init_images: [state.init.base64],
      denoising_strength: readNumber("denoising_strength", parseFloat),
      resize_mode: readNumber("resize_mode", parseInt),
    });
    if (mask.painted) {
      Object.assign(body, {
        mask: maskBase64(),
        mask_blur: readNumber("mask_blur", parseInt),
        inpainting_fill: readNumber("inpainting_fill", parseInt),
        inpaint_full_res: $("inpaint_full_res").value === "true",
        inpaint_full_res_padding: readNumber("inpaint_full_res_padding", parseInt),
        inpainting_mask_invert: readNumber("inpainting_mask_invert", parseInt),
      });
    }
  }
  return body;
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
  const form = $("generate-form");
  if (!form.checkValidity()) {
    form.reportValidity();
    return;
  }
  const mode = state.mode;
  if (mode === "img2img" && !state.init) {
    showError(["No initial image", "Choose an image file for img2img first."]);
    return;
  }
  hideError();
  state.taskId = newTaskId();
  const body = buildBody(mode);
  setBusy(true);
  setProgress(0, "Starting…");
  const started = performance.now();
  try {
    let resp;
    for (;;) {
      resp = await postJson(`/sdapi/v1/${mode}`, body);
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
    showError(failureLines(err));
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
  } catch (_) { /* the generation request will still finish */ }
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
  state.images = images.map(String);
  $("result-actions").hidden = images.length === 0;

  const gallery = $("gallery");
  clearChildren(gallery);
  if (images.length === 0) {
    gallery.appendChild(placeholder("No images were returned."));
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
  state.selected = i;
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

// Hand the selected result to another tab, as A1111's "Send to" buttons do.
async function sendSelected(tab, fileInput, use) {
  const b64 = state.images[state.selected];
  if (!present(b64)) return;
  use(await imageFromDataUrl("data:image/png;base64," + b64));
  $(fileInput).value = "";  // the image is no longer the file chosen there
  selectTab(tab, true);
}

// ---- Extras ----

function setExtrasSource(image) {
  state.extrasSource = image;
  Object.assign($("extras-source"), { src: image.url, hidden: false });
}

function onExtrasModeChange() {
  const to = $("extras-resize-mode").value === "1";
  for (const [id, on] of [["extras-by", !to], ["extras-to", to]]) {
    $(id).hidden = !on;
    $(id).disabled = !on;
  }
}

// A1111's html_info is HTML (the worker escapes what it puts in it); the page shows it as text.
function htmlInfoText(html) {
  const entities = { "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#x27;": "'", "&#39;": "'", "&amp;": "&" };
  return String(html).replace(/<br\s*\/?>\n?/gi, "\n").replace(/<[^>]*>/g, "")
    .replace(/&(?:lt|gt|quot|#x27|#39|amp);/g, (e) => entities[e]).trim();
}

async function runExtras() {
  const form = $("extras-form");
  if (!form.checkValidity()) {
    form.reportValidity();
    return;
  }
  if (!state.extrasSource) {
    showError(["No source image", "Choose an image file to upscale first."], "extras-error");
    return;
  }
  hideError("extras-error");
  const button = $("extras-run");
  button.disabled = true;
  button.textContent = "Upscaling…";
  try {
    const resp = await postJson("/sdapi/v1/extra-single-image", {
      image: state.extrasSource.base64,
      resize_mode: readNumber("extras-resize-mode", parseInt),
      upscaling_resize: readNumber("upscaling_resize", parseFloat),
      upscaling_resize_w: readNumber("upscaling_resize_w", parseInt),
      upscaling_resize_h: readNumber("upscaling_resize_h", parseInt),
      upscaling_crop: $("upscaling_crop").checked,
      upscaler_1: $("upscaler_1").value,
      upscaler_2: $("upscaler_2").value,
      extras_upscaler_2_visibility: readNumber("upscaler_2_visibility", parseFloat),
    });
    if (!resp.ok) {
      showError(await errorLines(resp), "extras-error");
      return;
    }
    const data = await resp.json();
    const result = await imageFromDataUrl("data:image/png;base64," + String(data.image || ""));
    const img = Object.assign(document.createElement("img"), {
      src: result.url, alt: `Upscaled image, ${result.width}×${result.height}`,
    });
    const link = Object.assign(document.createElement("a"), {
      href: result.url, download: "extras.png", className: "thumb", title: "Download the upscaled image",
    });
    link.appendChild(img);
    clearChildren($("extras-result"));
    $("extras-result").appendChild(link);
    $("extras-info").textContent = [`${result.width}×${result.height} px`, htmlInfoText(data.html_info || "")]
      .filter(present).join("\n");
  } catch (err) {
    showError(failureLines(err), "extras-error");
  } finally {
    button.disabled = false;
    button.textContent = "Upscale";
  }
}

// ---- PNG Info ----

async function readPngInfo(image) {
  Object.assign($("pnginfo-source"), { src: image.url, hidden: false });
  $("pnginfo-status").textContent = "Reading…";
  $("pnginfo-status").hidden = false;
  $("pnginfo-text").textContent = "";
  clearChildren($("pnginfo-items"));
  $("pnginfo-send").hidden = true;
  state.pngParameters = null;
  try {
    const resp = await postJson("/sdapi/v1/png-info", { image: image.base64 });
    if (!resp.ok) {
      $("pnginfo-status").hidden = true;
      showError(await errorLines(resp), "pnginfo-error");
      return;
    }
    const data = await resp.json();
    const info = String(data.info || "");
    $("pnginfo-text").textContent = info;
    const items = Object.entries(data.items || {});
    for (const [key, value] of items) {
      const row = $("pnginfo-items").appendChild(document.createElement("div"));
      row.appendChild(document.createElement("dt")).textContent = key;
      row.appendChild(document.createElement("dd")).textContent = String(value);
    }
    $("pnginfo-status").textContent = "This image carries no generation parameters.";
    $("pnginfo-status").hidden = present(info) || items.length > 0;
    if (present(info)) {
      state.pngParameters = data.parameters || {};
      $("pnginfo-send").hidden = false;
    }
  } catch (err) {
    $("pnginfo-status").hidden = true;
    showError(failureLines(err), "pnginfo-error");
  }
}

// Fill the txt2img form from an image's parameters (A1111's keys), as A1111's "Send to txt2img" does.
function sendParametersToTxt2img() {
  const p = state.pngParameters || {};
  const fields = {
    prompt: p.Prompt, negative_prompt: p["Negative prompt"], steps: p.Steps, cfg_scale: p["CFG scale"],
    seed: p.Seed, width: p["Size-1"], height: p["Size-2"],
  };
  for (const [id, value] of Object.entries(fields)) {
    if (value !== undefined && value !== null) $(id).value = String(value);
  }
  if (Array.from($("sampler").options, (o) => o.value).includes(p.Sampler)) $("sampler").value = p.Sampler;
  $("tiling").checked = String(p.Tiling) === "True";
  selectTab("txt2img", true);
}

function init() {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener("click", () => selectTab(tab.dataset.tab));
    tab.addEventListener("keydown", onTabKey);
  }
  $("generate").addEventListener("click", () => (state.busy ? interrupt() : generate()));
  $("generate-form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  for (const id of ["prompt", "negative_prompt"]) {
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        generate();
      }
    });
  }
  $("seed-random").addEventListener("click", () => { $("seed").value = "-1"; });
  $("enable_hr").addEventListener("change", () => {
    $("hr-options").hidden = !$("enable_hr").checked;
    $("hr-options").disabled = !$("enable_hr").checked;
  });
  $("networks-refresh").addEventListener("click", refreshNetworks);
  onImageChosen($("init-file"), "error", setInitImage);
  initMaskPainting();
  $("send-img2img").addEventListener("click", () => sendSelected("img2img", "init-file", setInitImage));
  $("send-extras").addEventListener("click", () => sendSelected("extras", "extras-file", setExtrasSource));

  onImageChosen($("extras-file"), "extras-error", setExtrasSource);
  $("extras-resize-mode").addEventListener("change", onExtrasModeChange);
  $("extras-run").addEventListener("click", runExtras);
  $("extras-form").addEventListener("submit", (e) => { e.preventDefault(); runExtras(); });

  onImageChosen($("pnginfo-file"), "pnginfo-error", readPngInfo);
  $("pnginfo-send").addEventListener("click", sendParametersToTxt2img);

  const dlg = $("lightbox");
  dlg.addEventListener("click", (e) => {
    if (e.target === dlg || e.target.id === "lightbox-img") dlg.close();
  });
  loadWorkerInfo();
  loadSamplers();
  loadUpscalers();
  loadNetworks();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
