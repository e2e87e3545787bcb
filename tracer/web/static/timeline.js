// The timeline page: filters and paging over /api/v1/sockets, the lifelines, the
// table of the same sockets, the selected socket with its ladder, and live updates
// from /api/v1/stream (polling every 5 s where the stream is refused or missing).
//
// Plain ES modules, no build step. The page marks its progress on <body> for tests
// and scripts: data-status (loading, ready, error), data-rendered (sockets drawn),
// data-table-rows, data-live (stream, polling, connecting, off), data-ladder.

import { clock, closeText, dateTime, duration, endpoint, process, spanEnd, toLocalInput } from "./format.js";
import { ApiError, getJson } from "./api.js";
import { startAttention } from "./attention.js";
import { orderPeers, renderLadder } from "./ladder.js";
import { Lifelines } from "./lifelines.js";

const API = "api/v1"; // relative: the page may sit behind a path prefix
const API_MAX_LIMIT = 1000;
const POLL_MS = 5000;
const STREAM_RETRY_MS = 60000;
const MIN_REFRESH_MS = 1000;
// The table shows the page's sockets 100 rows at a time: a table lays out every row it
// holds, and 10,000 rows took seconds in Chromium. The lifelines draw them all.
const TABLE_ROWS = 100;

const $ = (id) => document.getElementById(id);
const body = document.body;
const form = $("filters");
const STATES = JSON.parse($("tcp-states").textContent);
const colours = new Map(STATES.map((s) => [s.name, s.colour]));
const ROLE_TEXT = { active: "client (active)", passive: "server (passive)", listener: "listener", unknown: "unknown" };

const page = {
  sockets: [],
  total: 0,
  next: null,
  pages: [], // cursors of the pages before this one, for Previous
  cursor: null, // this page's cursor (null: the first page)
  offset: 0, // sockets on the pages before this one
  last: null, // "last N seconds": since slides with the clock (see requestParams)
  selectedId: null,
  filters: {}, // as applied: port, addr, state, since, until (strings, as the API takes them)
  perPage: 1000,
  params: null, // the parameters of the current chain of requests
  tableStart: 0, // the first of the page's sockets in the table
  loading: null, // AbortController of the load in flight
  signature: "",
};

const lifelines = new Lifelines({
  scroller: $("scroller"),
  canvas: $("lifelines"),
  spacer: $("spacer"),
  tooltip: $("tooltip"),
  colours,
  onSelect: (index) => select(index, "lifelines"),
  onView: showViewRange,
});
window.tcpTimeline = { lifelines, page }; // for the browser tests and curious operators

// -- filters and the URL ---------------------------------------------------------

function readUrl() {
  const q = new URLSearchParams(location.search);
  for (const name of ["port", "addr", "state"]) if (q.has(name)) form.elements[name].value = q.get(name);
  for (const name of ["since", "until"]) {
    const t = parseFloat(q.get(name));
    if (isFinite(t)) form.elements[name].value = toLocalInput(t);
  }
  if (q.has("last")) page.last = Math.max(1, parseFloat(q.get("last")) || 60);
  if (q.has("per_page")) form.elements.per_page.value = q.get("per_page");
  if (!form.elements.per_page.value) form.elements.per_page.value = "1000";
  if (q.get("live") === "0") form.elements.live.checked = false;
  if (q.has("selected")) page.selectedId = q.get("selected");
  readForm();
}

function writeUrl() {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(page.filters)) if (v !== "" && !(k === "since" && page.last)) q.set(k, v);
  if (page.last) q.set("last", String(page.last));
  if (page.perPage !== 1000) q.set("per_page", String(page.perPage));
  if (!form.elements.live.checked) q.set("live", "0");
  if (page.selectedId != null) q.set("selected", page.selectedId);
  const search = q.toString();
  history.replaceState(null, "", search ? `?${search}` : location.pathname);
}

