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
function makePad(canvas, onChange) {
  const ctx = canvas.getContext("2d");
  const pad = { canvas, ink: false, clear() { ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height); pad.ink = false; } };
  pad.clear();
  let last = null, timer = null;
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
  const end = () => { if (last) { last = null; onChange(); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  return pad;
}
const blobOf = (canvas) => new Promise((ok) => canvas.toBlob(ok, "image/png"));

// --- API ----------------------------------------------------------------------------------------
async function post(path, form) {
  const r = await fetch(path, { method: "POST", body: form });
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}`, fix: "" }));
  if (!r.ok) throw new Error(body.error + (body.fix ? "\nfix: " + body.fix : ""));
  return body;
}
function showError(id, err) { const el = $(id); el.hidden = !err; el.textContent = err ? "error: " + err.message : ""; }

// Responses can arrive out of order: only the newest request's answer is shown.
function latest(fn) { let n = 0; return async (...a) => { const mine = ++n; const r = await fn(...a); return mine === n ? r : null; }; }

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
const recSend = latest(async () => { const f = new FormData(); f.append("image", await blobOf(recPad.canvas), "drawing.png");
  return post("/api/recognize", f); });
const recPad = makePad($("rec-canvas"), async () => {
  if (!recPad.ink || MODELS.missing.recognize) return;
  try {
    const r = await recSend(); if (!r) return;
    $("rec-digit").textContent = r.digit; $("rec-prob").textContent = `p = ${r.probability.toFixed(3)}`;
    drawBars($("rec-bars"), [...Array(10).keys()].map(String), r.probabilities);
    drawImage($("rec-input"), r.input); showError("rec-error", null);
  } catch (e) { showError("rec-error", e); }
});
$("rec-clear").addEventListener("click", () => { recPad.clear(); $("rec-digit").textContent = "?"; $("rec-prob").textContent = "";
  $("rec-bars").replaceChildren(); drawImage($("rec-input"), Array(28).fill(Array(28).fill(0))); showError("rec-error", null); });

// --- denoise ------------------------------------------------------------------------------------
let denFile = null;
const denSend = latest(async () => {
  const f = new FormData();
  f.append("image", denFile || await blobOf(denPad.canvas), denFile ? denFile.name : "drawing.png");
  f.append("noise", $("den-kind").value); f.append("strength", $("den-strength").value);
  f.append("seed", $("den-seed").value || "0"); f.append("already_noisy", String(!!denFile && $("den-already").checked));
  return post("/api/denoise", f);
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
$("den-clear").addEventListener("click", () => { denPad.clear(); denFile = null; $("den-file").value = ""; });
$("den-file").addEventListener("change", (e) => { denFile = e.target.files[0] || null; denoise(); });
["den-kind", "den-seed", "den-already"].forEach((id) => $(id).addEventListener("change", denoise));
$("den-strength").addEventListener("input", () => { $("den-strength-out").textContent = Number($("den-strength").value).toFixed(2); });
$("den-strength").addEventListener("change", denoise);

// --- compare ------------------------------------------------------------------------------------
const cmpSend = latest(async () => { const f = new FormData();
  f.append("a", await blobOf(padA.canvas), "a.png"); f.append("b", await blobOf(padB.canvas), "b.png");
  return post("/api/compare", f); });
async function compare() {
  if (!padA.ink || !padB.ink || MODELS.missing.compare) return;
  try {
    const r = await cmpSend(); if (!r) return;
    $("cmp-prob").textContent = (100 * r.same_probability).toFixed(1) + "%";
    drawImage($("cmp-in-a"), r.a); drawImage($("cmp-in-b"), r.b); showError("cmp-error", null);
  } catch (e) { showError("cmp-error", e); }
}
const padA = makePad($("cmp-a"), compare), padB = makePad($("cmp-b"), compare);
$("cmp-clear-a").addEventListener("click", () => { padA.clear(); $("cmp-prob").textContent = "?"; });
$("cmp-clear-b").addEventListener("click", () => { padB.clear(); $("cmp-prob").textContent = "?"; });

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
