// The redwork dashboard: plain JavaScript, no build step. Live data comes from three
// Server-Sent Event streams of the API: /api/stats/stream (queues and workers, every
// second), /api/events (every job event) and /api/jobs/<id>/events (one job).
"use strict";

const $ = (selector) => document.querySelector(selector);
const HISTORY = 120; // seconds of rates kept for the chart
const history = []; // [{done, failed}] per second, all queues together
let lastTotals = null;
let jobStream = null;
const FINAL_STATES = ["completed", "failed", "cancelled", "purged"];

function text(value) {
  return value === null || value === undefined ? "" : String(value);
}

function cell(row, value, numeric) {
  const td = row.insertCell();
  td.textContent = text(value);
  if (numeric) td.className = "n";
  return td;
}

function link(href, label) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = label;
  return a;
}

function say(message) {
  $("#message").textContent = message;
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// -- overview ---------------------------------------------------------------------------

function renderStats(stats) {
  const totals = { done: 0, failed: 0 };
  const rows = $("#queues tbody");
  rows.replaceChildren();
  const previous = lastTotals || {};
  const current = {};
  for (const q of stats.queues) {
    const done = q.totals.completed || 0;
    const failed = q.totals.failed || 0;
    current[q.name] = { done, failed };
    const before = previous[q.name] || { done, failed };
    const row = rows.insertRow();
    row.dataset.queue = q.name;
    cell(row, q.name);
    for (const n of [q.waiting, q.held, q.active, q.delayed]) cell(row, n, true);
    const failedCell = cell(row, "", true);
    failedCell.append(link(`#/failed/${encodeURIComponent(q.name)}`, String(q.failed)));
    cell(row, done - before.done, true);
    cell(row, failed - before.failed, true);
    totals.done += done - before.done;
    totals.failed += failed - before.failed;
  }
  if (lastTotals !== null) {
    history.push(totals);
    if (history.length > HISTORY) history.shift();
  }
  lastTotals = current;
  drawChart();
  const workers = $("#workers tbody");
  workers.replaceChildren();
  const now = Date.now();
  for (const w of stats.workers) {
    const row = workers.insertRow();
    row.dataset.worker = w.id;
    cell(row, w.id);
    cell(row, w.host);
    cell(row, w.pid, true);
    cell(row, w.queues.join(", "));
    for (const n of [w.concurrency, w.running, w.done, w.failed]) cell(row, n, true);
    cell(row, w.last_seen ? `${Math.max(0, (now - w.last_seen) / 1000).toFixed(1)} s` : "", true);
  }
}

function drawChart() {
  const canvas = $("#chart");
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const top = Math.max(1, ...history.map((h) => Math.max(h.done, h.failed)));
  context.fillStyle = "#66707c";
  context.font = "11px sans-serif";
  context.fillText(`${top}/s`, 4, 12);
  const line = (key, colour) => {
    context.strokeStyle = colour;
    context.lineWidth = 2;
    context.beginPath();
    history.forEach((point, i) => {
      const x = width - (history.length - 1 - i) * (width / HISTORY);
      const y = height - 4 - (point[key] / top) * (height - 20);
      if (i === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
  };
  line("done", "#1f7a3f");
  line("failed", "#b3261e");
}

function onEvent(event) {
  const list = $("#events");
  const item = document.createElement("li");
  const time = new Date(event.at).toLocaleTimeString();
  item.textContent = `${time} ${event.queue} ${event.event} `;
  for (const id of event.jobs.slice(0, 5)) {
    item.append(link(`#/job/${encodeURIComponent(event.queue)}/${id}`, id.slice(0, 12)), " ");
  }
  if (event.jobs.length > 5) item.append(`+${event.jobs.length - 5} more`);
  list.prepend(item);
  while (list.children.length > 50) list.lastChild.remove();
}

// -- failed jobs ------------------------------------------------------------------------

async function showFailed(queue) {
  $("#failed-queue").textContent = queue;
  const page = await call("GET", `/api/queues/${encodeURIComponent(queue)}/failed?limit=200`);
  const rows = $("#failed-jobs tbody");
  rows.replaceChildren();
  for (const job of page.jobs) {
    const row = rows.insertRow();
    row.dataset.job = job.id;
    cell(row, "").append(link(`#/job/${encodeURIComponent(queue)}/${job.id}`, job.id));
    cell(row, job.task);
    cell(row, job.reason);
    cell(row, text(job.error).split("\n").filter(Boolean).pop() || "");
    cell(row, job.finished_at ? new Date(job.finished_at).toLocaleString() : "");
    const actions = cell(row, "");
    const retry = document.createElement("button");
    retry.textContent = "Retry";
    retry.className = "retry";
    retry.onclick = () => act("retry", queue, [job.id]);
    const purge = document.createElement("button");
    purge.textContent = "Purge";
    purge.className = "purge danger";
    purge.onclick = () => act("purge", queue, [job.id]);
    actions.append(retry, " ", purge);
  }
  $("#retry-all").onclick = () => act("retry", queue, null);
  $("#purge-all").onclick = () => {
    if (confirm(`Delete every failed job of ${queue} for good?`)) act("purge", queue, null);
  };
}

async function act(action, queue, ids) {
  try {
    const body = ids ? { ids } : { all: true };
    const done = await call("POST", `/api/queues/${encodeURIComponent(queue)}/failed/${action}`, body);
    say(`${action}: ${done.count} job(s)`);
  } catch (error) {
    say(`${action} failed: ${error.message}`);
  }
  showFailed(queue);
}

// -- one job ----------------------------------------------------------------------------

function renderJob(job) {
  $("#job-id").textContent = job.id;
  const fields = $("#job-fields");
  fields.replaceChildren();
  const when = (ms) => (ms ? new Date(ms).toLocaleString() : "");
  const shown = [
    ["queue", job.queue], ["state", job.state], ["task", job.task], ["key", job.key],
    ["attempt", `${job.attempt} of ${text(job.max_attempts)}`], ["worker", job.worker],
    ["enqueued", when(job.enqueued_at)], ["started", when(job.started_at)],
    ["finished", when(job.finished_at)], ["reason", job.reason],
    ["progress", job.progress === null || job.progress === undefined ? "" : JSON.stringify(job.progress)],
  ];
  for (const [name, value] of shown) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = text(value);
    dd.dataset.field = name;
    fields.append(dt, dd);
  }
  $("#job-args").textContent = JSON.stringify({ args: job.args, kwargs: job.kwargs }, null, 2);
  $("#job-result").textContent = job.result === null ? "" : JSON.stringify(job.result, null, 2);
  $("#job-error").textContent = text(job.error || job.raw);
  $("#job-cancel").disabled = !["waiting", "delayed"].includes(job.state);
  $("#job-retry").disabled = job.state !== "failed";
  $("#job-cancel").onclick = () => jobAction(job, `/api/jobs/${job.id}/cancel?queue=${encodeURIComponent(job.queue)}`, null);
  $("#job-retry").onclick = () => jobAction(job, `/api/queues/${encodeURIComponent(job.queue)}/failed/retry`, { ids: [job.id] });
}

async function jobAction(job, path, body) {
  try {
    await call("POST", path, body || undefined);
  } catch (error) {
    say(error.message);
  }
  showJob(job.queue, job.id);
}

async function showJob(queue, id) {
  const where = queue ? `?queue=${encodeURIComponent(queue)}` : "";
  let job;
  try {
    job = await call("GET", `/api/jobs/${encodeURIComponent(id)}${where}`);
  } catch (error) {
    say(error.message);
    return;
  }
  renderJob(job);
  const timeline = await call("GET", `/api/jobs/${job.id}/timeline?queue=${encodeURIComponent(job.queue)}`);
  $("#job-timeline").replaceChildren();
  for (const entry of timeline) addToTimeline(entry);
  if (jobStream) jobStream.close();
  const stream = new EventSource(`/api/jobs/${job.id}/events?queue=${encodeURIComponent(job.queue)}`);
  jobStream = stream;
  stream.addEventListener("job", (message) => {
    const update = JSON.parse(message.data);
    // The server ends the stream after a final state: close it, or EventSource would
    // reconnect every few seconds for as long as the page stays open.
    if (FINAL_STATES.includes(update.state)) stream.close();
    if (update.event !== "snapshot") addToTimeline(update);
    if (update.job) {
      job = update.job;
    } else {
      job = { ...job, state: update.state, attempt: update.attempt };
      if ("progress" in update) job.progress = update.progress;
    }
    renderJob(job);
  });
}

function addToTimeline(entry) {
  const item = document.createElement("li");
  item.textContent = `${new Date(entry.at).toLocaleTimeString()} ${entry.event} (attempt ${entry.attempt})`;
  $("#job-timeline").append(item);
}

// -- routing ----------------------------------------------------------------------------

function route() {
  say("");
  if (jobStream) {
    jobStream.close();
    jobStream = null;
  }
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  for (const section of ["overview", "failed", "job"]) $(`#${section}`).hidden = true;
  if (parts[0] === "failed" && parts[1]) {
    $("#failed").hidden = false;
    showFailed(parts[1]).catch((error) => say(error.message));
  } else if (parts[0] === "job" && parts.length >= 2) {
    $("#job").hidden = false;
    const [queue, id] = parts.length >= 3 ? [parts[1], parts[2]] : ["", parts[1]];
    showJob(queue, id);
  } else {
    $("#overview").hidden = false;
  }
}

function start() {
  const stats = new EventSource("/api/stats/stream");
  stats.addEventListener("stats", (message) => renderStats(JSON.parse(message.data)));
  stats.onopen = () => $("#live").classList.add("on");
  stats.onerror = () => $("#live").classList.remove("on");
  const events = new EventSource("/api/events");
  events.addEventListener("event", (message) => onEvent(JSON.parse(message.data)));
  $("#find").onsubmit = (submit) => {
    submit.preventDefault();
    const id = $("#find-id").value.trim();
    if (id) location.hash = `#/job/${encodeURIComponent(id)}`;
  };
  window.addEventListener("hashchange", route);
  route();
}

start();
