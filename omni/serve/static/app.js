// omni page: choose a task, an input and one or two plans; stream each run (NDJSON from
// POST /v1/unroll/stream) and draw every workspace step as it arrives. No libraries, no build step.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
};
const SVG = "http://www.w3.org/2000/svg";  // the SVG namespace (an identifier, nothing is fetched)
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

const state = { plans: null, primitives: [], running: 0 };

// ---------------------------------------------------------------------------------------------------
// setup

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function init() {
  try {
    const [plans, prims] = await Promise.all([getJSON("/v1/plans"), getJSON("/v1/primitives")]);
    state.plans = plans;
    state.primitives = prims;
  } catch (e) {
    $("#health").textContent = `cannot reach the API: ${e.message}`;
    $("#health").classList.add("bad");
    return;
  }
  const task = $("#task");
  for (const t of Object.keys(state.plans.tasks)) task.append(el("option", { value: t, text: t }));
  task.value = "spatial";
  // the world's revisions, as the API lists them: 1 (what the shipped model was trained on) first
  for (const r of state.plans.world_revisions) {
    $("#world-revision").append(el("option", { value: String(r), text: r === 1 ? "world revision 1" : `world revision ${r} (mended)` }));
  }
  task.addEventListener("change", onTask);
  for (const r of document.querySelectorAll("input[name=source]")) r.addEventListener("change", onSource);
  $("#compare").addEventListener("change", () => { $("#plan-b-box").hidden = !$("#compare").checked; });
  for (const c of ["a", "b"]) {
    $(`#plan-${c}`).addEventListener("change", () => { $(`#custom-${c}`).hidden = $(`#plan-${c}`).value !== "__custom"; });
  }
  $("#seed-random").addEventListener("click", () => {
    $("#seed").value = 2000000000 + Math.floor(Math.random() * 1000000);
  });
  $("#controls").addEventListener("submit", (ev) => { ev.preventDefault(); run(); });
  $("#results").append(el("div", { class: "empty-state", text: "Choose a task and a plan, then Run." }));
  onTask();
  onSource();
  health();
  setInterval(health, 5000);
}

async function health() {
  const h = $("#health");
  try {
    const j = await getJSON("/healthz");
    const q = j.queue;
    h.textContent = `model ${j.model.checkpoint} (${j.model.preset}, ${(j.model.parameters / 1e6).toFixed(2)} M params)` +
      ` · queue ${q.running} running, ${q.waiting} waiting of ${q.capacity}`;
    h.classList.remove("bad");
  } catch (e) {
    h.textContent = "server unreachable";
    h.classList.add("bad");
  }
}

function onSource() {
  const upload = $("#source-upload").checked;
  $("#seed-box").hidden = upload;
  $("#upload-box").hidden = !upload;
}

function onTask() {
  const t = $("#task").value;
  const spec = state.plans.tasks[t];
  // image slots and the text field for uploads
  const slots = $("#image-slots");
  slots.replaceChildren();
  for (const name of spec.images) {
    slots.append(el("label", { for: `img-${name}`, text: `image: ${name} (PNG/JPEG, ≤ 512²)` }),
      el("input", { type: "file", id: `img-${name}`, accept: "image/png,image/jpeg", "data-slot": name }));
  }
  const text = $("#text");
  $("#text-label").textContent = spec.text ? spec.text : "(this task takes no text)";
  text.disabled = !spec.text;
  // plans: presets, default, custom
  for (const c of ["a", "b"]) {
    const sel = $(`#plan-${c}`);
    sel.replaceChildren();
    sel.append(el("option", { value: "default", text: `default: ${spec.default.join(", ") || "direct"}` }));
    for (const [name, steps] of Object.entries(spec.presets)) {
      sel.append(el("option", { value: name, text: `${name}: ${steps.join(", ") || "(no context)"}` }));
    }
    sel.append(el("option", { value: "__custom", text: "custom…" }));
    $(`#custom-${c}`).hidden = true;
    const chips = $(`#chips-${c}`);
    chips.replaceChildren();
    for (const p of state.primitives.filter((p) => p.tasks.includes(t))) {
      const b = el("button", { type: "button", class: "chip", title: p.description, text: p.name });
      b.addEventListener("click", () => {
        sel.value = "__custom";
        const box = $(`#custom-${c}`);
        box.hidden = false;
        box.value = box.value.trim() ? `${box.value.trim()},${p.name}` : p.name;
      });
      chips.append(b);
    }
  }
  // a sensible comparison: the first preset (no context) against the default plan
  const names = Object.keys(spec.presets);
  $("#plan-b").value = names.length ? names[0] : "default";
}

function planOf(c) {
  const v = $(`#plan-${c}`).value;
  return v === "__custom" ? $(`#custom-${c}`).value : v;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);  // a data: URL; the server accepts the prefix
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

