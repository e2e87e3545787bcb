// "Needs attention": what an operator opens the page for. Stuck sockets with their
// evidence (/api/v1/stuck), refused bind() calls (/api/v1/bind-conflicts) and connects
// that found no free local port (/api/v1/no-local-port), each a link to that socket's
// lifeline and ladder or to its port's timeline. Polled: these are small answers.

import { getJson as get } from "./api.js";
import { clock, endpoint, process } from "./format.js";

const LIMIT = 20; // entries of each kind shown
const SHOWN_STUCK = 50;

function link(text, params) {
  const a = document.createElement("a");
  a.href = `?${new URLSearchParams(params)}`;
  a.textContent = text;
  return a;
}

function item(kind, head, detail) {
  const li = document.createElement("li");
  li.dataset.kind = kind;
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = { stuck: "stuck", conflict: "bind() refused", no_local_port: "no local port" }[kind];
  const p = document.createElement("p");
  p.className = "why";
  p.textContent = detail;
  li.append(tag, head, p);
  return li;
}

/**
 * Polls the three answers every `everyMs` and renders them into the panel; with a port
 * in view (`portOf()`), that port's refused calls too, all that the daemon keeps.
 * @param {string} api  the API's base ("api/v1")
 * @param {() => number} portOf  the port the page shows, 0 for none
 * @param {(got: {stuck: object[], onPort: {t: number, label: string}[]}) => void} onData
 */
export function startAttention(api, everyMs, portOf, onData) {
  const host = document.getElementById("attention-list");
  const panel = document.getElementById("attention");
  let inflight = null;
  async function refresh() {
    if (document.hidden || inflight) return;
    inflight = new AbortController();
    try {
      const [stuck, conflicts, refused] = await Promise.all([
        get(`${api}/stuck`, inflight.signal),
        get(`${api}/bind-conflicts?limit=${LIMIT}`, inflight.signal),
        get(`${api}/no-local-port?limit=${LIMIT}`, inflight.signal),
      ]);
      render(stuck.sockets, conflicts.conflicts, refused.refused);
      const port = portOf();
      const [binds, connects] = port ? await Promise.all([
        get(`${api}/bind-conflicts?port=${port}&limit=1000`, inflight.signal),
        get(`${api}/no-local-port?port=${port}&limit=1000`, inflight.signal),
      ]) : [{ conflicts: [] }, { refused: [] }];
      onData({
        stuck: stuck.sockets,
        onPort: [
          ...binds.conflicts.map((c) => ({ t: c.time, label: `bind() refused (${c.comm})` })),
          ...connects.refused.map((e) => ({ t: e.time, label: `no local port (${e.comm})` })),
        ],
        count: stuck.sockets.length + conflicts.conflicts.length + refused.refused.length,
      });
      panel.dataset.status = "ready";
    } catch (err) {
      if (err.name !== "AbortError") {
        panel.dataset.status = "error";
        document.getElementById("attention-summary").textContent = `could not be read: ${err.message}`;
      }
    } finally {
      inflight = null;
    }
  }

  function render(stuck, conflicts, refused) {
    const items = [];
    for (const s of stuck.slice(0, SHOWN_STUCK)) {
      const params = { port: String(s.service_port) };
      if (s.id != null) params.selected = String(s.id);
      const who = `${endpoint(s.laddr, s.lport)} ↔ ${endpoint(s.raddr, s.rport)}`;
      const head = link(`${s.state} for ${Math.round(s.age_seconds)} s · ${who} · ${process(s)}`, params);
      items.push(item("stuck", head, s.evidence));
    }
    for (const c of conflicts) {
      const head = link(`port ${c.port}: bind() by ${c.comm || "?"} (pid ${c.pid}) at ${clock(c.time)}`,
        { port: String(c.port) });
      items.push(item("conflict", head, c.remedy));
    }
    for (const e of refused) {
      const head = link(`connect() toward ${endpoint(e.address, e.port)} by ${e.comm || "?"} (pid ${e.pid}) ` +
        `at ${clock(e.time)}`, { port: String(e.port) });
      items.push(item("no_local_port", head, e.remedy));
    }
    host.replaceChildren(...items);
    const n = (k) => items.filter((li) => li.dataset.kind === k).length;
    panel.dataset.count = String(items.length);
    document.getElementById("attention-summary").textContent = items.length
      ? [`${stuck.length} stuck socket${stuck.length === 1 ? "" : "s"}`,
        `${n("conflict")} refused bind()`, `${n("no_local_port")} connect() without a local port`].join(" · ")
      : "nothing: no socket is stuck, no bind() was refused, no connect() ran out of local ports";
  }

  refresh();
  setInterval(refresh, everyMs);
  document.addEventListener("visibilitychange", refresh);
  return refresh; // for a new port in view: its markers at once
}
