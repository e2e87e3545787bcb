// The ladder: a connection's handshake and close as a textbook draws them, from the
// state transitions of both ends (client left, server right).
//
// Which segment a transition sends or receives is TCP itself (RFC 9293, figure 5):
// the tracepoint reports states, not segments, so the arrows are derived from the
// transitions. Rows follow cause and effect, not raw timestamps: on loopback the
// server's socket is created only when the final ACK arrives, so its SYN_RECV is
// stamped after the client is already ESTABLISHED. A transition that receives a
// segment is drawn after the transition that sent it; otherwise by time.

import { CALLS, clock, duration, endpoint, process, readableOn, spanEnd } from "./format.js";

// "FROM>TO": what that transition receives, what it sends, and a note where no
// segment tells the story.
const RULES = {
  "CLOSE>SYN_SENT": { sends: ["SYN"] },
  "CLOSE>LISTEN": { note: "listen()" },
  "LISTEN>SYN_RECV": { receives: ["SYN"], sends: ["SYN+ACK"] },
  "SYN_SENT>SYN_RECV": { receives: ["SYN"], sends: ["SYN+ACK"], note: "simultaneous open" },
  "SYN_SENT>ESTABLISHED": { receives: ["SYN+ACK"], sends: ["ACK"] },
  "SYN_RECV>ESTABLISHED": { receives: ["ACK"] },
  "SYN_RECV>FIN_WAIT1": { sends: ["FIN"] },
  "ESTABLISHED>FIN_WAIT1": { sends: ["FIN"] },
  "ESTABLISHED>CLOSE_WAIT": { receives: ["FIN"], sends: ["ACK"] },
  "FIN_WAIT1>FIN_WAIT2": { receives: ["ACK"] },
  "FIN_WAIT1>CLOSING": { receives: ["FIN"], sends: ["ACK"], note: "simultaneous close" },
  "FIN_WAIT1>TIME_WAIT": { receives: ["FIN"], sends: ["ACK"] },
  "FIN_WAIT2>TIME_WAIT": { receives: ["FIN"], sends: ["ACK"] },
  "FIN_WAIT2>CLOSE": { receives: ["FIN"], sends: ["ACK"] },
  "CLOSING>TIME_WAIT": { receives: ["ACK"] },
  "CLOSE_WAIT>LAST_ACK": { sends: ["FIN"] },
  "LAST_ACK>CLOSE": { receives: ["ACK"] },
  "TIME_WAIT>CLOSE": { note: "2MSL timer ran out" },
  "SYN_SENT>CLOSE": { note: "refused or timed out" },
  "LISTEN>CLOSE": { note: "listener closed" },
};

// What a socket retransmits in a state: the segment it is waiting to have acknowledged.
const RESENT = {
  SYN_SENT: "SYN", SYN_RECV: "SYN+ACK", FIN_WAIT1: "FIN", CLOSING: "FIN", LAST_ACK: "FIN",
};

/** The rule of a transition of `sock`, with what only the socket's close tells:
 * the call that sent its FIN, and the reset an abortive close sent or received. */
function rule(from, to, sock) {
  const r = RULES[`${from}>${to}`];
  const out = r
    ? { receives: r.receives || [], sends: r.sends || [], note: r.note || "" }
    : { receives: [], sends: [], note: from == null ? "first seen here" : to === "CLOSE" ? "reset or abort" : "" };
  const call = CALLS[sock?.how];
  if (call && out.sends.includes("FIN")) out.call = call;
  if (to === "CLOSE" && !r && from != null) {
    if (sock?.how === "reset_sent") return { receives: [], sends: ["RST"], note: "reset sent (SO_LINGER 0, or unread data)" };
    if (sock?.how === "reset_received") return { receives: ["RST"], sends: [], note: "reset received" };
  }
  return out;
}

/** A retransmission's step: the segment it sends again. */
function markRule(m) {
  const segment = RESENT[m.state] || "data";
  return { receives: [], sends: [], resends: segment, note: `${segment} retransmitted` };
}