/** The filters as the form has them now; they apply from Apply on (live refreshes keep them). */
function readForm() {
  const f = form.elements;
  const time = (value) => (value ? (new Date(value).getTime() / 1000).toFixed(3) : "");
  page.filters = {
    port: f.port.value.trim(), addr: f.addr.value.trim(), state: f.state.value,
    since: page.last ? "" : time(f.since.value), until: time(f.until.value),
  };
  page.perPage = Math.max(1, parseInt(f.per_page.value, 10) || 1000);
}

/** The API's parameters for a chain of requests (no limit, no cursor). "Last N seconds"
 * slides with the clock, but only from the first page: a cursor is bound to the filters
 * it was handed out with, so later pages keep the `since` of the chain they belong to. */
function requestParams() {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(page.filters)) if (v !== "") q.set(k, v);
  if (page.last) {
    const since = Date.now() / 1000 - page.last;
    form.elements.since.value = toLocalInput(since);
    q.set("since", since.toFixed(3));
  }
  return q;
}

// -- loading ---------------------------------------------------------------------

/** One page of the timeline; past the API's limit of 1000, several requests follow the cursor. */
async function fetchPage(cursor, params, signal) {
  const want = page.perPage;
  const sockets = [];
  let total = 0;
  let next = cursor;
  do {
    const q = new URLSearchParams(params);
    q.set("limit", String(Math.min(API_MAX_LIMIT, want - sockets.length)));
    if (next) q.set("cursor", next);
    const data = await getJson(`${API}/sockets?${q}`, signal);
    for (const s of data.sockets) sockets.push(s);
    total = data.total;
    next = data.next;
  } while (next && sockets.length < want);
  return { sockets, total, next };
}

/** Loads the current page. `quiet`: a live refresh, which keeps scroll, zoom and focus. */
async function load({ quiet = false } = {}) {
  page.loading?.abort();
  const controller = new AbortController();
  page.loading = controller;
  const started = performance.now();
  if (!quiet) {
    body.dataset.status = "loading";
    $("summary").textContent = "loading…";
  }
  if (page.cursor == null || !page.params) page.params = requestParams();
  let data;
  try {
    data = await fetchPage(page.cursor, page.params, controller.signal);
  } catch (err) {
    if (err.name === "AbortError") return;
    showError(err instanceof ApiError ? err.message : String(err));
    showSummary(); // what is shown is still the last page that loaded
    body.dataset.status = "error";
    return;
  } finally {
    if (page.loading === controller) page.loading = null;
  }
  showError(null);
  const fetched = performance.now();
  const signature = signatureOf(data);
  const changed = signature !== page.signature;
  page.signature = signature;
  page.sockets = data.sockets;
  page.total = data.total;
  page.next = data.next;
  const now = nowFor(data.sockets);
  if (!quiet) $("scroller").scrollTop = 0;
  lifelines.setSockets(page.sockets, now);
  const selected = indexOfId(page.selectedId);
  lifelines.select(selected, { scroll: !quiet });
  showSummary();
  if (!quiet) page.tableStart = selected >= 0 ? windowOf(selected) : 0;
  if (changed || !quiet) renderTable();
  if (page.selectedId != null && (changed || !quiet)) showDetail(page.selectedId);
  requestAnimationFrame(() => {
    body.dataset.rendered = String(page.sockets.length);
    body.dataset.status = "ready";
    body.dataset.loadMs = (fetched - started).toFixed(0);
    body.dataset.renderMs = (performance.now() - fetched).toFixed(0);
  });
}

/** Changes that matter for the table: which sockets, and how many states each went through. */
function signatureOf(data) {
  const parts = [data.total, data.next];
  for (const s of data.sockets) parts.push(s.id, s.states.length, s.open ? 1 : 0);
  return parts.join(",");
}

/** The browser's clock, unless the data is ahead of it (then the tracer's clock wins). */
function nowFor(sockets) {
  let latest = 0;
  for (const s of sockets) {
    const st = s.states[s.states.length - 1];
    if (st) latest = Math.max(latest, st.since, st.until ?? 0);
  }
  return Math.max(Date.now() / 1000, latest);
}

