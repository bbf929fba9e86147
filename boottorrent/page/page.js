// The status page's script (boottorrent/page.py): polls /status once a
// second and draws it. Every string from the server is put into the page
// with textContent or as an attribute's value, never parsed as markup: an
// image name or a message a machine reported is shown as the characters
// it holds.
"use strict";

const POLL_EVERY = 1000; // ms between the end of one poll and the next
const PHASES = JSON.parse(document.body.dataset.phases);
const BOOTED = new Set(JSON.parse(document.body.dataset.booted));

const view = { status: null, sortKey: "address", ascending: true, failedSince: null,
               drawMs: 0 };

// ---------------------------------------------------------------- formats

// As boottorrent.pivotal.console.human_bytes, so that page and terminal agree.
function humanBytes(count) {
  for (const unit of ["B", "KiB", "MiB", "GiB"]) {
    if (Math.abs(count) < 1024 || unit === "GiB") {
      return unit === "B" ? `${count.toFixed(0)} ${unit}` : `${count.toFixed(1)} ${unit}`;
    }
    count /= 1024;
  }
}

function percent(fraction) {
  return `${Math.round(fraction * 100)}%`;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

// A cell of text; with bytes, its exact count as the cell's title.
function cell(text, className, bytes) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  if (bytes !== undefined) td.title = `${bytes} bytes`;
  return td;
}

function bytesCell(count) {
  return cell(humanBytes(count), "number", count);
}

function isBooted(machine) {
  return BOOTED.has(machine.phase);
}

// What machines got from the server and from each other, and the peers' share.
function carried(machines) {
  const fromServer = machines.reduce((sum, m) => sum + m.from_server, 0);
  const fromPeers = machines.reduce((sum, m) => sum + m.from_peers, 0);
  const total = fromServer + fromPeers;
  return { fromServer, fromPeers, share: total ? percent(fromPeers / total) : "" };
}

// ---------------------------------------------------------------- summary

function summaryText(status) {
  const machines = status.clients;
  const counts = {};
  for (const machine of machines) {
    const phase = isBooted(machine) ? "booted" : machine.phase;
    counts[phase] = (counts[phase] || 0) + 1;
  }
  const phases = Object.keys(counts).sort().map((phase) => `${counts[phase]} ${phase}`);
  const bytes = carried(machines);
  return `${machines.length} machines` + (phases.length ? `: ${phases.join(", ")}` : "") +
    ` \u00b7 they got ${humanBytes(bytes.fromServer)} from the server and ` +
    `${humanBytes(bytes.fromPeers)} from each other` +
    (bytes.share ? ` (peers carried ${bytes.share})` : "") +
    ` \u00b7 updated ${clock(status.time)}`;
}

// ---------------------------------------------------------------- images

function drawImages(status) {
  const rows = [];
  const names = new Map(status.images.map((image) => [image.name, image]));
  for (const machine of status.clients) {
    if (machine.image && !names.has(machine.image)) names.set(machine.image, null);
  }
  for (const [name, image] of names) {
    const machines = status.clients.filter((m) => m.image === name);
    const bytes = carried(machines);
    const tr = document.createElement("tr");
    tr.dataset.image = name;
    tr.append(
      cell(name),
      image ? bytesCell(image.size) : cell("not registered", "number"),
      cell(String(machines.length), "number"),
      cell(String(machines.filter(isBooted).length), "number"),
      bytesCell(bytes.fromServer),
      bytesCell(bytes.fromPeers),
      cell(bytes.share, "number"),
      image ? bytesCell(image.uploaded + image.http_sent) : cell("", "number"));
    rows.push(tr);
  }
  document.querySelector("#images tbody").replaceChildren(...rows);
}

// ---------------------------------------------------------------- chart

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 900, HEIGHT = 220, TOP = 10, BOTTOM = 20;