/** The transitions of one socket, oldest first: {from, to, t, prev}; with `marks`, its
 * retransmissions too, in time order among them: {from: state, to: state, t, prev, mark}. */
export function transitions(sock, marks = false) {
  // The tracepoint's FIN_WAIT2 -> CLOSE hands over to a TIME_WAIT mini-socket; a record
  // may keep that CLOSE as an instant between FIN_WAIT2 and TIME_WAIT. It is not a state.
  const spans = sock.states.filter((s, i) => s.state !== "CLOSE" || i === sock.states.length - 1);
  const out = spans.map((s, i) => ({
    from: i ? spans[i - 1].state : { SYN_SENT: "CLOSE", SYN_RECV: "LISTEN", LISTEN: "CLOSE" }[s.state] ?? null,
    to: s.state,
    t: s.since,
    prev: i ? spans[i - 1].since : null,
  }));
  const last = spans[spans.length - 1];
  if (last && last.until != null && last.state !== "CLOSE") {
    out.push({ from: last.state, to: "CLOSE", t: last.until, prev: last.since });
  }
  if (!marks) return out;
  // A reset is drawn by the transition it ends (above); a retransmission is a step of its own.
  const resent = (sock.marks || []).filter((m) => m.kind === "retransmit")
    .map((m) => ({ from: m.state, to: m.state, t: m.at, prev: null, mark: m }));
  const all = [...out, ...resent].sort((a, b) => a.t - b.t || (a.mark ? 1 : 0) - (b.mark ? 1 : 0));
  for (let i = 0; i < all.length; i++) if (all[i].mark) all[i].prev = i ? all[i - 1].t : null;
  return all;
}

/**
 * Rows and arrows for the two ends of a connection. Either may be null, an end the
 * tracer does not see (on another host): its segments are inferred from the other's.
 * Each row: {side: 0 client | 1 server, from, to, t, prev, note}.
 * Each arrow: {segment, from: row or null, to: row or null, dir: 0 (client->server) | 1}.
 */
export function deriveLadder(client, server) {
  const sides = [client, server];
  const queues = [client ? transitions(client, true) : [], server ? transitions(server, true) : []];
  const ruleOf = (k, tr) => (tr.mark ? markRule(tr.mark) : rule(tr.from, tr.to, sides[k]));
  const inflight = [[], []]; // segments sent by side k that the other side has not taken yet
  const rows = [];
  const arrows = [];
  const ready = (k) => {
    const head = queues[k][0];
    if (!head) return false;
    const need = ruleOf(k, head).receives;
    return need.every((seg) => inflight[1 - k].some((f) => f.segment === seg));
  };
  while (queues[0].length || queues[1].length) {
    const r0 = ready(0);
    const r1 = ready(1);
    let k;
    if (r0 !== r1) k = r0 ? 0 : 1;
    else if (!queues[1].length) k = 0;
    else if (!queues[0].length) k = 1;
    else k = queues[0][0].t <= queues[1][0].t ? 0 : 1;
    const tr = queues[k].shift();
    const r = ruleOf(k, tr);
    const row = rows.length;
    rows.push({ side: k, ...tr, note: r.note });
    for (const segment of r.receives) {
      const j = inflight[1 - k].findIndex((f) => f.segment === segment);
      const sent = j >= 0 ? inflight[1 - k].splice(j, 1)[0] : null;
      arrows.push({ segment, from: sent ? sent.row : null, to: row, dir: 1 - k, call: sent?.call });
    }
    for (const segment of r.sends) inflight[k].push({ segment, row, call: segment === "FIN" ? r.call : undefined });
    // A retransmitted segment is drawn as sent again; which copy the peer took is not seen.
    if (r.resends) arrows.push({ segment: r.resends, from: row, to: null, dir: k, resent: true });
  }
  for (const k of [0, 1]) {
    for (const f of inflight[k]) arrows.push({ segment: f.segment, from: f.row, to: null, dir: k, call: f.call });
  }
  return { rows, arrows };
}

