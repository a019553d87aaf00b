// The redwork dashboard: plain JavaScript, no build step. Live data comes from three
// Server-Sent Event streams of the API: /api/stats/stream (queues and workers, every
// second), /api/events (every job event) and /api/jobs/<id>/events (one job). A
// workflow's page re-reads /api/workflows/<id> when an event names it or one of its jobs.
"use strict";

const $ = (selector) => document.querySelector(selector);
const HISTORY = 120; // seconds of rates kept for the chart
const history = []; // [{done, failed}] per second, all queues together
let lastTotals = null;
let jobStream = null;
const FINAL_STATES = ["completed", "failed", "cancelled", "skipped", "purged"];
// Job states in the order a job goes through them, as the legend lists them; their
// colours are the --state-* variables of dashboard.css.
const STATES = ["pending", "waiting", "delayed", "active", "completed", "failed", "skipped", "cancelled"];
// A mark per state besides its colour (as `redwork workflow show` draws them).
const STATE_MARKS = {
  pending: "·", waiting: "○", delayed: "◔", active: "▶",
  completed: "✔", failed: "✘", skipped: "⊘", cancelled: "■",
};
const NODE_EVENTS = ["pending", "ready", "active", "completed", "failed", "skipped", "cancelled"];
const GRAPH_LIMIT = 500; // more jobs than this: a table per level rather than a drawing
const SVG = "http://www.w3.org/2000/svg";
let workflowPage = null; // the workflow page being shown: {queue, id, nodes, ...}
let workflowList = null; // the workflow list last shown: {queue, unfinished}

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
    for (const n of [q.waiting, q.held, q.limited, q.active, q.delayed]) cell(row, n, true);
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
  offerQueues(stats.queues.map((q) => q.name));
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
  // A workflow event's `jobs` holds the workflow's id.
  const kind = event.event.startsWith("workflow_") ? "workflows" : "job";
  for (const id of event.jobs.slice(0, 5)) {
    item.append(link(`#/${kind}/${encodeURIComponent(event.queue)}/${id}`, id.slice(0, 12)), " ");
  }
  if (event.jobs.length > 5) item.append(`+${event.jobs.length - 5} more`);
  list.prepend(item);
  while (list.children.length > 50) list.lastChild.remove();
  workflowEvent(event);
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
    ["finished", when(job.finished_at)], ["priority", job.priority], ["due", when(job.due_at)],
    ["reason", job.reason],
    ["progress", job.progress === null || job.progress === undefined ? "" : JSON.stringify(job.progress)],
  ];
  for (const [name, value] of shown) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = text(value);
    dd.dataset.field = name;
    if (name === "state") dd.dataset.state = text(value);
    fields.append(dt, dd);
  }
  $("#job-args").textContent = JSON.stringify({ args: job.args, kwargs: job.kwargs }, null, 2);
  $("#job-result").textContent = job.result === null ? "" : JSON.stringify(job.result, null, 2);
  $("#job-error").textContent = text(job.error || job.raw);
  // A running job can be cancelled too: its worker aborts it (once asked, the button rests).
  const cancellable = ["pending", "waiting", "delayed"].includes(job.state)
    || (job.state === "active" && !job.cancel_requested);
  $("#job-cancel").disabled = !cancellable;
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

// -- workflows --------------------------------------------------------------------------

// `load` run at most once per `interval()` ms and never twice at once: a request while it
// runs makes it run again afterwards, so the last request is always served.
function throttled(load, interval) {
  const state = { busy: false, again: false, timer: null, last: 0, stopped: false };
  const run = async () => {
    state.timer = null;
    state.busy = true;
    state.last = Date.now();
    try {
      await load();
    } catch (error) {
      say(error.message);
    } finally {
      state.busy = false;
      if (state.again) {
        state.again = false;
        request();
      }
    }
  };
  const request = () => {
    if (state.stopped) return;
    if (state.busy) state.again = true;
    else if (state.timer === null) {
      state.timer = setTimeout(run, Math.max(0, state.last + interval() - Date.now()));
    }
  };
  request.stop = () => {
    state.stopped = true;
    clearTimeout(state.timer);
  };
  return request;
}

function svg(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, value);
  return element;
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function badge(state) {
  const span = document.createElement("span");
  span.className = "badge";
  span.dataset.state = state;
  span.textContent = state;
  return span;
}

