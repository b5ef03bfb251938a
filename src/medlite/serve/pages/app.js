// medlite serve page: plain JavaScript, no framework, nothing loaded from outside.
// The access token lives in the variable `token` only (no cookie, no storage, no URL): closing the tab forgets it.
// File names never leave the browser: each file is sent as "upload" and shown as "image N".
"use strict";

let token = null;
let model = null;
const items = [];            // {index, file, state: waiting|done|error, result, error}
let sortKey = "abnormal";
let sortDir = -1;            // -1 = descending (highest probability of abnormality first)
let selected = null;
const CONCURRENCY = 2;
let running = 0;
let paused = false;          // true while the token is asked for again: nothing is sent

const $ = (id) => document.getElementById(id);
const el = (tag, text, cls) => {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
};
const fmt = (v, d = 2) => (typeof v === "number" && isFinite(v) ? v.toFixed(d) : "–");
const png = (b64) => "data:image/png;base64," + b64;

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: "the server answered " + response.status }; }
  return { status: response.status, body };
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function start() {
  const { status, body } = await api("/api/v1/model");
  if (status === 401) return showLogin(token ? "That token was not accepted." : "");
  if (status !== 200) return showLogin(body.error || "The server did not answer.");
  model = body;
  paused = false;
  $("login").hidden = true;
  $("app").hidden = false;
  renderModel();
  $("files").focus();
}

// ------------------------------------------------------------------------------------------ model panel
function fact(list, term, value) {
  list.append(el("dt", term), el("dd", value));
}

function renderModel() {
  const card = model.card || {};
  $("model-name").textContent = model.model + " · " + model.classes.join(" / ");
  const facts = $("model-facts");
  facts.replaceChildren();
  fact(facts, "Architecture", model.model + " (" + (model.precision || "fp32") + ", " + model.input_size + " px)");
  fact(facts, "Classes", model.classes.join(", "));
  if (model.threshold !== null && model.threshold !== undefined) {
    fact(facts, "Threshold", fmt(model.threshold) + " on " + model.positive_class +
      (model.threshold_rule ? " (" + model.threshold_rule + ")" : ""));
  }
  const data = card.training_data;
  if (data) {
    fact(facts, "Training data", data.source + " (" + data.kind + ")" + (data.synthetic ? ", synthetic" : ""));
    const totals = ["train", "val", "test"].map((split) => {
      const counts = data.images[split] || {};
      return split + " " + Object.values(counts).reduce((a, b) => a + b, 0);
    });
    fact(facts, "Images", totals.join(" · "));
    const perClass = model.classes.map((c) => c + " " + ((data.images.train || {})[c] || 0));
    fact(facts, "Train per class", perClass.join(", "));
  } else {
    fact(facts, "Training data", "not recorded in this export");
  }
  fact(facts, "Heatmap", model.heatmap.available ? "class activation map at " + model.heatmap.layer
    : "none: " + model.heatmap.reason);
  renderResults(card.results);
  $("intended-use").textContent = card.intended_use || "not recorded in this export";
  $("limitations").textContent = card.limitations || "";
  $("abnormal-rule").textContent = "Abnormal = " + model.abnormal_rule + ".";
}

function renderResults(results) {
  const box = $("model-results");
  box.replaceChildren();
  if (!results || results.n === undefined) {
    box.append(el("p", "No test metrics in this export.", "muted"));
    return;
  }
  const ci = results.ci95 || {};
  const withCi = (name) => fmt(results[name], 3) +
    (ci[name] ? " (95 % CI " + fmt(ci[name][0], 3) + "–" + fmt(ci[name][1], 3) + ")" : "");
  const list = el("dl");
  fact(list, "Split", results.split + ", n = " + results.n);
  fact(list, "Accuracy", withCi("accuracy"));
  fact(list, "Macro AUC", withCi("auc_macro"));
  fact(list, "Balanced acc.", fmt(results.balanced_accuracy, 3));
  fact(list, "Macro F1", fmt(results.macro_f1, 3));
  box.append(list);
  if (results.per_class) {
    const table = el("table");
    const head = el("tr");
    for (const h of ["class", "sensitivity", "specificity", "AUC"]) head.append(el("th", h));
    table.append(head);
    for (const [name, m] of Object.entries(results.per_class)) {
      const row = el("tr");
      row.append(el("td", name), el("td", fmt(m.recall)), el("td", fmt(m.specificity)), el("td", fmt(m.auc)));
      table.append(row);
    }
    box.append(table);
  }
}