/** Which of two peer records is the client (the active opener). */
export function orderPeers(a, b) {
  const opens = (s) => s.role === "active" || s.states[0]?.state === "SYN_SENT";
  return opens(b) && !opens(a) ? [b, a] : [a, b];
}

// -- drawing -------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const W = 440;
const X = [150, 290]; // client line, server line
const CHIP_W = 112;
const TOP = 64;
const ROW_BOTH = 42;
const ROW_ONE = 60;

function el(name, attrs = {}, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text != null) e.textContent = text;
  return e;
}

/**
 * Draws the ladder into `host`: an SVG, and the same steps as a list of sentences.
 * `client` or `server` may be null (not on this host), not both.
 * @param {Map<string,string>} colours state name -> colour
 */
export function renderLadder(host, client, server, colours, now) {
  const { rows, arrows } = deriveLadder(client, server);
  // With one end unseen its segments bounce off the far line between two rows: more room.
  const ROW = client && server ? ROW_BOTH : ROW_ONE;
  const height = TOP + rows.length * ROW + 62;
  const svg = el("svg", {
    viewBox: `0 0 ${W} ${height}`, width: "100%", role: "img", class: "ladder-svg",
    "aria-labelledby": "ladder-caption",
  });
  const defs = el("defs");
  const marker = el("marker", {
    id: "arrowhead", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse",
  });
  marker.append(el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.append(marker);
  svg.append(defs);

  const sides = [client, server];
  ["client", "server"].forEach((title, k) => {
    const s = sides[k];
    const other = sides[1 - k];
    const anchor = k ? "start" : "end";
    const x = k ? X[1] - 8 : X[0] + 8;
    svg.append(el("text", { x, y: 18, "text-anchor": anchor, class: "side-title" }, title));
    const sub = s ? `#${s.id} ${process(s)}` : "not on this host";
    const port = s ? endpoint(s.laddr, s.lport) : endpoint(other.raddr, other.rport);
    svg.append(el("text", { x, y: 33, "text-anchor": anchor, class: "side-sub" }, sub));
    svg.append(el("text", { x, y: 47, "text-anchor": anchor, class: "side-sub" }, port));
    svg.append(el("line", {
      x1: X[k], y1: TOP - 8, x2: X[k], y2: height - 44, class: s ? "side-line" : "side-line remote",
    }));
  });

  const yOf = (row) => TOP + row * ROW + ROW / 2;
  for (const a of arrows) {
    const x1 = X[a.dir];
    const x2 = X[1 - a.dir];
    const y1 = a.from != null ? yOf(a.from) : yOf(a.to) - ROW / 2;
    const y2 = a.to != null ? yOf(a.to) : yOf(a.from) + ROW / 2;
    const unseen = a.from == null || a.to == null;
    const g = el("g", { class: `arrow${unseen ? " unseen" : ""}${a.resent ? " resent" : ""}`, "data-segment": a.segment });
    g.append(el("line", {
      x1: a.dir ? x1 - 3 : x1 + 3, y1, x2: a.dir ? x2 + 4 : x2 - 4, y2, "marker-end": "url(#arrowhead)",
    }));
    const mx = (x1 + x2) / 2;
    const my = (y1 + y2) / 2;
    const angle = (Math.atan2(y2 - y1, x2 - x1) * 180) / Math.PI;
    const upright = angle > 90 || angle < -90 ? angle + 180 : angle;
    g.append(el("text", {
      x: mx, y: my - 5, "text-anchor": "middle", class: "segment",
      transform: `rotate(${upright.toFixed(1)} ${mx} ${my})`,
    }, a.call ? `${a.segment} · ${a.call}` : a.resent ? `${a.segment} again` : a.segment));
    svg.append(g);
  }

  rows.forEach((r, i) => {
    const y = yOf(i);
    const k = r.side;
    const chipX = k ? X[1] + 10 : X[0] - 10 - CHIP_W;
    if (r.mark) {  // a retransmission: no new state, its time and what went again
      const g = el("g", { class: "step mark", "data-side": k ? "server" : "client", "data-state": r.to });
      g.append(el("circle", { cx: X[k], cy: y, r: 2.5, class: "dot" }));
      g.append(el("text", {
        x: k ? chipX + 2 : chipX + CHIP_W - 2, y: y + 4, "text-anchor": k ? "start" : "end", class: "since",
      }, r.prev == null ? clock(r.t) : `${clock(r.t)} · +${duration(r.t - r.prev)}`));
      g.append(el("title", {}, `${r.note} in ${r.to} at ${clock(r.t)}` +
        (r.prev == null ? "" : `, ${duration(r.t - r.prev)} after the step before`)));
      svg.append(g);
      return;
    }
    const g = el("g", { class: "step", "data-side": k ? "server" : "client", "data-state": r.to });
    g.append(el("circle", { cx: X[k], cy: y, r: 3.5, class: "dot" }));
    const colour = colours.get(r.to) || "#888";
    g.append(el("rect", { x: chipX, y: y - 17, width: CHIP_W, height: 18, rx: 4, fill: colour }));
    g.append(el("text", {
      x: chipX + CHIP_W / 2, y: y - 4, "text-anchor": "middle", class: "chip", fill: readableOn(colour),
    }, r.to));
    const since = r.prev == null ? clock(r.t) : `+${duration(r.t - r.prev)}`;
    const detail = r.note ? `${since} · ${r.note}` : since;
    g.append(el("text", {
      x: k ? chipX + 2 : chipX + CHIP_W - 2, y: y + 13, "text-anchor": k ? "start" : "end", class: "since",
    }, detail));
    g.append(el("title", {}, `${r.from ?? "?"} → ${r.to} at ${clock(r.t)}` +
      (r.prev == null ? "" : `, ${duration(r.t - r.prev)} after ${r.from}`)));
    svg.append(g);
  });

  // Where each end is now, under its line.
  sides.forEach((s, k) => {
    const last = s?.states[s.states.length - 1];
    if (!last) return;
    const lines = s.open
      ? [`now ${last.state}`, `for ${duration(spanEnd(last, now) - last.since)}`]
      : ["closed", `at ${clock(last.until ?? last.since)}`];
    lines.forEach((text, i) => svg.append(el("text", {
      x: X[k], y: height - 26 + i * 13, "text-anchor": "middle", class: "side-sub",
    }, text)));
  });

  const list = document.createElement("ol");
  list.className = "steps";
  const arrowsTo = new Map();
  for (const a of arrows) if (a.to != null) arrowsTo.set(a.to, [...(arrowsTo.get(a.to) || []), a]);
  rows.forEach((r, i) => {
    const li = document.createElement("li");
    const who = r.side ? "server" : "client";
    const got = (arrowsTo.get(i) || []).map((a) => a.segment);
    const sent = arrows.filter((a) => a.from === i).map((a) => (a.call ? `${a.segment} by ${a.call}` : a.segment));
    if (r.mark) {
      li.textContent = `${who} retransmits ${sent.join(", ") || r.note} in ${r.to} at ${clock(r.t)}` +
        (r.prev == null ? "" : `, ${duration(r.t - r.prev)} after the step before`);
      list.append(li);
      return;
    }
    const parts = [];
    if (got.length) parts.push(`receives ${got.join(", ")}`);
    if (sent.length) parts.push(`sends ${sent.join(", ")}`);
    const after = r.prev == null ? ` at ${clock(r.t)}` : `, ${duration(r.t - r.prev)} after entering ${r.from}`;
    li.textContent = `${who} ${parts.length ? parts.join(" and ") + ", " : ""}enters ${r.to}${after}` +
      (r.note ? ` (${r.note})` : "");
    list.append(li);
  });
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "The same steps as text";
  details.append(summary, list);
  host.replaceChildren(svg, details);
  return { rows, arrows };
}
