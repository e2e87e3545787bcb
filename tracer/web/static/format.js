// Text for times and sockets, shared by the lifelines, the table and the ladder.

/** A duration in seconds as people read it: 320 µs, 1.25 ms, 3.40 s, 2 min 5 s. */
export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 1e-3) return `${Math.round(s * 1e6)} µs`;
  if (s < 1) return `${trim(s * 1e3)} ms`;
  if (s < 60) return `${trim(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function trim(x) {
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Wall-clock time of a Unix time, local zone, to the millisecond: 14:26:20.511 */
export function clock(t, digits = 3) {
  const d = new Date(t * 1000);
  const base = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return digits ? `${base}.${pad(d.getMilliseconds(), 3).slice(0, digits)}` : base;
}

/** Date and time for captions and tooltips: 2026-01-02 14:26:20.511 */
export function dateTime(t) {
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(t)}`;
}

/** The value of a datetime-local input for a Unix time (local zone). */
export function toLocalInput(t) {
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${clock(t)}`;
}

export function endpoint(addr, port) {
  return addr.includes(":") ? `[${addr}]:${port}` : `${addr}:${port}`;
}

export function process(sock) {
  if (sock.comm && sock.pid) return `${sock.comm} (${sock.pid})`;
  return sock.comm || (sock.pid ? String(sock.pid) : "—");
}

/** When a state ended: its `until`, or now for the state a socket is in. */
export function spanEnd(span, now) {
  return span.until == null ? now : span.until;
}

/** Black or white, whichever reads better on a colour (WCAG relative luminance). */
export function readableOn(hex) {
  const n = parseInt(hex.slice(1), 16);
  const lin = (c) => ((c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
  const L = 0.2126 * lin(n >> 16) + 0.7152 * lin((n >> 8) & 255) + 0.0722 * lin(n & 255);
  return (L + 0.05) / 0.05 > 1.05 / (L + 0.05) ? "#111" : "#fff";
}

/** The system call behind a socket's FIN, by how it finished (the API's `how`). */
export const CALLS = { close: "close()", shutdown_wr: "shutdown(SHUT_WR)", shutdown_rdwr: "shutdown(SHUT_RDWR)" };

/** How a socket closed and what it retransmitted, as sentences (the API's closer, how,
 * one_way and marks); "" for a socket that has not begun to close and never resent. */
export function closeText(sock, now) {
  const out = [];
  const call = CALLS[sock.how];
  const w = sock.one_way;
  const took = w ? `${duration((w.until ?? now) - w.since)}${w.until == null ? " so far" : ""}` : "";
  if (sock.closer === "local") {
    if (sock.how === "shutdown_wr") {
      out.push(`This end sent the first FIN, by shutdown(SHUT_WR): a half-close. It could still read, and the ` +
        `connection ran one way for ${took}${w?.until == null ? "" : " until the peer's FIN"}.`);
    } else {
      const peer = !w ? "." : w.until != null ? `; the peer's came ${took} later.`
        : sock.open ? `; no FIN from the peer in ${took}.` : "; the peer never sent its FIN.";
      out.push(`This end sent the first FIN${call ? `, by ${call}` : ""}${peer}`);
    }
  } else if (sock.closer === "peer") {
    out.push("The peer sent the first FIN" + (w && w.until != null
      ? `; this end sent its own${call ? ` by ${call}` : ""} ${took} later.`
      : w ? `; this end has not closed in ${took}.` : "."));
  } else if (sock.closer === "simultaneous") {
    out.push(`Both ends sent their FIN at once (a simultaneous close)${call ? `, this one by ${call}` : ""}.`);
  }
  if (sock.how === "reset_sent") out.push("This end closed with a reset it sent (SO_LINGER 0, or close() with unread data).");
  if (sock.how === "reset_received") out.push("A reset from the peer ended the connection.");
  if (sock.how === "timeout") out.push("Neither a FIN nor a reset: the connection timed out.");
  const resent = (sock.marks || []).filter((m) => m.kind === "retransmit");
  if (resent.length) {
    const n = resent.length + (sock.marks_dropped || 0);
    const states = [...new Set(resent.map((m) => m.state))].join(", ");
    out.push(`It retransmitted ${n} segment${n === 1 ? "" : "s"} (in ${states}), the last at ` +
      `${clock(resent[resent.length - 1].at)}.`);
  }
  return out.join(" ");
}