async function inputBody() {
  const t = $("#task").value;
  const body = { task: t };
  // a sampling field left empty is left out, so the server's default applies (an empty visual
  // temperature was sent as 0: greedy visual tokens, not the default 1)
  for (const [id, key] of [["sample-seed", "sample_seed"], ["temperature", "temperature"],
      ["visual-temperature", "visual_temperature"], ["visual-top-k", "visual_top_k"],
      ["flow-shift", "flow_shift"], ["cfg-scale", "cfg_scale"]]) {
    if ($("#" + id).value !== "") body[key] = Number($("#" + id).value);
  }
  if ($("#source-seed").checked) {
    body.seed = Number($("#seed").value);
    body.world_revision = Number($("#world-revision").value);
    return body;
  }
  const images = {};
  for (const inp of document.querySelectorAll("#image-slots input[type=file]")) {
    if (inp.files.length) images[inp.dataset.slot] = await readFile(inp.files[0]);
  }
  if (Object.keys(images).length) body.images = images;
  if (state.plans.tasks[t].text) body.text = $("#text").value;
  return body;
}

// ---------------------------------------------------------------------------------------------------
// running

async function run() {
  const button = $("#run");
  let body;
  try {
    body = await inputBody();
  } catch (e) {
    alert(`cannot read the image: ${e}`);
    return;
  }
  const cols = [["A", planOf("a")]];
  if ($("#compare").checked) cols.push(["B", planOf("b")]);
  const results = $("#results");
  results.replaceChildren();
  button.disabled = true;
  await Promise.all(cols.map(([tag, plan]) => {
    const col = newColumn(tag, plan);
    results.append(col.root);
    return stream({ ...body, plan }, col);
  }));
  button.disabled = false;
  health();
}

function newColumn(tag, plan) {
  const root = $("#column-template").content.firstElementChild.cloneNode(true);
  root.dataset.col = tag;
  $(".col-tag", root).textContent = tag;
  $(".col-plan", root).textContent = plan;
  const col = { root, cards: $(".cards", root), status: $(".status", root), summary: $(".summary", root),
    tokens: 0 };
  setStatus(col, "sending…");
  return col;
}

function setStatus(col, text, cls = "") {
  col.status.textContent = text;
  col.status.className = `status ${cls}`;
  col.root.dataset.status = cls || "running";
}

async function stream(body, col) {
  let resp;
  try {
    resp = await fetch("/v1/unroll/stream", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
  } catch (e) {
    return showError(col, "network", String(e));
  }
  if (!resp.ok) {
    const j = await resp.json().catch(() => null);
    const err = j && j.error ? j.error : { code: `HTTP ${resp.status}`, message: resp.statusText };
    return showError(col, `${resp.status} ${err.code}`, err.message);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim()) onEvent(JSON.parse(line), col);
    }
  }
  if (col.root.dataset.status === "running") setStatus(col, "stream ended early", "error");
}

function onEvent(ev, col) {
  switch (ev.event) {
    case "queued":
      setStatus(col, ev.position ? `queued (${ev.position} ahead)` : "starting…");
      break;
    case "start":
      col.input = ev.input;
      col.root.dataset.runId = ev.run_id;
      $(".col-plan", col.root).textContent = ev.plan.length ? ev.plan.join(" → ") : "direct (no context)";
      setStatus(col, "running…");
      break;
    case "step":
    case "output":
      col.tokens += ev.step.tokens;
      col.cards.append(stepCard(ev.step, col));
      setStatus(col, ev.event === "output" ? "finishing…" : `step ${ev.step.index} done`);
      break;
    case "done":
      setStatus(col, `done in ${ev.result.seconds.toFixed(2)} s`, "done");
      summarize(ev.result, col);
      break;
    case "error":
      showError(col, ev.error.code, ev.error.message);
      break;
  }
}

function showError(col, code, message) {
  setStatus(col, "error", "error");
  col.cards.append(el("div", { class: "error-box", "data-error": code },
    el("b", { text: `${code}: ` }), document.createTextNode(message)));
}

function summarize(res, col) {
  col.summary.replaceChildren(
    el("span", { text: "context " }), el("b", { text: `${res.context_tokens} tokens` }),
    document.createTextNode(` · run ${res.run_id.slice(0, 8)}… · images kept until ${new Date(res.expires_at * 1000).toLocaleTimeString()}`));
  if (res.reference) {
    const scores = Object.entries(res.reference.score).map(([k, v]) => `${k} ${v == null ? "–" : (+v).toFixed(3)}`);
    col.summary.append(el("div", { class: "reference" },
      el("span", { text: "ground truth: " }), el("b", { text: res.reference.answer ?? "(an image)" }),
      document.createTextNode(` · score: ${scores.join(", ")}`)));
  }
}

// ---------------------------------------------------------------------------------------------------
// drawing a step

const KIND_LABEL = { text: "text", image: "image", visual: "visual tokens", pose: "pose", depth: "depth" };