function shorten(value, length) {
  return value.length <= length ? value : `${value.slice(0, length - 1)}…`;
}

// Ids of up to 16 characters as they are; longer ones (generated) cut to the shortest
// prefix of 8 characters or more that tells them apart (as the CLI does).
function shortIds(ids) {
  for (const length of [8, 12, 16]) {
    const short = new Map(ids.map((id) => [id, id.length <= 16 ? id : id.slice(0, length)]));
    if (new Set(short.values()).size === ids.length) return short;
  }
  return new Map(ids.map((id) => [id, id]));
}

function lastLine(value) {
  return text(value).split("\n").filter(Boolean).pop() || "";
}

function workflowHref(queue, id) {
  return `#/workflows/${encodeURIComponent(queue)}/${encodeURIComponent(id)}`;
}

function jobHref(queue, id) {
  return `#/job/${encodeURIComponent(queue)}/${encodeURIComponent(id)}`;
}

// The overview's list: a queue's recent workflows.

const refreshList = throttled(loadWorkflowList, () => 500);

function offerQueues(names) {
  const select = $("#workflows-queue");
  const chosen = select.value || "default";
  const wanted = [...new Set(["default", chosen, ...names])].sort();
  if (wanted.join("\n") === [...select.options].map((o) => o.value).join("\n")) return;
  select.replaceChildren(...wanted.map((name) => new Option(name, name)));
  select.value = chosen;
}

function chooseQueue(name) {
  offerQueues([name]);
  $("#workflows-queue").value = name;
}

function loadWorkflows() {
  refreshList();
}

async function loadWorkflowList() {
  const queue = $("#workflows-queue").value || "default";
  const rows = await call("GET", `/api/workflows?queue=${encodeURIComponent(queue)}&limit=50`);
  if (queue !== $("#workflows-queue").value) return refreshList(); // changed meanwhile
  workflowList = { queue, unfinished: rows.some((w) => ["pending", "running"].includes(w.status)) };
  const body = $("#workflows tbody");
  body.replaceChildren();
  for (const w of rows) {
    const row = body.insertRow();
    row.dataset.workflow = w.id;
    cell(row, "").append(link(workflowHref(w.queue, w.id), w.id));
    cell(row, w.name);
    cell(row, "").append(badge(w.status));
    cell(row, `${w.counts.ended}/${w.counts.total}`, true);
    for (const n of ["succeeded", "failed", "skipped", "cancelled"]) cell(row, w.counts[n], true);
    cell(row, when(w.created_at));
  }
  $("#workflows-none").hidden = rows.length > 0;
}

// One workflow's page: its header, and its jobs drawn as a graph.

function showWorkflow(queue, id) {
  $("#wf-id").textContent = id;
  $("#wf-queue-link").href = `#/workflows/${encodeURIComponent(queue)}`;
  $("#wf-queue-link").textContent = `workflows in ${queue}`;
  for (const part of ["#wf-fields", "#wf-legend", "#wf-graph"]) $(part).replaceChildren();
  $("#wf-cancel").hidden = true;
  const page = { queue, id, nodes: null, view: null, drawn: null, elements: new Map() };
  const big = () => page.view !== null && page.view.nodes.length > GRAPH_LIMIT;
  page.refresh = throttled(() => loadWorkflow(page), () => (big() ? 2000 : 250));
  workflowPage = page;
  page.refresh();
}

function leaveWorkflow() {
  if (workflowPage) workflowPage.refresh.stop();
  workflowPage = null;
}

function refreshWorkflow(page) {
  page.refresh();
}

async function loadWorkflow(page) {
  let view;
  try {
    view = await call(
      "GET",
      `/api/workflows/${encodeURIComponent(page.id)}?queue=${encodeURIComponent(page.queue)}`,
    );
  } catch (error) {
    // Not there (yet): its workflow_submitted event names it, and reads it again.
    if (page.nodes === null) page.nodes = new Set();
    throw error;
  }
  if (workflowPage !== page) return;
  page.view = view;
  page.nodes = new Set(view.nodes.map((n) => n.id));
  renderWorkflow(page, view);
}