// --------------------------------------------------------------------------------------------- uploads
function addFiles(files) {
  for (const file of files) items.push({ index: items.length + 1, file, state: "waiting" });
  $("csv").disabled = false;
  renderWorklist();
  pump();
}

function pump() {
  while (!paused && running < CONCURRENCY) {
    const next = items.find((item) => item.state === "waiting");
    if (!next) break;
    next.state = "sending";
    running += 1;
    send(next).finally(() => { running -= 1; pump(); renderProgress(); });
  }
  renderProgress();
}

async function send(item) {
  const form = new FormData();
  form.append("files", item.file, "upload");  // never the user's file name
  form.append("heatmap", "true");
  form.append("display", "true");
  try {
    const { status, body } = await api("/api/v1/predict", { method: "POST", body: form });
    if (status === 401) {
      item.state = "waiting";
      paused = true;
      showLogin("Please sign in again.");
      return;
    }
    const result = body.results && body.results[0];
    if (status === 200 && result && result.status !== "error") {
      item.state = "done";
      item.result = result;
    } else {
      item.state = "error";
      item.error = (result && result.error) || body.error || "the server answered " + status;
    }
  } catch (e) {
    item.state = "error";
    item.error = "no answer from the server";
  }
  item.file = null;  // the browser keeps nothing it does not need
  renderWorklist();
  if (selected === null || selected === item.index) select(item.index);
}

function renderProgress() {
  const done = items.filter((i) => i.state === "done" || i.state === "error").length;
  $("progress").textContent = items.length ? done + " of " + items.length + " images read" : "";
}

// -------------------------------------------------------------------------------------------- worklist
function sortValue(item, key) {
  const r = item.result;
  if (key === "index") return item.index;
  if (key === "predicted") return r ? r.predicted : "~";
  if (key === "status") return r ? String(r.status) : item.state;
  if (!r) return -1;
  if (r.abnormal_probability !== null && r.abnormal_probability !== undefined) return r.abnormal_probability;
  return Math.max(...Object.values(r.probabilities));
}

function sorted() {
  return items.slice().sort((a, b) => {
    const x = sortValue(a, sortKey), y = sortValue(b, sortKey);
    return (x < y ? -1 : x > y ? 1 : a.index - b.index) * sortDir;
  });
}

function renderWorklist() {
  const body = document.querySelector("#worklist tbody");
  body.replaceChildren();
  for (const item of sorted()) {
    const r = item.result;
    const row = el("tr");
    row.tabIndex = 0;
    row.dataset.index = item.index;
    row.setAttribute("aria-selected", String(item.index === selected));
    const thumb = el("td");
    if (r && r.display_png) { const img = el("img"); img.src = png(r.display_png); img.alt = ""; thumb.append(img); }
    const status = r ? String(r.status) : item.state;
    const pill = el("span", status, "pill " + status.split(":")[0]);
    const statusCell = el("td");
    statusCell.append(pill);
    row.append(thumb, el("td", "image " + item.index), el("td", r ? r.predicted : item.error ? "not read" : "…"),
      el("td", r ? fmt(sortValue(item, "abnormal")) : "–"), statusCell);
    row.addEventListener("click", () => select(item.index));
    row.addEventListener("keydown", (event) => onRowKey(event, item.index));
    body.append(row);
  }
  for (const button of document.querySelectorAll("th button")) {
    button.setAttribute("aria-sort", button.dataset.sort === sortKey ? (sortDir < 0 ? "descending" : "ascending")
      : "none");
  }
}

function onRowKey(event, index) {
  const order = sorted().map((i) => i.index);
  const at = order.indexOf(index);
  let target = null;
  if (event.key === "Enter" || event.key === " ") target = index;
  if (event.key === "ArrowDown") target = order[Math.min(order.length - 1, at + 1)];
  if (event.key === "ArrowUp") target = order[Math.max(0, at - 1)];
  if (target === null) return;
  event.preventDefault();
  select(target);
  const row = document.querySelector('#worklist tbody tr[data-index="' + target + '"]');
  if (row) row.focus();
}