function showError(message) {
  const box = $("error");
  box.hidden = !message;
  box.textContent = message || "";
}

function showSummary() {
  const n = page.sockets.length;
  const fmt = (x) => x.toLocaleString("en");
  let text = `showing ${fmt(n)} of ${fmt(page.total)} sockets`;
  if (n && (page.offset || page.next)) text += ` (${fmt(page.offset + 1)}–${fmt(page.offset + n)})`;
  $("summary").textContent = text;
  $("prev-page").disabled = !page.pages.length;
  $("next-page").disabled = !page.next;
}

function showViewRange(view) {
  $("view-range").textContent = `${clock(view.t0)} – ${clock(view.t1)} · ${duration(view.t1 - view.t0)} across`;
}

// -- the table -------------------------------------------------------------------

const tbody = $("sockets").tBodies[0];

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function rowHtml(s, i, selected, now) {
  const states = s.states.map((st) => {
    const d = duration(spanEnd(st, now) - st.since) + (st.until == null ? " so far" : "");
    return `<li class="st" data-state="${escapeHtml(st.state)}">${escapeHtml(st.state)} <span class="d">${d}</span></li>`;
  }).join("");
  const started = s.states.length ? clock(s.states[0].since) : "";
  const current = i === selected ? ' aria-current="true" tabindex="0"' : ' tabindex="-1"';
  return `<tr data-index="${i}" data-id="${escapeHtml(s.id)}"${current}>` +
    `<td class="num">${escapeHtml(s.id)}</td>` +
    `<td class="mono">${escapeHtml(endpoint(s.laddr, s.lport))}</td>` +
    `<td class="mono">${escapeHtml(endpoint(s.raddr, s.rport))}</td>` +
    `<td class="nowrap">${escapeHtml(ROLE_TEXT[s.role] || s.role)}</td>` +
    `<td class="nowrap">${escapeHtml(process(s))}</td>` +
    `<td class="mono">${started}</td>` +
    `<td><ol class="states">${states}</ol></td></tr>`;
}

const windowOf = (index) => Math.floor(index / TABLE_ROWS) * TABLE_ROWS;

/** Fills the table with the rows of its window (page.tableStart onwards). */
function renderTable() {
  const sockets = page.sockets;
  const n = sockets.length;
  page.tableStart = Math.min(page.tableStart, n ? windowOf(n - 1) : 0);
  const from = page.tableStart;
  const to = Math.min(n, from + TABLE_ROWS);
  const selected = indexOfId(page.selectedId);
  const now = lifelines.now;
  let html = "";
  for (let i = from; i < to; i++) html += rowHtml(sockets[i], i, selected, now);
  tbody.innerHTML = html;
  if (!tbody.querySelector('tr[tabindex="0"]') && tbody.rows.length) tbody.rows[0].tabIndex = 0;

  const fmt = (x) => x.toLocaleString("en");
  const rows = n > TABLE_ROWS ? `; rows ${fmt(from + 1)}–${fmt(to)} below` : "";
  $("table-count").textContent = n ? `${fmt(n)} of ${fmt(page.total)}${rows}` : "none match";
  $("table-pager").hidden = n <= TABLE_ROWS;
  $("rows-prev").disabled = from === 0;
  $("rows-next").disabled = to >= n;
  $("rows-label").textContent = `rows ${fmt(from + 1)}–${fmt(to)} of ${fmt(n)}`;
  body.dataset.tableRows = String(to - from);
  body.dataset.tableStart = String(from);
}

function showRows(start) {
  page.tableStart = Math.max(0, start);
  renderTable();
}

/** Marks the selected row, moving the table's window to it first if need be. */
function markRow(index, { focus = false } = {}) {
  if (index < page.tableStart || index >= page.tableStart + TABLE_ROWS) showRows(windowOf(index));
  for (const tr of tbody.querySelectorAll('tr[aria-current="true"], tr[tabindex="0"]')) {
    tr.removeAttribute("aria-current");
    tr.tabIndex = -1;
  }
  const tr = tbody.rows[index - page.tableStart];
  if (!tr) return;
  tr.setAttribute("aria-current", "true");
  tr.tabIndex = 0;
  if (focus) tr.focus();
  else tr.scrollIntoView({ block: "nearest" });
}