// An event of the firehose: read the workflow shown again if the event names it or one
// of its jobs (any event of its queue until its jobs are known); the overview's list if
// a workflow of its queue changed.
function workflowEvent(event) {
  const page = workflowPage;
  if (page && event.queue === page.queue) {
    const nodes = page.nodes;
    if (nodes === null || event.jobs.some((id) => id === page.id || nodes.has(id))) page.refresh();
  }
  if (!$("#overview").hidden && workflowList && event.queue === workflowList.queue) {
    const node = workflowList.unfinished && NODE_EVENTS.includes(event.event);
    if (event.event.startsWith("workflow_") || node) refreshList();
  }
}

function renderWorkflow(page, view) {
  const counts = view.counts;
  const fields = $("#wf-fields");
  fields.replaceChildren();
  // Three to a row (see dashboard.css): who, when, then the counts.
  const shown = [
    ["name", view.name], ["queue", view.queue], ["status", view.status],
    ["created", when(view.created_at)], ["started", when(view.started_at)],
    ["finished", when(view.finished_at)],
    ["jobs", counts.total], ["ended", counts.ended], ["succeeded", counts.succeeded],
    ["failed", counts.failed], ["skipped", counts.skipped], ["cancelled", counts.cancelled],
  ];
  for (const [name, value] of shown) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = text(value);
    dd.dataset.field = name;
    if (name === "status") dd.dataset.state = view.status;
    fields.append(dt, dd);
  }
  const cancel = $("#wf-cancel");
  cancel.hidden = !["pending", "running"].includes(view.status);
  cancel.onclick = () => cancelWorkflow(page);
  renderLegend(view.nodes);
  if (view.nodes.length > GRAPH_LIMIT) drawSummary(page, view);
  else drawGraph(page, view);
}

function renderLegend(nodes) {
  const tally = Object.fromEntries(STATES.map((state) => [state, 0]));
  for (const node of nodes) tally[node.state] = (tally[node.state] || 0) + 1;
  const legend = $("#wf-legend");
  legend.replaceChildren();
  for (const [state, count] of Object.entries(tally)) {
    const item = document.createElement("li");
    item.dataset.state = state;
    item.textContent = `${STATE_MARKS[state] || "?"} ${state} `;
    const n = document.createElement("span");
    n.className = "n";
    n.textContent = count;
    item.append(n);
    legend.append(item);
  }
}

async function cancelWorkflow(page) {
  if (!confirm(`Cancel every job of workflow ${page.id} that has not started?`)) return;
  try {
    const view = await call(
      "POST",
      `/api/workflows/${encodeURIComponent(page.id)}/cancel?queue=${encodeURIComponent(page.queue)}`,
    );
    if (workflowPage !== page) return;
    say("workflow cancelled");
    page.view = view;
    renderWorkflow(page, view);
  } catch (error) {
    say(`cancel failed: ${error.message}`);
  }
  page.refresh();
}

// Levels: a job's level is one more than its deepest dependency's (0 without any).
function levelsOf(nodes) {
  const index = new Map(nodes.map((node, i) => [node.id, i]));
  const deps = nodes.map((node) =>
    node.depends_on.map((id) => index.get(id)).filter((j) => j !== undefined),
  );
  const level = [];
  nodes.forEach((_, i) => {
    // Dependencies come first (submit order); one that does not is taken as level 0.
    level[i] = Math.max(-1, ...deps[i].map((j) => (j < i ? level[j] : 0))) + 1;
  });
  const levels = [];
  nodes.forEach((_, i) => (levels[level[i]] ||= []).push(i));
  return { deps, level, levels };
}

const BOX = { width: 184, height: 44, columnGap: 72, rowGap: 14, pad: 16 };

// A layered drawing, left to right: a column per level. Each column is ordered by the
// mean height of the jobs' dependencies (then of their dependants, and again), which
// uncrosses most edges.
function layout(nodes) {
  const { deps, level, levels } = levelsOf(nodes);
  const dependants = nodes.map(() => []);
  deps.forEach((list, i) => list.forEach((j) => dependants[j].push(i)));
  const step = BOX.height + BOX.rowGap;
  const rows = Math.max(...levels.map((column) => column.length));
  const y = [];
  const place = (l) => {
    const offset = ((rows - levels[l].length) * step) / 2;
    levels[l].forEach((i, k) => {
      y[i] = BOX.pad + offset + k * step;
    });
  };
  const reorder = (l, neighbours) => {
    const key = new Map(
      levels[l].map((i) => {
        const list = neighbours[i];
        return [i, list.length ? list.reduce((sum, j) => sum + y[j], 0) / list.length : y[i]];
      }),
    );
    levels[l].sort((a, b) => key.get(a) - key.get(b)); // stable: ties keep their order
    place(l);
  };
  levels.forEach((_, l) => place(l));
  for (let sweep = 0; sweep < 2; sweep++) {
    for (let l = 1; l < levels.length; l++) reorder(l, deps);
    for (let l = levels.length - 2; l >= 0; l--) reorder(l, dependants);
  }
  for (let l = 1; l < levels.length; l++) reorder(l, deps);
  const x = level.map((l) => BOX.pad + l * (BOX.width + BOX.columnGap));
  const width = 2 * BOX.pad + levels.length * BOX.width + (levels.length - 1) * BOX.columnGap;
  const height = 2 * BOX.pad + rows * step - BOX.rowGap;
  return { deps, levels, x, y, width, height };
}