// ---------------------------------------------------------------------------------------------- viewer
function select(index) {
  selected = index;
  for (const row of document.querySelectorAll("#worklist tbody tr")) {
    row.setAttribute("aria-selected", String(Number(row.dataset.index) === index));
  }
  const item = items.find((i) => i.index === index);
  const r = item && item.result;
  $("viewer-index").textContent = String(index);
  $("placeholder").hidden = Boolean(r);
  $("placeholder").textContent = item && item.error ? "Not read: " + item.error : "Waiting for the result…";
  $("xray").hidden = !(r && r.display_png);
  if (r && r.display_png) $("xray").src = png(r.display_png);
  const heat = r && r.heatmap_png;
  $("heat").hidden = !heat || !$("heat-toggle").checked;
  if (heat) $("heat").src = png(heat);
  $("heat-toggle").disabled = !heat;
  $("opacity").disabled = !heat;
  $("heat-note").textContent = r ? (heat ? r.heatmap_note : "No heatmap: " + (r.heatmap_note || "not available"))
    : "";
  $("summary").textContent = r ? r.summary : item && item.error ? item.error : "";
  $("status").textContent = r ? "Status: " + r.status : "";
  renderWarnings(r);
  renderBars(r);
  applyOpacity();
}

const SHOWN = new Set(["image", "status", "predicted", "probabilities", "threshold", "summary", "display_png",
  "heatmap_png", "heatmap_note", "heatmap_class", "abnormal_probability", "warnings"]);

function renderWarnings(r) {
  const list = $("warnings");
  list.replaceChildren();
  if (!r) return;
  for (const w of r.warnings || []) list.append(el("li", typeof w === "string" ? w : JSON.stringify(w)));
  // Fields a newer server adds to a result (e.g. out-of-distribution scores) are shown as they come.
  for (const [key, value] of Object.entries(r)) {
    if (!SHOWN.has(key) && (typeof value !== "object" || value === null)) {
      list.append(el("li", key.replace(/_/g, " ") + ": " + (typeof value === "number" ? fmt(value, 3) : value)));
    }
  }
}

function renderBars(r) {
  const box = $("bars");
  box.replaceChildren();
  if (!r) return;
  const top = r.predicted;
  for (const [name, p] of Object.entries(r.probabilities)) {
    const bar = el("div", null, "bar");
    const track = el("div", null, "track");
    const fill = el("div", null, "fill" + (name === top ? " top" : ""));
    fill.style.width = (100 * p).toFixed(1) + "%";
    track.append(fill);
    if (model.positive_class === name && typeof r.threshold === "number") {
      const mark = el("div", null, "threshold");
      mark.style.left = (100 * r.threshold).toFixed(1) + "%";
      mark.title = "operating threshold " + fmt(r.threshold);
      track.append(mark);
    }
    bar.append(el("span", name), track, el("span", fmt(p)));
    box.append(bar);
  }
  if (typeof r.threshold === "number") {
    box.append(el("p", "Red line: the model's operating threshold " + fmt(r.threshold) + " on " +
      model.positive_class + "; at or above it the image is flagged.", "legend"));
  }
}

function applyOpacity() {
  $("heat").style.opacity = String(Number($("opacity").value) / 100);
}

// ------------------------------------------------------------------------------------------------- CSV
function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

function downloadCsv() {
  const classes = model.classes;
  const lines = [["image", "predicted", "abnormal_probability", ...classes.map((c) => "prob_" + c), "status",
    "summary"].join(",")];
  for (const item of sorted()) {
    const r = item.result;
    const probs = classes.map((c) => (r ? r.probabilities[c] : ""));
    lines.push([item.index, r ? r.predicted : "", r ? r.abnormal_probability : "", ...probs,
      r ? r.status : item.state, r ? r.summary : item.error || ""].map(csvCell).join(","));
  }
  const link = el("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  link.download = "medlite-worklist.csv";
  document.body.append(link);
  link.click();
  setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
}

// ------------------------------------------------------------------------------------------------ wiring
document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    start().then(pump);
  });
  $("files").addEventListener("change", (event) => { addFiles(Array.from(event.target.files)); event.target.value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(Array.from(event.dataTransfer.files));
  });
  for (const button of document.querySelectorAll("th button")) {
    button.addEventListener("click", () => {
      const key = button.dataset.sort;
      sortDir = key === sortKey ? -sortDir : key === "abnormal" ? -1 : 1;
      sortKey = key;
      renderWorklist();
    });
  }
  $("heat-toggle").addEventListener("change", () => { if (selected !== null) select(selected); });
  $("opacity").addEventListener("input", applyOpacity);
  $("csv").addEventListener("click", downloadCsv);
  start();
});