$("rows-prev").addEventListener("click", () => showRows(page.tableStart - TABLE_ROWS));
$("rows-next").addEventListener("click", () => showRows(page.tableStart + TABLE_ROWS));

tbody.addEventListener("click", (e) => {
  const tr = e.target.closest("tr");
  if (tr) select(Number(tr.dataset.index), "table");
});

tbody.addEventListener("keydown", (e) => {
  const tr = e.target.closest("tr");
  if (!tr) return;
  const i = Number(tr.dataset.index);
  const n = page.sockets.length;
  const moves = { ArrowUp: i - 1, ArrowDown: i + 1, Home: 0, End: n - 1, PageUp: i - 10, PageDown: i + 10 };
  if (e.key in moves) {
    e.preventDefault();
    select(Math.min(n - 1, Math.max(0, moves[e.key])), "table");
  } else if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    select(i, "table");
  }
});

// -- selection and the detail panel -------------------------------------------------

function indexOfId(id) {
  if (id == null) return -1;
  return page.sockets.findIndex((s) => String(s.id) === String(id));
}

let detailTimer = 0;

function select(index, from) {
  const sock = page.sockets[index];
  if (!sock) return;
  page.selectedId = String(sock.id);
  lifelines.select(index, { scroll: from !== "lifelines" });
  markRow(index, { focus: from === "table" });
  writeUrl();
  clearTimeout(detailTimer); // arrow keys held down: ask for the last one only
  detailTimer = setTimeout(() => showDetail(page.selectedId), 120);
}

let detailToken = 0;

async function showDetail(id) {
  const token = ++detailToken;
  body.dataset.ladder = "loading";
  let sock;
  let peer = null;
  try {
    sock = await getJson(`${API}/sockets/${encodeURIComponent(id)}`);
    if (sock.peer != null) peer = await getJson(`${API}/sockets/${encodeURIComponent(sock.peer)}`);
  } catch (err) {
    sock = page.sockets[indexOfId(id)]; // the page's own record, without its peer
    if (!sock) {
      if (token === detailToken) $("detail").textContent = `Socket #${id}: ${err.message}`;
      return;
    }
  }
  if (token !== detailToken) return;
  lifelines.setPeer(peer ? indexOfId(peer.id) : -1);
  renderDetail(sock, peer);
}

function renderDetail(sock, peer) {
  const now = Math.max(lifelines.now, Date.now() / 1000);
  const host = $("detail");
  const h = document.createElement("h3");
  h.textContent = `#${sock.id} · ${ROLE_TEXT[sock.role] || sock.role} · ${sock.open ? "open" : "closed"}`;
  const facts = [
    ["Local", endpoint(sock.laddr, sock.lport)],
    ["Remote", endpoint(sock.raddr, sock.rport)],
    ["Process", process(sock)],
    ["Service port", sock.service_port],
    ["Family", sock.family],
    ["Namespace", sock.netns ?? "not known"],
  ];
  const when = (t) => (new Date(t * 1000).toDateString() === new Date().toDateString() ? clock(t) : dateTime(t));
  if (sock.states.length) {
    facts.push(["Started", when(sock.states[0].since)]);
    const lastSpan = sock.states[sock.states.length - 1];
    if (!sock.open && lastSpan.until != null) facts.push(["Ended", when(lastSpan.until)]);
  }
  const dl = document.createElement("dl");
  dl.className = "facts";
  for (const [k, v] of facts) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = String(v);
    dl.append(dt, dd);
  }

  const parts = [h, dl];
  const closed = closeText(sock, now);
  if (closed) {
    const p = document.createElement("p");
    p.className = "close";
    p.textContent = closed;
    parts.push(p);
  }
  if (peer) {
    const p = document.createElement("p");
    p.className = "peer";
    p.append("The other end is on this host: ");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `#${peer.id} ${ROLE_TEXT[peer.role] || peer.role}`;
    b.addEventListener("click", () => {
      const i = indexOfId(peer.id);
      if (i >= 0) select(i, "detail");
      else showDetail(String(peer.id));
    });
    p.append(b);
    parts.push(p);
  }
  host.replaceChildren(...parts);
  $("detail-states").replaceChildren(spansTable(sock, now));
  $("zoom-selected").disabled = false;
  page.detail = { sock, peer };

  const figure = $("ladder");
  if (sock.role === "listener" || !sock.states.length) {
    figure.hidden = true;
    body.dataset.ladder = "none";
    return;
  }
  const [client, server] = peer ? orderPeers(sock, peer) : sock.role === "passive" ? [null, sock] : [sock, null];
  let caption;
  if (peer) {
    caption = `Handshake and close: #${client.id} (client, left) and #${server.id} (server, right), ` +
      "both on this host. Under each state: how long that end stayed in its previous state.";
  } else {
    caption = `#${sock.id} and its peer ${endpoint(sock.raddr, sock.rport)}, which is not on this host: ` +
      "the peer's segments are inferred from this socket's states.";
  }
  $("ladder-caption").textContent = caption;
  const drawn = renderLadder($("ladder-drawing"), client, server, colours, now);
  figure.hidden = false;
  body.dataset.ladder = String(drawn.rows.length);
}

