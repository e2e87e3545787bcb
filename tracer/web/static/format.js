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