function nodeLabel(node) {
  return `${node.task || "?"} ${node.id}: ${node.state}`;
}

function nodeTooltip(node) {
  const lines = [`${node.task || "?"} ${node.id}`, node.state];
  if (node.state === "completed") lines.push(`= ${shorten(JSON.stringify(node.result), 200)}`);
  else if (node.error) lines.push(`${text(node.reason)}: ${shorten(lastLine(node.error), 200)}`);
  return lines.join("\n");
}

function updateNode(group, node) {
  group.dataset.state = node.state;
  group.setAttribute("aria-label", nodeLabel(node));
  group.querySelector("title").textContent = nodeTooltip(node);
  group.querySelector(".node-state").textContent = `${STATE_MARKS[node.state] || "?"} ${node.state}`;
}

function drawGraph(page, view) {
  const nodes = view.nodes;
  // The graph of a workflow never changes, its states do: draw it once, then update.
  const shape = nodes.map((n) => `${n.id}<${n.depends_on.join(",")}`).join(";");
  if (page.drawn === shape) {
    for (const node of nodes) updateNode(page.elements.get(node.id), node);
    return;
  }
  const { deps, levels, x, y, width, height } = layout(nodes);
  const short = shortIds(nodes.map((n) => n.id));
  const edgeCount = deps.reduce((sum, list) => sum + list.length, 0);
  const drawing = svg("svg", {
    id: "wf-svg",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "group",
    "aria-labelledby": "wf-svg-title",
  });
  const title = svg("title", { id: "wf-svg-title" });
  title.textContent = `Workflow ${view.id}: ${nodes.length} jobs in ${levels.length} levels, ${edgeCount} dependencies`;
  const marker = svg("marker", {
    id: "wf-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
  });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z" }));
  const defs = svg("defs");
  defs.append(marker);
  const edges = svg("g", { class: "edges" });
  const middle = BOX.height / 2;
  nodes.forEach((node, i) => {
    for (const j of deps[i]) {
      const [x1, y1, x2, y2] = [x[j] + BOX.width, y[j] + middle, x[i], y[i] + middle];
      const bend = Math.max(BOX.columnGap / 2, (x2 - x1) / 3);
      const edge = svg("path", {
        class: "edge",
        d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
        "marker-end": "url(#wf-arrow)",
      });
      edge.dataset.from = nodes[j].id;
      edge.dataset.to = node.id;
      edges.append(edge);
    }
  });
  const boxes = svg("g", { class: "nodes" });
  page.elements = new Map();
  nodes.forEach((node, i) => {
    const group = svg("g", {
      class: "node", transform: `translate(${x[i]},${y[i]})`, tabindex: 0, role: "link",
    });
    group.dataset.id = node.id;
    group.append(
      svg("title"),
      svg("rect", { width: BOX.width, height: BOX.height, rx: 6 }),
    );
    const task = svg("text", { class: "node-task", x: 10, y: 18 });
    task.textContent = shorten(node.task || "?", 24);
    const id = svg("text", { class: "node-id", x: 10, y: 35 });
    id.textContent = short.get(node.id);
    const state = svg("text", { class: "node-state", x: BOX.width - 10, y: 35 });
    group.append(task, id, state);
    const open = () => {
      location.hash = jobHref(node.queue || view.queue, node.id);
    };
    group.addEventListener("click", open);
    group.addEventListener("keydown", (key) => {
      if (key.key === "Enter" || key.key === " ") {
        key.preventDefault();
        open();
      }
    });
    updateNode(group, node);
    page.elements.set(node.id, group);
    boxes.append(group);
  });
  drawing.append(title, defs, edges, boxes);
  $("#wf-graph").replaceChildren(drawing);
  page.drawn = shape;
}

