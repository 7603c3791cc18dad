// digitlab web demo: plain JS, no libraries, talks to the JSON API of the same server.
"use strict";

const $ = (id) => document.getElementById(id);
let MODELS = { models: [], missing: {}, noise_kinds: [] };

// --- tabs ---------------------------------------------------------------------------------------
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("nav button").forEach((x) => x.classList.toggle("active", x === b));
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.id === "tab-" + b.dataset.tab));
}));

// --- drawing pads: pointer events cover mouse, pen and touch ------------------------------------
// onChange runs while the pen moves (at most every 150 ms) and at once at pen-up; clear() drops a
// pending call, so nothing is asked about a drawing that is gone.
function makePad(canvas, onChange) {
  const ctx = canvas.getContext("2d");
  let last = null, timer = null;
  const pad = { canvas, ink: false, clear() {
    clearTimeout(timer); timer = null; last = null;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height); pad.ink = false; } };
  pad.clear();
  const at = (e) => { const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height]; };
  const line = (a, b) => { ctx.strokeStyle = "#000"; ctx.lineWidth = canvas.width / 14; ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke(); pad.ink = true; };
  canvas.addEventListener("pointerdown", (e) => { canvas.setPointerCapture(e.pointerId); last = at(e); line(last, last); e.preventDefault(); });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = at(e); line(last, p); last = p;
    if (!timer) timer = setTimeout(() => { timer = null; onChange(); }, 150);  // live, at most ~7 requests/s
  });
  const end = () => { if (last) { last = null; clearTimeout(timer); timer = null; onChange(); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  return pad;
}
const blobOf = (canvas) => new Promise((ok) => canvas.toBlob(ok, "image/png"));

// The drawing as one gray byte per pixel, base64, for the /canvas endpoints. Reading pixels takes a
// millisecond where PNG encoding (toBlob) took about a second in Chromium. Shrunk by a whole factor to
// at most SEND_SIDE px a side (bilinear at 2x = the mean of 2x2 pixels) to keep the body small; the
// server still crops to the ink and fits it to 20x20 like MNIST, so do not shrink to 28x28 here.
const SEND_SIDE = 140, shrink = document.createElement("canvas");
function grayOf(canvas) {
  const f = Math.ceil(Math.max(canvas.width, canvas.height) / SEND_SIDE);
  const w = Math.round(canvas.width / f), h = Math.round(canvas.height / f);
  shrink.width = w; shrink.height = h;  // also resets the context
  const ctx = shrink.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(canvas, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  let bytes = "";  // btoa encodes a "binary string" (one char per byte); the pads are gray, so R = gray
  for (let i = 0; i < rgba.length; i += 4) bytes += String.fromCharCode(rgba[i]);
  return { width: w, height: h, gray: btoa(bytes) };
}

// --- API ----------------------------------------------------------------------------------------
async function post(path, body, signal) {  // body: FormData (uploads) or an object (JSON)
  const json = !(body instanceof FormData);
  const r = await fetch(path, { method: "POST", signal, body: json ? JSON.stringify(body) : body,
    headers: json ? { "Content-Type": "application/json" } : {} });
  const answer = await r.json().catch(() => ({ error: `HTTP ${r.status}`, fix: "" }));
  if (!r.ok) throw new Error(answer.error + (answer.fix ? "\nfix: " + answer.fix : ""));
  return answer;
}
function showError(id, err) { const el = $(id); el.hidden = !err; el.textContent = err ? "error: " + err.message : ""; }

// Only the newest request's answer is shown: starting one aborts the one in flight (its answer would be
// stale), and cancel() (Clear) aborts it too, so no answer about an erased drawing arrives after it.
// send(signal) -> answer; the wrapper resolves to null for an answer that must not be shown.
function newest(send) {
  let current = null;
  const ask = async () => {
    current?.abort();
    const mine = current = new AbortController();
    try {
      const answer = await send(mine.signal);
      return mine === current ? answer : null;
    } catch (e) {
      if (mine.signal.aborted || mine !== current) return null;  // a stale request's failure is moot too
      throw e;
    }
  };
  ask.cancel = () => { current?.abort(); current = null; };
  return ask;
}

function drawImage(canvas, rows) {  // 28x28 values in [0,1] -> gray pixels
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(28, 28);
  rows.flat().forEach((v, i) => { const g = Math.round(255 * Math.min(1, Math.max(0, v)));
    img.data.set([g, g, g, 255], 4 * i); });
  ctx.putImageData(img, 0, 0);
}
function drawBars(el, labels, values) {
  el.replaceChildren();
  const top = values.indexOf(Math.max(...values));
  labels.forEach((label, i) => {
    const name = document.createElement("span"); name.textContent = label;
    const track = document.createElement("div");
    const bar = document.createElement("div"); bar.className = "bar" + (i === top ? " top" : "");
    bar.style.width = (100 * values[i]).toFixed(1) + "%"; track.appendChild(bar);
    const num = document.createElement("span"); num.textContent = (100 * values[i]).toFixed(1) + "%";
    el.append(name, track, num);
  });
}

// --- recognise ----------------------------------------------------------------------------------
const recSend = newest((signal) => post("/api/recognize/canvas", grayOf(recPad.canvas), signal));
function showReading(r) {  // the verdict: "7", "not sure: 1 or 7?" (with both probabilities) or "not a digit"
  const p = (x) => x.toFixed(3);
  $("rec-digit").textContent = r.message; $("rec-digit").dataset.digit = r.digit;
  $("rec-answer").dataset.abstain = r.abstain || "";
  $("rec-prob").textContent = r.abstain === "unsure"
    ? `${r.digit}: p = ${p(r.probability)}, runner-up ${r.runner_up.digit}: p = ${p(r.runner_up.probability)}`
    : r.abstain ? `best guess ${r.digit}: p = ${p(r.probability)}` : `p = ${p(r.probability)}`;
  drawBars($("rec-bars"), [...Array(10).keys()].map(String), r.probabilities);
  drawImage($("rec-input"), r.input);
}
const recPad = makePad($("rec-canvas"), async () => {
  if (!recPad.ink || MODELS.missing.recognize) return;
  try {
    const r = await recSend(); if (!r) return;
    showReading(r); showError("rec-error", null);
  } catch (e) { showError("rec-error", e); }
});
$("rec-clear").addEventListener("click", () => {
  recSend.cancel(); recPad.clear();
  $("rec-digit").textContent = "?"; delete $("rec-digit").dataset.digit; $("rec-answer").dataset.abstain = "";
  $("rec-prob").textContent = ""; $("rec-bars").replaceChildren(); drawImage($("rec-input"), Array(28).fill(Array(28).fill(0)));
  showError("rec-error", null);
});

// --- denoise ------------------------------------------------------------------------------------
let denFile = null;
const denSend = newest(async (signal) => {
  const f = new FormData();
  f.append("image", denFile || await blobOf(denPad.canvas), denFile ? denFile.name : "drawing.png");
  f.append("noise", $("den-kind").value); f.append("strength", $("den-strength").value);
  f.append("seed", $("den-seed").value || "0"); f.append("already_noisy", String(!!denFile && $("den-already").checked));
  return post("/api/denoise", f, signal);
});
async function denoise() {
  if ((!denPad.ink && !denFile) || MODELS.missing.denoise) return;
  try {
    const r = await denSend(); if (!r) return;
    drawImage($("den-clean"), r.clean || Array(28).fill(Array(28).fill(0)));
    drawImage($("den-noisy"), r.noisy); drawImage($("den-out"), r.denoised);
    $("den-found").textContent = r.kind;
    drawBars($("den-bars"), Object.keys(r.kind_probabilities), Object.values(r.kind_probabilities));
    showError("den-error", null);
  } catch (e) { showError("den-error", e); }
}
const denPad = makePad($("den-canvas"), () => { denFile = null; $("den-file").value = ""; denoise(); });
$("den-clear").addEventListener("click", () => { denSend.cancel(); denPad.clear(); denFile = null; $("den-file").value = ""; });
$("den-file").addEventListener("change", (e) => { denFile = e.target.files[0] || null; denoise(); });
["den-kind", "den-seed", "den-already"].forEach((id) => $(id).addEventListener("change", denoise));
$("den-strength").addEventListener("input", () => { $("den-strength-out").textContent = Number($("den-strength").value).toFixed(2); });
$("den-strength").addEventListener("change", denoise);

// --- compare ------------------------------------------------------------------------------------
const cmpSend = newest((signal) => post("/api/compare/canvas", { a: grayOf(padA.canvas), b: grayOf(padB.canvas) }, signal));
async function compare() {
  if (!padA.ink || !padB.ink || MODELS.missing.compare) return;
  try {
    const r = await cmpSend(); if (!r) return;
    $("cmp-prob").textContent = (100 * r.same_probability).toFixed(1) + "%";
    drawImage($("cmp-in-a"), r.a); drawImage($("cmp-in-b"), r.b); showError("cmp-error", null);
  } catch (e) { showError("cmp-error", e); }
}
const padA = makePad($("cmp-a"), compare), padB = makePad($("cmp-b"), compare);
const blank = Array(28).fill(Array(28).fill(0));
$("cmp-clear-a").addEventListener("click", () => { cmpSend.cancel(); padA.clear(); $("cmp-prob").textContent = "?"; drawImage($("cmp-in-a"), blank); });
$("cmp-clear-b").addEventListener("click", () => { cmpSend.cancel(); padB.clear(); $("cmp-prob").textContent = "?"; drawImage($("cmp-in-b"), blank); });

// --- models -------------------------------------------------------------------------------------
function showModels() {
  for (const [task, why] of Object.entries(MODELS.missing)) {
    const el = document.querySelector(`#tab-${task} .missing`);
    if (el) { el.hidden = false; el.textContent = why; }
  }
  const table = document.createElement("table");
  const head = table.insertRow(); ["task", "model", "params", "run", "runtime", "test metrics"].forEach((h) => {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th); });
  for (const m of MODELS.models) {
    const metrics = Object.entries(m.metrics).filter(([k]) => k.startsWith("test_"))
      .map(([k, v]) => `${k} ${Number(v).toPrecision(4)}`).join(", ");
    const row = table.insertRow();
    [m.task, m.model, m.params, m.name, m.runtime, metrics].forEach((v) => { row.insertCell().textContent = v ?? ""; });
  }
  for (const [task, why] of Object.entries(MODELS.missing)) {
    const row = table.insertRow(); row.insertCell().textContent = task; const c = row.insertCell(); c.colSpan = 5; c.textContent = why;
  }
  $("models").replaceChildren(table);
  $("den-kind").replaceChildren(...[...MODELS.noise_kinds, "none"].map((k) => { const o = document.createElement("option"); o.value = o.textContent = k; return o; }));
}
fetch("/api/models").then((r) => r.json()).then((m) => { MODELS = m; showModels(); })
  .catch((e) => showError("rec-error", e));
