// The live page: draws the state the proxy embeds, then polls /ui/state.json. A stream's PNG is fetched again
// only when the stream has a new frame (its seq changed), so an idle stream costs nothing.
"use strict";

const WINDOW_COLOURS = ["#f0f6fc", "#58a6ff", "#8957e5"];
const shown = {};  // image id -> seq shown

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function esc(text) {
  return String(text ?? "").replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
}

function utc(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().slice(11, 19) : "";
}

function frameTime(ns) {
  return ns ? new Date(ns / 1e6).toISOString().slice(11, 23) : "";
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  return n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function shortName(name) {
  const parts = name.split(".");
  return parts.length > 2 ? parts.slice(-2).join(".") : name;
}

function modules(state) {
  const rows = new Map();
  for (const stream of state.streams) {
    const key = `${stream.agent}/${stream.module_id}`;
    if (!rows.has(key)) rows.set(key, {agent: stream.agent, module: stream.module_id, movie: null, ph: null,
                                        state: stream.agent_state});
    rows.get(key)[stream.is_movie ? "movie" : "ph"] = stream;
  }
  return [...rows.values()].sort((a, b) => a.module - b.module || a.agent.localeCompare(b.agent));
}

function imagePanel(row, kind, stream) {
  const panel = el("div", {class: "panel"});
  if (!stream) {
    panel.append(el("h3", {}, kind === "ph" ? "pulse height: none" : "movie: none"));
    return panel;
  }
  const id = `img-${row.agent}-${stream.module_id}-${stream.dp}`;
  panel.innerHTML = `<h3><b>${esc(stream.dp)}</b> <span data-k="time"></span></h3>
    <div class="frame"><img alt="${esc(stream.dp)} of module ${stream.module_id}" id="${esc(id)}">
    <canvas class="colourbar" width="1" height="256"></canvas><div class="scale"><span data-k="high"></span>
    <span data-k="low"></span></div></div><div class="stats" data-k="stats"></div>`;
  const bar = panel.querySelector(".colourbar").getContext("2d");
  CONFIG.colours.forEach((colour, i) => {
    bar.fillStyle = colour;
    bar.fillRect(0, 256 - (i + 1) * 256 / CONFIG.colours.length, 1, 256 / CONFIG.colours.length);
  });
  return panel;
}

function fillPanel(panel, row, stream) {
  if (!stream) return;
  const id = `img-${row.agent}-${stream.module_id}-${stream.dp}`;
  const img = panel.querySelector("img");
  if (shown[id] !== stream.seq) {
    shown[id] = stream.seq;
    img.src = `/ui/image/${encodeURIComponent(row.agent)}/${stream.module_id}/${stream.dp}.png?seq=${stream.seq}`;
  }
  panel.querySelector('[data-k="time"]').textContent = `${frameTime(stream.frame_time_ns)} · seq ${stream.seq}`;
  panel.querySelector('[data-k="low"]').textContent = Math.round(stream.limits[0]);
  panel.querySelector('[data-k="high"]').textContent = Math.round(stream.limits[1]);
  const s = stream.stats || {};
  const bad = (n) => n ? ` class="bad"` : "";
  panel.querySelector('[data-k="stats"]').innerHTML =
    `${s.frames_per_second ?? "–"} frames/s · lag ${bytes(s.lag_bytes)}<br>` +
    `<span${bad(s.corrupt_bytes_skipped)}>corrupt ${bytes(s.corrupt_bytes_skipped)}</span> · ` +
    `<span${bad(s.frames_lost)}>seq gaps ${s.frames_lost ?? "–"} frames</span> · ` +
    `${s.seconds_since_data !== undefined ? `idle ${s.seconds_since_data} s` : ""}`;
}

function drawDistribution(canvas, stream) {
  const ctx = canvas.getContext("2d");
  const width = canvas.width = canvas.clientWidth || 300, height = canvas.height = canvas.clientHeight || 200;
  ctx.clearRect(0, 0, width, height);
  const dist = stream && stream.distribution;
  if (!dist || !dist.edges.length) {
    ctx.fillStyle = "#8b949e";
    ctx.fillText("waiting for pulse-height events", 10, 20);
    return;
  }
  const pad = {l: 34, r: 6, t: 8, b: 18};
  const counts = CONFIG.windows.map(w => dist.windows[String(w)] || []);
  const peak = Math.max(1, ...counts.flat());
  const x = i => pad.l + i * (width - pad.l - pad.r) / (dist.edges.length - 1);
  const y = c => height - pad.b - Math.log10(1 + c) / Math.log10(1 + peak) * (height - pad.t - pad.b);
  ctx.strokeStyle = "#30363d";
  ctx.strokeRect(pad.l, pad.t, width - pad.l - pad.r, height - pad.t - pad.b);
  ctx.fillStyle = "#8b949e";
  ctx.font = "11px monospace";
  ctx.fillText(String(Math.round(dist.edges[0])), pad.l, height - 4);
  const last = String(Math.round(dist.edges[dist.edges.length - 1]));
  ctx.fillText(last, width - pad.r - ctx.measureText(last).width, height - 4);
  ctx.fillText(String(peak), 2, pad.t + 8);
  ctx.fillText("events", 2, (height - pad.b + pad.t) / 2);
  ctx.fillText("0", 2, height - pad.b);
  ctx.fillText("max pixel (ADC)", (width - ctx.measureText("max pixel (ADC)").width) / 2, height - 4);
  counts.map((bins, w) => [bins, w]).reverse().forEach(([bins, w]) => {  // the shortest window on top
    ctx.strokeStyle = WINDOW_COLOURS[w];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    bins.forEach((c, i) => {
      if (i === 0) ctx.moveTo(x(0), y(c)); else ctx.lineTo(x(i), y(c));
      ctx.lineTo(x(i + 1), y(c));
    });
    ctx.stroke();
  });
}

function renderModules(state) {
  const container = document.getElementById("modules");
  const rows = modules(state);
  if (!rows.length) return;
  container.querySelector(".waiting")?.remove();
  const keep = new Set();
  for (const row of rows) {
    const id = `module-${row.agent}-${row.module}`;
    keep.add(id);
    let node = document.getElementById(id);
    if (!node || node.dataset.layout !== `${row.ph?.dp}/${row.movie?.dp}`) {
      const fresh = el("div", {class: "module", id});
      fresh.dataset.layout = `${row.ph?.dp}/${row.movie?.dp}`;
      const label = el("div", {class: "label"});
      label.innerHTML = `${row.module}<small>module</small><small>${esc(shortName(row.agent))}</small>` +
        `<small class="overlay" data-k="down"></small>`;
      const dist = el("div", {class: "panel"});
      dist.innerHTML = `<h3><b>pulse-height distribution</b> · max pixel per event</h3>` +
        `<canvas class="dist"></canvas><div class="legend">` +
        CONFIG.windows.map((w, i) => `<span style="color:${WINDOW_COLOURS[i]}">━ last ${w} s</span>`).join(" ") +
        ` · log scale</div>`;
      fresh.append(label, imagePanel(row, "ph", row.ph), imagePanel(row, "movie", row.movie), dist);
      node ? node.replaceWith(fresh) : container.append(fresh);
      node = fresh;
    }
    node.classList.toggle("down", row.state !== "live");
    node.querySelector('[data-k="down"]').textContent = row.state === "live" ? "" : `agent ${row.state}`;
    const panels = node.querySelectorAll(".panel");
    fillPanel(panels[0], row, row.ph);
    fillPanel(panels[1], row, row.movie);
    drawDistribution(panels[2].querySelector("canvas"), row.ph);
  }
  for (const node of [...container.children]) if (!keep.has(node.id)) node.remove();
}

function table(id, head, rows, empty) {
  const node = document.getElementById(id);
  node.innerHTML = `<tr>${head.map(h => `<th>${h}</th>`).join("")}</tr>` +
    (rows.length ? rows.map(r => `<tr>${r.map(c => `<td>${c}</td>`).join("")}</tr>`).join("")
                 : `<tr><td colspan="${head.length}" class="muted">${empty}</td></tr>`);
}

function progressText(progress) {
  if (!progress) return "";
  const keys = ["frames", "n_frames", "bytes", "seconds"].filter(k => progress[k] !== undefined);
  return keys.map(k => k === "bytes" ? bytes(progress[k]) : `${progress[k]} ${k}`).join(" · ");
}

function render(state) {
  renderModules(state);
  const counts = {live: 0, stale: 0, down: 0};
  state.services.forEach(s => counts[s.state]++);
  const fps = state.streams.reduce((sum, s) => sum + ((s.stats || {}).frames_per_second || 0), 0);
  document.getElementById("summary").innerHTML =
    `<span><b>${counts.live}</b> live · <b>${counts.stale}</b> stale · <b>${counts.down}</b> down</span>` +
    `<span><b>${Math.round(fps)}</b> frames/s</span><span><b>${state.running.length}</b> running</span>` +
    `<span>broker <span class="pill ${state.broker_connected ? "live" : "down"}">` +
    `${state.broker_connected ? "connected" : "away"}</span></span><span class="muted">${esc(state.service)}</span>`;
  table("services", ["service", "state", "host", "beacon"], state.services.map(s => [
    `<span title="${esc(s.name)}">${esc(shortName(s.name))}</span>`, `<span class="pill ${s.state}">${s.state}</span>`,
    esc(s.host || ""), s.beacon_age_seconds === null ? "gone" : `${Math.max(0, s.beacon_age_seconds)} s`]), "no services");
  table("running", ["request", "service", "progress"], state.running.map(r => [
    `<span class="mono" title="${esc(r.request_id)}">${esc(r.request_id.slice(0, 8))}</span> ${esc(r.request_type)}`,
    esc(shortName(r.service)), esc(progressText(r.progress) || r.message)]), "nothing running");
  table("history", ["received", "request", "type", "service", "caller", "outcome", "took", "message"],
    state.history.map(h => [utc(h.received), `<span class="mono">${esc(h.request_id.slice(0, 8))}</span>`,
      esc(h.request_type || "?"), esc(shortName(h.service)),
      esc(`${h.caller?.user || "?"}@${h.caller?.host || "?"}`),
      `<span class="pill ${h.outcome}">${esc(h.outcome.replace("request_", ""))}</span>`,
      h.ended ? `${(h.ended - h.received).toFixed(2)} s` : "…", esc(h.message)]), "no requests recorded");
  const agent = document.getElementById("agent");
  const names = state.agents.join(",");
  if (agent.dataset.names !== names) {
    const chosen = agent.value;
    agent.dataset.names = names;
    agent.innerHTML = state.agents.map(a => `<option value="${esc(a)}">${esc(shortName(a))}</option>`).join("");
    if (state.agents.includes(chosen)) agent.value = chosen;
  }
  document.getElementById("token-label").style.display = state.token_required ? "" : "none";
}

async function control(action) {
  const value = id => document.getElementById(id).value.trim();
  const bodies = {
    init_sim: () => ({targets: value("agent"), force: true, movie_rate_hz: Number(value("movie-rate")) || 100,
                      module_ids: value("module-ids") ? value("module-ids").split(",").map(Number) : []}),
    stop_hp_io: () => ({targets: value("agent")}),
    write_async: () => ({output_file: value("output-file") || `live_${Date.now()}.h5`,
                         duration_seconds: Number(value("duration")) || 10}),
    write_kill: () => ({request_id: value("kill-id")}),
  };
  const headers = {"Content-Type": "application/json", "X-Caller-User": value("operator") || "live page"};
  if (value("token")) headers.Authorization = `Bearer ${value("token")}`;
  const answer = document.getElementById("control-answer");
  answer.textContent = `${action}…`;
  try {
    const reply = await fetch(`/${action}`, {method: "POST", headers, body: JSON.stringify(bodies[action]())});
    const body = await reply.json();
    answer.textContent = `${action}: ${reply.status} ${body.status}${body.message ? `: ${body.message}` : ""}` +
      (body.request_id ? ` (request ${body.request_id.slice(0, 8)})` : "");
    if (action === "write_async" && body.request_id) document.getElementById("kill-id").value = body.request_id;
  } catch (error) {
    answer.textContent = `${action}: ${error}`;
  }
}

async function poll() {
  try {
    const reply = await fetch("/ui/state.json", {cache: "no-store"});
    if (reply.ok) render(await reply.json());
  } catch (error) {
    document.getElementById("summary").textContent = `proxy not answering: ${error}`;
  }
  setTimeout(poll, CONFIG.refreshSeconds * 1000);
}

document.querySelectorAll("[data-action]").forEach(b => b.addEventListener("click", () => control(b.dataset.action)));
for (const id of ["operator", "token"]) {
  const input = document.getElementById(id);
  input.value = sessionStorage.getItem(id) || "";
  input.addEventListener("change", () => sessionStorage.setItem(id, input.value));
}
const tick = () => { document.getElementById("clock").textContent = new Date().toISOString().slice(11, 19); };
tick();
setInterval(tick, 1000);
render(JSON.parse(document.getElementById("initial-state").textContent));
setTimeout(poll, CONFIG.refreshSeconds * 1000);