// Too many jobs to draw: how many are in each state, level by level (levels grouped
// into at most 100 rows), and links to the first failed jobs.
function drawSummary(page, view) {
  const nodes = view.nodes;
  const { levels } = levelsOf(nodes);
  const per = Math.ceil(levels.length / 100);
  const table = document.createElement("table");
  table.id = "wf-summary";
  const caption = table.createCaption();
  caption.textContent = `${nodes.length} jobs in ${levels.length} levels, too many to draw: jobs per level and state`;
  const head = table.createTHead().insertRow();
  for (const name of ["level", "jobs", ...STATES]) {
    const th = document.createElement("th");
    th.textContent = name;
    if (STATES.includes(name)) th.dataset.state = name;
    head.append(th);
  }
  const body = table.createTBody();
  for (let first = 0; first < levels.length; first += per) {
    const last = Math.min(levels.length, first + per) - 1;
    const members = levels.slice(first, last + 1).flat();
    const tally = Object.fromEntries(STATES.map((state) => [state, 0]));
    for (const i of members) tally[nodes[i].state] = (tally[nodes[i].state] || 0) + 1;
    const row = body.insertRow();
    row.dataset.level = first === last ? first : `${first}-${last}`;
    cell(row, first === last ? first : `${first}–${last}`);
    cell(row, members.length, true);
    for (const state of STATES) cell(row, tally[state] || "", true).dataset.state = state;
  }
  const failed = nodes.filter((n) => n.state === "failed");
  const list = document.createElement("p");
  list.id = "wf-failed";
  if (failed.length) {
    list.append("failed: ");
    for (const node of failed.slice(0, 20)) {
      list.append(link(jobHref(node.queue || view.queue, node.id), `${node.task || "?"} ${node.id.slice(0, 8)}`), " ");
    }
    if (failed.length > 20) list.append(`+${failed.length - 20} more`);
  }
  $("#wf-graph").replaceChildren(table, list);
  page.drawn = null;
}

// -- routing ----------------------------------------------------------------------------

function route() {
  say("");
  if (jobStream) {
    jobStream.close();
    jobStream = null;
  }
  leaveWorkflow();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  for (const section of ["overview", "failed", "job", "workflow"]) $(`#${section}`).hidden = true;
  if (parts[0] === "workflows" && parts.length >= 3 && parts[2]) {
    $("#workflow").hidden = false;
    showWorkflow(parts[1], parts[2]);
  } else if (parts[0] === "failed" && parts[1]) {
    $("#failed").hidden = false;
    showFailed(parts[1]).catch((error) => say(error.message));
  } else if (parts[0] === "job" && parts.length >= 2) {
    $("#job").hidden = false;
    const [queue, id] = parts.length >= 3 ? [parts[1], parts[2]] : ["", parts[1]];
    showJob(queue, id);
  } else {
    $("#overview").hidden = false;
    if (parts[0] === "workflows" && parts[1]) {
      chooseQueue(parts[1]);
      $("#workflows-heading").scrollIntoView();
    }
    loadWorkflows();
  }
}

function start() {
  const stats = new EventSource("/api/stats/stream");
  stats.addEventListener("stats", (message) => renderStats(JSON.parse(message.data)));
  stats.onopen = () => $("#live").classList.add("on");
  stats.onerror = () => $("#live").classList.remove("on");
  const events = new EventSource("/api/events");
  events.addEventListener("event", (message) => onEvent(JSON.parse(message.data)));
  // After a reconnection (of the browser, or of the server to Redis) events may have been
  // missed: read the workflows again.
  let opened = false;
  const missedSome = () => {
    if (workflowPage) refreshWorkflow(workflowPage);
    if (!$("#overview").hidden) loadWorkflows();
  };
  events.onopen = () => {
    if (opened) missedSome();
    opened = true;
  };
  events.addEventListener("resync", missedSome);
  $("#workflows-queue").onchange = () => loadWorkflows();
  $("#find").onsubmit = (submit) => {
    submit.preventDefault();
    const id = $("#find-id").value.trim();
    if (id) location.hash = `#/job/${encodeURIComponent(id)}`;
  };
  offerQueues([]);
  window.addEventListener("hashchange", route);
  route();
}

start();