function spansTable(sock, now) {
  const table = document.createElement("table");
  table.className = "spans";
  table.innerHTML = "<caption>States of this socket</caption><thead><tr><th scope=\"col\">State</th>" +
    "<th scope=\"col\">Entered</th><th scope=\"col\">For</th></tr></thead>";
  const tb = table.createTBody();
  for (const st of sock.states) {
    const tr = tb.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.className = "st";
    th.dataset.state = st.state;
    th.textContent = st.state;
    tr.append(th);
    tr.insertCell().textContent = clock(st.since);
    tr.insertCell().textContent = duration(spanEnd(st, now) - st.since) + (st.until == null ? " so far" : "");
  }
  return table;
}

/** The view around the selected socket (and its peer): from its first transition to its
 * last, leaving out a long last state such as TIME_WAIT's 60 s. */
function zoomToSelected() {
  const socks = [page.detail?.sock, page.detail?.peer].filter(Boolean);
  if (!socks.length) return;
  let t0 = Infinity;
  let t1 = -Infinity;
  for (const s of socks) {
    if (!s.states.length) continue;
    t0 = Math.min(t0, s.states[0].since);
    const last = s.states[s.states.length - 1];
    t1 = Math.max(t1, last.since, s.states.length === 1 ? spanEnd(last, lifelines.now) : 0);
  }
  if (!isFinite(t0)) return;
  const pad = Math.max((t1 - t0) * 0.08, 20e-6);
  lifelines.setView(t0 - pad, t1 + pad);
}

// -- live updates ------------------------------------------------------------------

const live = { source: null, poll: 0, retry: 0, lastRefresh: 0, pending: 0, dirty: false, opened: false };

function setLive(mode, text) {
  const status = $("live-status");
  status.dataset.mode = mode;
  status.textContent = text;
  body.dataset.live = mode;
}

function stopLive() {
  live.source?.close();
  live.source = null;
  clearInterval(live.poll);
  clearTimeout(live.retry);
  live.poll = live.retry = 0;
}

function startLive() {
  stopLive();
  if (!form.elements.live.checked) {
    setLive("off", "live updates off");
    return;
  }
  if (!("EventSource" in window)) {
    startPolling("this browser has no event streams");
    return;
  }
  const source = new EventSource(`${API}/stream`);
  live.source = source;
  live.opened = false;
  setLive("connecting", "connecting to live updates…");
  source.addEventListener("open", () => {
    setLive("stream", "live: redrawn as sockets change");
    if (live.opened) refreshSoon(); // reconnected: changes may have been missed meanwhile
    live.opened = true;
  });
  source.addEventListener("changed", () => refreshSoon());
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (too many viewers: 503) or not there: poll, and ask again later.
      source.close();
      live.source = null;
      startPolling("no event stream");
      live.retry = setTimeout(startLive, STREAM_RETRY_MS);
    } else {
      setLive("connecting", "live updates: reconnecting…");
    }
  });
}

