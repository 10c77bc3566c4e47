// pulse-ext demo page: upload, queue a search, poll its state, show previews and outputs.
"use strict";

const $ = (id) => document.getElementById(id);
let config = null;
let chosen = null; // the File to upload

// A byte count for people, as the server words it (pulse_ext/demo/app.py size_text).
function sizeText(size) {
  return size >= 2 ** 20 ? `${(size / 2 ** 20).toFixed(1)} MB` : `${Math.max(size / 1024, 0.1).toFixed(1)} KB`;
}

function setFormError(text) { $("form-error").textContent = text || ""; }

function choose(file) {
  chosen = file || null;
  $("chosen").textContent = chosen ? `${chosen.name} (${sizeText(chosen.size)})` : "no image chosen";
  setFormError("");
}

async function loadConfig() {
  const response = await fetch("/api/config");
  config = await response.json();
  for (const g of config.generators) {
    const option = document.createElement("option");
    option.value = g.label;
    option.textContent = `${g.label} (${g.resolution}x${g.resolution})`;
    $("generator").appendChild(option);
  }
  for (const f of config.align.framings) {
    const option = document.createElement("option");
    option.value = f;
    option.textContent = f;
    option.selected = f === config.align.default_framing;
    $("framing").appendChild(option);
  }
  const limits = config.limits;
  $("restarts").max = limits.max_restarts;
  $("steps").max = limits.max_steps;
  $("num_outputs").max = limits.max_outputs;
  if (!config.align.available) {
    $("align").disabled = true;
    $("framing").disabled = true;
    $("align-note").textContent = `Alignment is not available: ${config.align.why_not}`;
  }
}

function figure(src, caption, small) {
  const fig = document.createElement("figure");
  if (small) fig.className = "small";
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

function render(card, s) {
  const q = (sel) => card.querySelector(sel);
  q(".name").textContent = s.name;
  const states = {
    queued: s.ahead ? `queued: ${s.ahead} search${s.ahead > 1 ? "es" : ""} ahead of this one` : "queued: next",
    running: "running", done: "done", error: "failed",
  };
  q(".state").textContent = `(${states[s.state]})`;
  card.dataset.state = s.state;
  // A search ends early when every restart has met eps: done is a full bar either way.
  q("progress").value = s.state === "done" ? 1 : (s.steps ? s.step / s.steps : 0);
  const l2 = s.best_l2 === null ? "" : `, best L2 ${s.best_l2.toExponential(2)}`;
  const where = s.state === "done" && s.step < s.steps ? `stopped at step ${s.step} of ${s.steps} (every restart met eps)`
    : `step ${s.step} of ${s.steps}`;
  q(".status").textContent = s.state === "queued" ? "" :
    `${where}${l2} (${s.seconds.toFixed(1)} s; seed ${s.options.seed}, ${s.options.restarts} restarts)`;
  q(".error").textContent = s.message;
  const notes = q(".notes");
  notes.replaceChildren(...s.notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
  const inputImg = q(".input img");
  if (inputImg.getAttribute("src") !== s.input) inputImg.src = s.input;
  q(".input figcaption").textContent = `input ${s.input_size[0]}x${s.input_size[1]}`;
  const searched = q(".searched");
  // Shown when what is searched for differs from the upload (aligned or resized).
  searched.hidden = !s.searched || (!s.options.align && s.searched_size[0] === s.input_size[0] &&
                                    s.searched_size[1] === s.input_size[1]);
  if (s.searched && q(".searched img").getAttribute("src") !== s.searched) {
    q(".searched img").src = s.searched;
    q(".searched figcaption").textContent = `searched for ${s.searched_size[0]}x${s.searched_size[1]}`;
  }
  if (s.state === "running" && card.dataset.version !== String(s.version)) {
    q(".previews").replaceChildren(...s.previews.map((src, k) => figure(src, `current best ${k + 1}`)));
  }
  if (s.state === "done" && !card.dataset.shown) {
    card.dataset.shown = "1";
    q(".previews").replaceChildren();
    q(".outputs").replaceChildren(...s.outputs.map((o, k) => {
      const box = document.createElement("div");
      box.className = "output";
      const pair = document.createElement("div");
      pair.className = "pair";
      pair.append(figure(o.image, `output ${k + 1}`),
                  figure(o.downscaled, "its downscale", true));
      const info = document.createElement("p");
      info.className = "muted";
      info.textContent = `L2 ${o.l2.toExponential(2)}${o.converged ? " (met eps)" : " (did not meet eps)"} `;
      const link = document.createElement("a");
      link.href = o.image;
      link.download = `${s.name.replace(/\.[^.]*$/, "")}_${k + 1}.png`;
      link.textContent = "download";
      link.className = "download";
      info.append(link);
      box.append(pair, info);
      return box;
    }));
  }
  card.dataset.version = String(s.version);
}

async function follow(card, url) {
  for (;;) {
    let s;
    try {
      const response = await fetch(url);
      s = await response.json();
      if (!response.ok) throw new Error(s.error || response.statusText);
    } catch (err) {
      card.querySelector(".error").textContent = `lost the search: ${err.message}`;
      return;
    }
    render(card, s);
    if (s.state === "done" || s.state === "error") return;
    await new Promise((resolve) => setTimeout(resolve, s.state === "queued" ? 700 : 400));
  }
}

async function start(event) {
  event.preventDefault();
  setFormError("");
  if (!chosen) return setFormError("Choose an image first.");
  if (chosen.size > config.limits.max_upload_bytes) {
    return setFormError(`${chosen.name} is ${sizeText(chosen.size)}; this demo takes images up to ` +
                        `${sizeText(config.limits.max_upload_bytes)}.`);
  }
  const params = new URLSearchParams({ name: chosen.name });
  for (const id of ["generator", "restarts", "steps", "num_outputs", "seed", "framing"]) {
    if ($(id).value !== "") params.set(id, $(id).value);
  }
  if ($("align").checked) params.set("align", "1");
  let reply;
  try {
    const response = await fetch(`/api/search?${params}`, {
      method: "POST", body: chosen, headers: { "Content-Type": "application/octet-stream" },
    });
    reply = await response.json();
    if (!response.ok) return setFormError(reply.error || response.statusText);
  } catch (err) {
    return setFormError(`The upload failed: ${err.message}`);
  }
  const card = $("search-template").content.firstElementChild.cloneNode(true);
  card.id = `search-${reply.id}`;
  $("searches").prepend(card);
  follow(card, reply.url);
}

function setUp() {
  $("file").addEventListener("change", () => choose($("file").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
  });
  $("form").addEventListener("submit", start);
  loadConfig().catch((err) => setFormError(`Cannot reach the demo server: ${err.message}`));
}

setUp();
