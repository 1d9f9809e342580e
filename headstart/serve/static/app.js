// headstart serve: the page. Each image is sent on its own (a few at a time), so its card fills in as soon as its
// prediction is back and one bad file spoils nothing else. Text from files and the server is set as textContent.
"use strict";

const PARALLEL = 4;
const $ = (id) => document.getElementById(id);
let limits = { max_upload_bytes: Infinity, topk: 3 };
let queue = [];
let running = 0;
let total = 0;

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (cls || "");
}

function fact(dl, name, value) {
  if (value === undefined || value === null || value === "") return;
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = name;
  dd.textContent = value;
  dl.append(dt, dd);
}

const pct = (x) => (x >= 0.9995 ? "100%" : x < 0.0005 ? "<0.1%" : (100 * x).toFixed(1) + "%");
const mb = (n) => (n / 1048576).toFixed(n < 10485760 ? 1 : 0) + " MB";

async function loadInfo() {
  try {
    const res = await fetch("/info");
    if (!res.ok) throw new Error("HTTP " + res.status);
    const info = await res.json();
    limits = info.limits || limits;
    const facts = $("facts");
    facts.replaceChildren();
    fact(facts, "model", info.model);
    fact(facts, "strategy", info.strategy);
    fact(facts, "classes", info.classes.length);
    const tm = info.test_metrics;
    if (tm && tm.accuracy != null) {
      fact(facts, "test accuracy", pct(tm.accuracy));
      if (tm.balanced_accuracy != null) fact(facts, "balanced accuracy", pct(tm.balanced_accuracy));
      if (tm.num_images) fact(facts, "test images", tm.num_images.toLocaleString("en"));
      if (tm.ece != null) fact(facts, "calibration error", pct(tm.ece));
    } else {
      fact(facts, "test accuracy", "not measured");
    }
    const chips = $("classes");
    chips.replaceChildren(...info.classes.map((c) => {
      const li = document.createElement("li");
      li.textContent = c;
      return li;
    }));
    $("classes-title").textContent = "Classes (" + info.classes.length + ")";
    const details = $("details");
    const pre = info.preprocessing || {};
    const size = pre.crop ? pre.crop + " px, resized to " + pre.resize + " px (" + pre.interpolation + ")" : "";
    fact(details, "input", size);
    fact(details, "mean / std", pre.mean ? pre.mean.join(", ") + " / " + pre.std.join(", ") : "");
    fact(details, "temperature", info.temperature != null ? Number(info.temperature).toFixed(3) : "");
    fact(details, "upload limit", mb(limits.max_upload_bytes) + " a request");
    fact(details, "pixel limit", (limits.max_pixels / 1e6).toFixed(0) + " megapixels");
    fact(details, "top-k shown", limits.topk);
    setStatus("ready · " + (info.model || "model") + " · " + info.classes.length + " classes", "ok");
  } catch (err) {
    setStatus("cannot reach the model server (" + err.message + ")", "down");
  }
}

function addCard(file) {
  const node = $("card-template").content.firstElementChild.cloneNode(true);
  node.classList.add("pending");
  node.querySelector(".name").textContent = file.name;
  node.querySelector(".name").title = file.name;
  node.querySelector(".label").textContent = "predicting";
  const img = node.querySelector("img");
  const url = URL.createObjectURL(file);
  img.addEventListener("error", () => node.querySelector(".thumb").classList.add("broken"));
  img.addEventListener("load", () => URL.revokeObjectURL(url));
  img.src = url;
  img.alt = file.name;
  $("results").prepend(node);
  total += 1;
  $("results-head").hidden = false;
  $("results-count").textContent = total === 1 ? "1 image" : total + " images";
  return node;
}

// A multi-label run answers with every label above its threshold (labels, scores) instead of top-k classes.
function multiLabel(p) {
  const given = p.labels.map((label, i) => ({ label, score: p.scores[i] }));
  return { label: p.labels.length ? p.labels.join(", ") : "no label above its threshold", score: null, topk: given };
}

function showPrediction(card, p) {
  if (Array.isArray(p.labels)) p = multiLabel(p);
  card.classList.remove("pending");
  card.querySelector(".label").textContent = p.label;
  card.querySelector(".score").textContent = p.score == null ? "" : pct(p.score);
  const bars = card.querySelector(".bars");
  bars.replaceChildren(...p.topk.map((t) => {
    const li = document.createElement("li");
    const cls = document.createElement("span");
    const val = document.createElement("span");
    cls.className = "cls";
    val.className = "pct";
    cls.textContent = t.label;
    val.textContent = pct(t.score);
    li.append(cls, val);
    li.title = t.label + ": " + t.score.toFixed(4);
    requestAnimationFrame(() => li.style.setProperty("--w", Math.max(0.5, 100 * t.score) + "%"));
    return li;
  }));
}

function showError(card, message) {
  card.classList.remove("pending");
  card.classList.add("failed");
  card.querySelector(".label").textContent = "no prediction";
  const p = card.querySelector(".error");
  p.textContent = message;
  p.hidden = false;
}

async function predict(file, card) {
  if (file.size > limits.max_upload_bytes) {
    showError(card, "too large to send: " + mb(file.size) + " (the server takes " + mb(limits.max_upload_bytes) + ")");
    return;
  }
  const body = new FormData();
  body.append("files", file, file.name);
  try {
    const res = await fetch("/predict?topk=" + encodeURIComponent(limits.topk), { method: "POST", body });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      const files = data.files || [];
      const detail = typeof data.detail === "string" ? data.detail : "HTTP " + res.status;
      showError(card, files.length ? files[0].error : detail);
      return;
    }
    const p = data.predictions[0];
    if (p.error || (p.label == null && !Array.isArray(p.labels))) showError(card, p.error || "no prediction");
    else showPrediction(card, p);
  } catch (err) {
    showError(card, "the server did not answer (" + err.message + ")");
  }
}

function pump() {
  while (running < PARALLEL && queue.length) {
    const [file, card] = queue.shift();
    running += 1;
    predict(file, card).finally(() => {
      running -= 1;
      pump();
    });
  }
}

function addFiles(files) {
  for (const file of files) queue.push([file, addCard(file)]);
  pump();
}

function init() {
  const drop = $("drop");
  const input = $("file-input");
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    addFiles([...e.dataTransfer.files]);
  });
  // A file dropped beside the zone should not make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (files.length) addFiles(files);
  });
  $("clear").addEventListener("click", () => {
    queue = [];
    total = 0;
    $("results").replaceChildren();
    $("results-head").hidden = true;
  });
  loadInfo();
}

init();