function svg(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function drawChart(throughput) {
  const chart = document.getElementById("chart");
  const times = throughput.time;
  const parts = [];
  const peak = Math.max(1, ...throughput.server, ...throughput.peers);
  const y = (rate) => TOP + (HEIGHT - TOP - BOTTOM) * (1 - rate / peak);
  for (const fraction of [0, 0.5, 1]) {
    parts.push(svg("line", { class: "grid", x1: 0, x2: WIDTH, y1: y(peak * fraction),
                             y2: y(peak * fraction) }));
  }
  if (times.length > 1) {
    const first = times[0], span = times[times.length - 1] - first || 1;
    const x = (time) => (WIDTH * (time - first)) / span;
    for (const series of ["server", "peers"]) {
      const points = times.map((time, i) => `${x(time).toFixed(1)},` +
                                            `${y(throughput[series][i]).toFixed(1)}`);
      parts.push(svg("polyline", { class: series, points: points.join(" ") }));
    }
    const start = svg("text", { x: 4, y: HEIGHT - 5 });
    start.textContent = clock(first);
    const end = svg("text", { x: WIDTH - 4, y: HEIGHT - 5, "text-anchor": "end" });
    end.textContent = clock(first + span);
    parts.push(start, end);
  }
  chart.replaceChildren(...parts);
  document.getElementById("chart-scale").textContent =
    `\u00b7 top line: ${humanBytes(peak)}/s`;
}

// ---------------------------------------------------------------- machines

const SORT_VALUES = {
  address: (m) => m.address.split(".").map((n) => n.padStart(3, "0")).join("."),
  heard: (m) => -m.received,
  server: serverOf,
};

// The follower a machine booted from, on a primary (boottorrent/followers.py).
function serverOf(machine) {
  return machine.server || "this one";
}

function sortValue(machine, key) {
  return (SORT_VALUES[key] || ((m) => m[key]))(machine);
}

function matches(machine, image, phase, text) {
  if (image && machine.image !== image) return false;
  if (phase && !(phase === "booted" ? isBooted(machine) : machine.phase === phase)) return false;
  if (!text) return true;
  return [machine.mac, machine.address, serverOf(machine), machine.hostname, machine.image,
    machine.message]
    .some((field) => field.toLowerCase().includes(text));
}

function phaseCell(machine) {
  const td = document.createElement("td");
  if (isBooted(machine)) {
    td.className = "phase-booted";
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = ` (${machine.phase})`;
    td.append("booted", detail);
  } else {
    td.textContent = machine.phase;
    if (machine.phase === "failed") td.className = "phase-failed";
  }
  return td;
}

function progressCell(machine) {
  const td = cell("", "number");
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = machine.progress;
  td.append(bar, ` ${percent(machine.progress)}`);
  return td;
}

function drawMachines(status) {
  const image = document.getElementById("filter-image").value;
  const phase = document.getElementById("filter-phase").value;
  const text = document.getElementById("filter-text").value.trim().toLowerCase();
  const shown = status.clients.filter((m) => matches(m, image, phase, text));
  const direction = view.ascending ? 1 : -1;
  shown.sort((a, b) => {
    const left = sortValue(a, view.sortKey), right = sortValue(b, view.sortKey);
    return left < right ? -direction : left > right ? direction : 0;
  });
  const rows = shown.map((machine) => {
    const tr = document.createElement("tr");
    tr.dataset.address = machine.address;
    tr.append(
      cell(machine.mac), cell(machine.address), cell(serverOf(machine)),
      cell(machine.hostname), cell(machine.image),
      phaseCell(machine), progressCell(machine),
      cell(`${humanBytes(machine.download_rate)}/s`, "number"),
      cell(String(machine.peers), "number"),
      bytesCell(machine.from_server), bytesCell(machine.from_peers),
      cell(`${Math.max(0, Math.round(status.time - machine.received))} s ago`, "number"),
      cell(machine.message, "message"));
    return tr;
  });
  document.querySelector("#machines tbody").replaceChildren(...rows);
  document.getElementById("shown").textContent =
    `${shown.length} of ${status.clients.length} machines shown`;
}

// The image filter offers every image registered or reported.
function updateImageFilter(status) {
  const select = document.getElementById("filter-image");
  const names = new Set([...status.images.map((i) => i.name),
                         ...status.clients.map((m) => m.image).filter(Boolean)]);
  const offered = new Set([...select.options].map((option) => option.value));
  for (const name of [...names].sort()) {
    if (!offered.has(name)) select.add(new Option(name, name));
  }
}

function draw() {
  const status = view.status;
  if (!status) return;
  const started = performance.now();
  document.getElementById("summary").textContent = summaryText(status);
  drawChart(status.throughput);
  drawImages(status);
  updateImageFilter(status);
  drawMachines(status);
  view.drawMs = performance.now() - started; // what `make bench` measures
}

// ---------------------------------------------------------------- polling

async function poll() {
  const summary = document.getElementById("summary");
  try {
    const response = await fetch("status", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    view.status = await response.json();
    view.failedSince = null;
    summary.classList.remove("stale");
    draw();
  } catch (error) {
    view.failedSince = view.failedSince || Date.now() / 1000;
    summary.classList.add("stale");
    summary.textContent = `Cannot reach the server since ${clock(view.failedSince)} ` +
      `(${error.message}); trying again every second.`;
  }
  setTimeout(poll, POLL_EVERY);
}

function setUp() {
  const phaseSelect = document.getElementById("filter-phase");
  for (const phase of ["booted", ...PHASES]) phaseSelect.add(new Option(phase, phase));
  const filters = document.getElementById("filters");
  filters.addEventListener("input", draw);
  filters.addEventListener("submit", (event) => event.preventDefault());
  for (const th of document.querySelectorAll("#machines th[data-key]")) {
    th.addEventListener("click", () => {
      view.ascending = view.sortKey === th.dataset.key ? !view.ascending : true;
      view.sortKey = th.dataset.key;
      for (const other of document.querySelectorAll("#machines th[data-key]")) {
        other.removeAttribute("aria-sort");
      }
      th.setAttribute("aria-sort", view.ascending ? "ascending" : "descending");
      draw();
    });
  }
  document.querySelector('#machines th[data-key="address"]')
    .setAttribute("aria-sort", "ascending");
  poll();
}

setUp();