function startPolling(why) {
  clearInterval(live.poll);
  setLive("polling", `live: every ${POLL_MS / 1000} s (${why})`);
  live.poll = setInterval(refreshSoon, POLL_MS);
}

/** At most one refresh a second, none while the tab is hidden. */
function refreshSoon() {
  if (document.hidden) {
    live.dirty = true;
    return;
  }
  if (live.pending) return;
  const wait = Math.max(0, live.lastRefresh + MIN_REFRESH_MS - performance.now());
  live.pending = setTimeout(() => {
    live.pending = 0;
    live.lastRefresh = performance.now();
    load({ quiet: true });
  }, wait);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && live.dirty) {
    live.dirty = false;
    refreshSoon();
  }
});

// Open sockets grow towards "now" between refreshes.
setInterval(() => {
  if (body.dataset.live === "off" || document.hidden) return;
  if (!page.sockets.some((s) => s.open)) return;
  lifelines.now = Math.max(lifelines.now, Date.now() / 1000);
  if (lifelines.fitted) lifelines.setSockets(page.sockets, lifelines.now);
  else lifelines.requestDraw();
}, 1000);

// -- wiring ------------------------------------------------------------------------

function apply() {
  readForm();
  page.params = null;
  page.pages = [];
  page.cursor = null;
  page.offset = 0;
  page.signature = "";
  lifelines.fitted = true;
  writeUrl();
  load();
  refreshAttention();
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  apply();
});
form.addEventListener("reset", () => {
  page.last = null;
  setTimeout(apply, 0); // after the browser has cleared the fields
});
for (const name of ["state", "per_page"]) form.elements[name].addEventListener("change", apply);
for (const name of ["since", "until"]) form.elements[name].addEventListener("input", () => { page.last = null; });
form.elements.live.addEventListener("change", () => {
  writeUrl();
  startLive();
});
for (const b of form.querySelectorAll("button[data-last]")) {
  b.addEventListener("click", () => {
    page.last = Number(b.dataset.last);
    form.elements.until.value = "";
    apply();
  });
}

$("next-page").addEventListener("click", () => {
  if (!page.next) return;
  page.pages.push({ cursor: page.cursor, offset: page.offset });
  page.offset += page.sockets.length;
  page.cursor = page.next;
  lifelines.fitted = true;
  load();
});
$("prev-page").addEventListener("click", () => {
  const prev = page.pages.pop();
  if (!prev) return;
  page.cursor = prev.cursor;
  page.offset = prev.offset;
  lifelines.fitted = true;
  load();
});
$("zoom-in").addEventListener("click", () => lifelines.zoom(0.5));
$("zoom-out").addEventListener("click", () => lifelines.zoom(2));
$("zoom-fit").addEventListener("click", () => lifelines.fit());
$("zoom-selected").addEventListener("click", zoomToSelected);
$("lifelines").addEventListener("keydown", (e) => {
  if (e.key === "z") zoomToSelected();
});
$("pan-left").addEventListener("click", () => lifelines.pan(-0.25));
$("pan-right").addEventListener("click", () => lifelines.pan(0.25));

readUrl();
load();
startLive();
// Stuck sockets stand out on their lifelines; the port in view shows its refused calls.
const portInView = () => Number(page.filters.port) || 0;
const refreshAttention = startAttention(API, POLL_MS, portInView, ({ stuck, onPort, count }) => {
  const over = new Map(stuck.filter((s) => s.id != null)
    .map((s) => [s.id, { state: s.state, from: s.since + s.rule.threshold_seconds }]));
  lifelines.setAttention(over, onPort);
  body.dataset.attention = String(count);
});