function stepCard(step, col) {
  const isOut = step.step === "output";
  const card = el("div", { class: `card${isOut ? " output" : ""}`, "data-step": step.step, "data-index": step.index });
  card.append(el("div", { class: "card-head" },
    el("span", { class: "name", text: isOut ? "output ψ" : step.index === 0 ? "input x" : `${step.index}. ${step.step}` }),
    step.step === "input" ? null : el("span", { class: "kind", text: KIND_LABEL[step.kind] || step.kind }),
    el("span", { class: "cost", text: `+${step.tokens} tok · ${step.seconds.toFixed(2)} s` })));

  if (step.step === "input") {
    const imgs = el("div", { class: "images" });
    for (const [name, url] of Object.entries(col.input ? col.input.images : {})) imgs.append(figure(url, name));
    if (imgs.childElementCount) card.append(imgs);
    if (step.text) card.append(el("pre", { class: "text", text: step.text }));
    if (col.input && col.input.seed != null) {
      const rev = col.input.world_revision > 1 ? ` (world revision ${col.input.world_revision})` : "";
      card.append(el("div", { class: "note", text: `world seed ${col.input.seed}${rev}` }));
    }
    return card;
  }
  if (step.kind === "pose") {
    card.append(poseBlock(step));
  } else if (step.kind === "depth") {
    card.append(el("div", { class: "images" }, figure(step.image, "depth (near = warm)")));
    const lo = step.data && step.data.min_m, hi = step.data && step.data.max_m;
    card.append(el("div", { class: "legend" }, el("span", { text: `near ${lo == null ? "?" : lo.toFixed(2)} m` }),
      el("span", { class: "bar" }), el("span", { text: `far ${hi == null ? "?" : hi.toFixed(2)} m` })));
    if (step.depth) card.append(el("div", { class: "note" }, el("a", { href: step.depth, text: "depth as .npy (metres)" })));
  } else if (step.kind === "visual") {
    const n = step.data && step.data.codes ? step.data.codes.length : 0;
    card.append(el("div", { class: "images" }, figure(step.image, `decoded preview of ${n} visual tokens`)));
  } else if (step.kind === "image") {
    const grid = step.step === "synthesize_views";
    card.append(el("div", { class: "images" }, figure(step.image, grid ? "novel views: up, down / left, right" :
      isOut ? "generated image" : (step.text || "image"), grid)));
    if (step.text && !grid && !isOut) card.append(el("pre", { class: "text", text: step.text }));
  } else {
    const t = step.text || "";
    card.append(el("pre", { class: `text${t ? "" : " empty"}`, text: t || "(empty)" }));
  }
  return card;
}

function figure(url, caption, wide = false) {
  return el("figure", {}, el("img", { src: url, alt: caption, class: wide ? "wide" : "" }),
    el("figcaption", { text: caption }));
}

// A top-down sketch of the relative pose: view 1 at the origin looking up the page (+z), view 2 at
// its centre (x right, z forward), pointing along its own viewing direction.
function poseBlock(step) {
  const box = el("div", { class: "pose" });
  const s = svg("svg", { viewBox: "-75 -75 150 150", role: "img", "aria-label": "top-down camera diagram" });
  s.append(svg("line", { x1: -70, y1: 0, x2: 70, y2: 0, stroke: "#e3e6ea" }),
    svg("line", { x1: 0, y1: -70, x2: 0, y2: 70, stroke: "#e3e6ea" }));
  const p = step.pose;
  const cams = [{ x: 0, z: 0, fx: 0, fz: 1, color: "#1d232b", label: "1" }];
  if (p && p.center.every((v) => v != null) && p.forward.every((v) => v != null)) {
    cams.push({ x: p.center[0], z: p.center[2], fx: p.forward[0], fz: p.forward[2], color: "#2f6fdb", label: "2" });
  }
  const extent = Math.max(1, ...cams.map((c) => Math.max(Math.abs(c.x), Math.abs(c.z))));
  const k = 45 / extent;  // metres -> diagram units
  for (const c of cams) {
    const X = c.x * k, Y = -c.z * k;
    const n = Math.hypot(c.fx, c.fz) || 1, fx = c.fx / n, fy = -c.fz / n;
    const ang = Math.atan2(fy, fx), half = 0.45, len = 18;
    const a = [X + len * Math.cos(ang - half), Y + len * Math.sin(ang - half)];
    const b = [X + len * Math.cos(ang + half), Y + len * Math.sin(ang + half)];
    s.append(svg("polygon", { points: `${X},${Y} ${a[0]},${a[1]} ${b[0]},${b[1]}`, fill: c.color, "fill-opacity": 0.18,
      stroke: c.color, "stroke-width": 1.5, "data-camera": c.label }));
    s.append(svg("circle", { cx: X, cy: Y, r: 3, fill: c.color }));
    const t = svg("text", { x: X + 5, y: Y + 12, "font-size": 10, fill: c.color });
    t.textContent = `view ${c.label}`;
    s.append(t);
  }
  const scale = svg("text", { x: -72, y: 72, "font-size": 8, fill: "#68717d" });
  scale.textContent = `top-down, ±${extent.toFixed(1)} m`;
  s.append(scale);
  box.append(s);
  const info = el("div", {});
  info.append(el("pre", { class: `text${step.text ? "" : " empty"}`, text: step.text || "(empty)" }));
  info.append(el("div", { class: "note", text: p ? "tx ty tz (m), rx ry rz (axis-angle, rad): view 2 in view 1's frame" :
    "not a pose text: only view 1 is drawn" }));
  box.append(info);
  return box;
}

init();
