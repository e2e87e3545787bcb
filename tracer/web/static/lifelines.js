// Socket lifelines on a canvas: one row per socket, one coloured bar per state.
//
// A canvas rather than SVG so that 10,000 sockets cost no more than the few dozen
// rows on screen: the canvas stays in view (position: sticky) inside a scroller
// whose spacer is as tall as all the rows, and each frame draws only visible rows.

import { clock, duration, endpoint, process, readableOn, spanEnd } from "./format.js";

const ROW_H = 18;
const BAR_H = 12;
const AXIS_H = 30;
const GUTTER = 250;
const MIN_SPAN = 2e-6; // seconds across the plot at the deepest zoom
const TICK_PX = 120;
const STEPS = [1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02,
  0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400,
  21600, 43200, 86400];
const ARROW = { active: "→", passive: "←", listener: "◉", unknown: "·" };

export class Lifelines {
  /**
   * @param {object} o
   * @param {HTMLElement} o.scroller  scrolls vertically through all rows
   * @param {HTMLCanvasElement} o.canvas  sticky, as large as the scroller's view
   * @param {HTMLElement} o.spacer  gives the scroller the height of all rows
   * @param {HTMLElement} o.tooltip
   * @param {Map<string,string>} o.colours  state name -> colour
   * @param {(index:number)=>void} o.onSelect
   * @param {(view:{t0:number,t1:number})=>void} o.onView
   */
  constructor(o) {
    Object.assign(this, o);
    this.sockets = [];
    this.view = { t0: 0, t1: 1 };
    this.fitted = true; // follow the data as it grows until the user zooms or pans
    this.selected = -1;
    this.peer = -1;
    this.hover = -1;
    this.stuck = new Map(); // socket id -> {state, from}: the part of its state past the rule's threshold
    this.markers = []; // [{t, label}]: a refused bind() or connect() on the port in view
    this.now = Date.now() / 1000;
    this.lastDrawMs = 0;
    this.frame = 0;
    this.textColour = new Map();
    for (const [state, c] of this.colours) this.textColour.set(state, readableOn(c));
    this.readTheme();
    this.listen();
    this.resize();
  }

  // -- data and view ---------------------------------------------------------

  setSockets(sockets, now) {
    this.sockets = sockets;
    this.now = now;
    this.extent = extentOf(sockets, now);
    if (this.fitted) this.fit();
    this.layout();
    this.requestDraw();
  }

  /** Stuck sockets (id -> {state, from}) and the port's markers ([{t, label}]), drawn to stand out. */
  setAttention(stuck, markers) {
    this.stuck = stuck;
    this.markers = markers;
    this.requestDraw();
  }

  fit() {
    const { t0, t1 } = this.extent || { t0: this.now - 60, t1: this.now };
    const pad = Math.max((t1 - t0) * 0.02, MIN_SPAN);
    this.setView(t0 - pad, t1 + pad, true);
  }

  setView(t0, t1, fitted = false) {
    if (t1 - t0 < MIN_SPAN) {
      const mid = (t0 + t1) / 2;
      t0 = mid - MIN_SPAN / 2;
      t1 = mid + MIN_SPAN / 2;
    }
    this.view = { t0, t1 };
    this.fitted = fitted;
    this.requestDraw();
    this.onView?.(this.view);
  }

  /** factor < 1 zooms in; the time under `anchorX` (a canvas x) stays put. */
  zoom(factor, anchorX) {
    const { t0, t1 } = this.view;
    const x = anchorX ?? GUTTER + this.plotW() / 2;
    const anchor = this.timeAt(x);
    const span = Math.max((t1 - t0) * factor, MIN_SPAN);
    const left = (x - GUTTER) / this.plotW();
    this.setView(anchor - span * left, anchor + span * (1 - left));
  }

  /** Moves the view by a fraction of its width (negative: earlier). */
  pan(fraction) {
    const { t0, t1 } = this.view;
    const d = (t1 - t0) * fraction;
    this.setView(t0 + d, t1 + d);
  }

  select(index, { scroll = true } = {}) {
    this.selected = index;
    if (scroll && index >= 0) this.scrollToRow(index);
    this.requestDraw();
  }

  setPeer(index) {
    this.peer = index;
    this.requestDraw();
  }

  scrollToRow(index) {
    const top = index * ROW_H;
    const view = this.scroller.clientHeight - AXIS_H;
    const s = this.scroller.scrollTop;
    if (top < s) this.scroller.scrollTop = top;
    else if (top + ROW_H > s + view) this.scroller.scrollTop = top + ROW_H - view;
  }

  // -- geometry --------------------------------------------------------------

  plotW() {
    return Math.max(10, this.width - GUTTER - 8);
  }

  xOf(t) {
    const { t0, t1 } = this.view;
    return GUTTER + ((t - t0) / (t1 - t0)) * this.plotW();
  }

  timeAt(x) {
    const { t0, t1 } = this.view;
    return t0 + ((x - GUTTER) / this.plotW()) * (t1 - t0);
  }

  rowAt(y) {
    if (y < AXIS_H) return -1;
    const row = Math.floor((y - AXIS_H + this.scroller.scrollTop) / ROW_H);
    return row < this.sockets.length ? row : -1;
  }

  /** The socket and the state under a canvas point, if any. */
  hit(x, y) {
    const index = this.rowAt(y);
    if (index < 0) return null;
    const sock = this.sockets[index];
    let span = null;
    if (x >= GUTTER) {
      const t = this.timeAt(x);
      const slack = (this.view.t1 - this.view.t0) / this.plotW() * 2; // 2 px: thin states stay hoverable
      span = sock.states.find((s) => s.since - slack <= t && t <= spanEnd(s, this.now) + slack) || null;
    }
    return { index, sock, span };
  }

  // -- layout and drawing ----------------------------------------------------

  layout() {
    const rows = this.sockets.length;
    const wanted = AXIS_H + Math.max(rows, 3) * ROW_H + 6;
    const max = Math.max(260, Math.min(640, window.innerHeight * 0.62));
    this.scroller.style.height = `${Math.min(wanted, max)}px`;
    this.resize();
  }

  resize() {
    const w = this.scroller.clientWidth;
    const h = this.scroller.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    if (w !== this.width || h !== this.height || dpr !== this.dpr) {
      this.width = w;
      this.height = h;
      this.dpr = dpr;
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
      this.canvas.style.width = `${w}px`;
      this.canvas.style.height = `${h}px`;
    }
    const total = AXIS_H + this.sockets.length * ROW_H + 6;
    this.spacer.style.height = `${Math.max(0, total - h)}px`;
    this.requestDraw();
  }

  readTheme() {
    const css = getComputedStyle(document.documentElement);
    const v = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    this.theme = {
      bg: v("--plot-bg", "#fff"), fg: v("--fg", "#222"), muted: v("--muted", "#666"),
      grid: v("--grid", "#e5e5e5"), zebra: v("--zebra", "#f7f7f7"), hover: v("--hover", "#eef3fb"),
      select: v("--select", "#dce8fb"), accent: v("--accent", "#1f5fbf"), now: v("--now", "#c0392b"),
      danger: v("--danger", "#c62828"),
      font: v("--font-ui", "system-ui, sans-serif"), mono: v("--font-mono", "monospace"),
    };
    this.requestDraw();
  }

  requestDraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
    const started = performance.now();
    const { width: W, height: H, theme: th } = this;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.fillStyle = th.bg;
    ctx.fillRect(0, 0, W, H);
    ctx.textBaseline = "middle";

    const scroll = this.scroller.scrollTop;
    const first = Math.floor(scroll / ROW_H);
    const last = Math.min(this.sockets.length, first + Math.ceil((H - AXIS_H) / ROW_H) + 1);
    const ticks = this.ticks();

    // Rows: bands, then grid, then bars, so the grid sits under the bars.
    for (let i = first; i < last; i++) {
      const y = AXIS_H + i * ROW_H - scroll;
      const band = i === this.selected ? th.select : i === this.peer ? th.hover
        : i === this.hover ? th.hover : i % 2 ? th.zebra : null;
      if (band) {
        ctx.fillStyle = band;
        ctx.fillRect(0, y, W, ROW_H);
      }
    }
    ctx.strokeStyle = th.grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (const t of ticks.values) {
      const x = Math.round(this.xOf(t)) + 0.5;
      ctx.moveTo(x, AXIS_H);
      ctx.lineTo(x, H);
    }
    ctx.stroke();

    ctx.save();
    ctx.beginPath();
    ctx.rect(GUTTER, AXIS_H, W - GUTTER, H - AXIS_H);
    ctx.clip();
    ctx.font = `10px ${th.font}`;
    const left = GUTTER;
    const right = W;
    for (let i = first; i < last; i++) {
      const y = AXIS_H + i * ROW_H - scroll + (ROW_H - BAR_H) / 2;
      for (const s of this.sockets[i].states) {
        let x0 = this.xOf(s.since);
        let x1 = this.xOf(spanEnd(s, this.now));
        if (x1 < left || x0 > right) continue;
        x0 = Math.max(x0, left - 1);
        x1 = Math.min(x1, right + 1);
        const w = Math.max(x1 - x0, 2);
        ctx.fillStyle = this.colours.get(s.state) || th.muted;
        ctx.fillRect(x0, y, w, BAR_H);
        if (w > 24) {
          const label = fitText(ctx, s.state, w - 6);
          if (label) {
            ctx.fillStyle = this.textColour.get(s.state) || "#000";
            ctx.fillText(label, Math.max(x0, left) + 3, y + BAR_H / 2 + 0.5);
          }
        }
      }
      const stuck = this.stuck.get(this.sockets[i].id);
      if (stuck) {  // the time past the threshold: underlined and framed in the danger colour
        const span = [...this.sockets[i].states].reverse().find((s) => s.state === stuck.state);
        if (span) {
          const x0 = Math.max(this.xOf(Math.max(span.since, stuck.from)), left);
          const x1 = Math.min(this.xOf(spanEnd(span, this.now)), right);
          if (x1 > x0) {
            ctx.fillStyle = th.danger;
            ctx.fillRect(x0, y + BAR_H + 1, x1 - x0, 3);
            ctx.strokeStyle = th.danger;
            ctx.lineWidth = 2;
            ctx.strokeRect(x0, y - 1, x1 - x0, BAR_H + 2);
          }
        }
      }
      if (i === this.selected || i === this.peer) {
        ctx.strokeStyle = th.accent;
        ctx.lineWidth = 1.5;
        ctx.setLineDash(i === this.peer ? [4, 3] : []);
        const s0 = this.xOf(this.sockets[i].states[0]?.since ?? 0);
        const st = this.sockets[i].states;
        const s1 = this.xOf(st.length ? spanEnd(st[st.length - 1], this.now) : 0);
        ctx.strokeRect(Math.max(s0, left) - 1.5, y - 1.5, Math.min(s1, right) - Math.max(s0, left) + 3, BAR_H + 3);
        ctx.setLineDash([]);
      }
    }
    for (const m of this.markers) {  // a refused call on this port: a line across every row
      const x = Math.round(this.xOf(m.t)) + 0.5;
      if (x < left || x > right) continue;
      ctx.strokeStyle = th.danger;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(x, AXIS_H);
      ctx.lineTo(x, H);
      ctx.stroke();
      ctx.fillStyle = th.danger;
      ctx.font = `600 10px ${th.font}`;
      ctx.fillText(m.label, Math.min(x + 3, right - ctx.measureText(m.label).width - 2), AXIS_H + 7);
    }
    const nowX = this.xOf(this.now);
    if (nowX >= left && nowX <= right) {
      ctx.strokeStyle = th.now;
      ctx.lineWidth = 1;
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(Math.round(nowX) + 0.5, AXIS_H);
      ctx.lineTo(Math.round(nowX) + 0.5, H);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.restore();

    // Row labels in the gutter: id, then who talks to whom.
    ctx.font = `11px ${th.mono}`;
    for (let i = first; i < last; i++) {
      const y = AXIS_H + i * ROW_H - scroll + ROW_H / 2;
      const sock = this.sockets[i];
      ctx.fillStyle = this.stuck.has(sock.id) ? th.danger : th.muted;
      ctx.fillText(this.stuck.has(sock.id) ? `!#${sock.id}` : `#${sock.id}`, 6, y);
      ctx.fillStyle = th.fg;
      const text = fitText(ctx, rowLabel(sock), GUTTER - 68);
      ctx.fillText(text, 62, y);
    }
    ctx.strokeStyle = th.grid;
    ctx.beginPath();
    ctx.moveTo(GUTTER - 0.5, 0);
    ctx.lineTo(GUTTER - 0.5, H);
    ctx.stroke();

    this.drawAxis(ctx, ticks);
    if (!this.sockets.length) {
      ctx.fillStyle = th.muted;
      ctx.font = `13px ${th.font}`;
      ctx.fillText("No sockets match these filters.", GUTTER + 16, AXIS_H + 30);
    }
    this.lastDrawMs = performance.now() - started;
  }

  drawAxis(ctx, ticks) {
    const th = this.theme;
    ctx.fillStyle = th.bg;
    ctx.fillRect(0, 0, this.width, AXIS_H);
    ctx.strokeStyle = th.grid;
    ctx.beginPath();
    ctx.moveTo(0, AXIS_H - 0.5);
    ctx.lineTo(this.width, AXIS_H - 0.5);
    ctx.stroke();
    ctx.font = `11px ${th.font}`;
    ctx.fillStyle = th.muted;
    ctx.fillText(ticks.base, 6, AXIS_H / 2);
    ctx.fillStyle = th.fg;
    ctx.strokeStyle = th.muted;
    ctx.beginPath();
    for (const t of ticks.values) {
      const x = Math.round(this.xOf(t)) + 0.5;
      ctx.moveTo(x, AXIS_H - 6);
      ctx.lineTo(x, AXIS_H);
      const label = ticks.label(t);
      const w = ctx.measureText(label).width;
      if (x - w / 2 > GUTTER + 2 && x + w / 2 < this.width - 2) ctx.fillText(label, x - w / 2, AXIS_H / 2 - 2);
    }
    ctx.stroke();
  }

  ticks() {
    const { t0, t1 } = this.view;
    const span = t1 - t0;
    const want = Math.max(2, this.plotW() / TICK_PX);
    const step = STEPS.find((s) => span / s <= want) || STEPS[STEPS.length - 1];
    const offset = step >= 60 ? new Date(t0 * 1000).getTimezoneOffset() * -60 : 0; // local minutes and hours
    const values = [];
    for (let t = Math.ceil((t0 + offset) / step) * step - offset; t <= t1 && values.length < 200; t += step) {
      values.push(t);
    }
    let label;
    let base;
    if (step >= 1) {
      label = (t) => clock(t, 0);
      base = "local time";
    } else if (step >= 1e-3) {
      label = (t) => clock(t, 3).slice(step >= 0.1 ? 3 : 6); // drop the hour (and minute) below 1 s
      base = `from ${clock(t0, 0)}`;
    } else {
      const origin = Math.floor(t0 * 1e3) / 1e3;
      label = (t) => `+${duration(t - origin)}`;
      base = `from ${clock(origin, 3)}`;
    }
    return { values, label, base };
  }

  // -- interaction -----------------------------------------------------------

  listen() {
    const c = this.canvas;
    new ResizeObserver(() => this.resize()).observe(this.scroller);
    this.scroller.addEventListener("scroll", () => {
      this.hideTooltip();
      this.requestDraw();
    }, { passive: true });
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.readTheme());

    c.addEventListener("wheel", (e) => {
      const { x } = this.point(e);
      if (e.ctrlKey || e.metaKey) {
        e.preventDefault();
        this.zoom(Math.exp(clamp(e.deltaY, -300, 300) * 0.002), Math.max(x, GUTTER));
      } else if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
        e.preventDefault();
        const d = e.shiftKey && !e.deltaX ? e.deltaY : e.deltaX;
        this.pan(d / this.plotW());
      }
    }, { passive: false });

    let drag = null;
    c.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      drag = { x: e.clientX, view: { ...this.view }, moved: false };
      c.setPointerCapture(e.pointerId);
    });
    c.addEventListener("pointermove", (e) => {
      if (drag) {
        const dx = e.clientX - drag.x;
        if (Math.abs(dx) > 3) drag.moved = true;
        if (drag.moved) {
          const dt = (dx / this.plotW()) * (drag.view.t1 - drag.view.t0);
          this.setView(drag.view.t0 - dt, drag.view.t1 - dt);
          this.hideTooltip();
          return;
        }
      }
      this.hovered(e);
    });
    c.addEventListener("pointerup", (e) => {
      if (drag && !drag.moved) {
        const { x, y } = this.point(e);
        const h = this.hit(x, y);
        if (h) this.onSelect(h.index);
      }
      drag = null;
    });
    c.addEventListener("pointerleave", () => {
      this.hover = -1;
      this.hideTooltip();
      this.requestDraw();
    });
    c.addEventListener("keydown", (e) => this.key(e));
  }

  key(e) {
    const n = this.sockets.length;
    const page = Math.max(1, Math.floor((this.height - AXIS_H) / ROW_H) - 1);
    const moves = {
      ArrowUp: -1, ArrowDown: 1, PageUp: -page, PageDown: page, Home: -Infinity, End: Infinity,
    };
    if (e.key in moves && n) {
      e.preventDefault();
      const from = this.selected < 0 ? (moves[e.key] > 0 ? -1 : n) : this.selected;
      this.onSelect(clamp(from + moves[e.key], 0, n - 1));
    } else if (e.key === "+" || e.key === "=") {
      this.zoom(0.5);
    } else if (e.key === "-" || e.key === "_") {
      this.zoom(2);
    } else if (e.key === "0") {
      this.fit();
    } else if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      e.preventDefault();
      this.pan(e.key === "ArrowLeft" ? -0.2 : 0.2);
    }
  }

  point(e) {
    const r = this.canvas.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }

  hovered(e) {
    const { x, y } = this.point(e);
    const h = this.hit(x, y);
    const index = h ? h.index : -1;
    if (index !== this.hover) {
      this.hover = index;
      this.requestDraw();
    }
    this.canvas.style.cursor = h ? "pointer" : "default";
    if (!h) {
      this.hideTooltip();
      return;
    }
    const s = h.sock;
    const lines = [
      [`#${s.id} ${s.role} · ${process(s)}`, "strong"],
      [`${endpoint(s.laddr, s.lport)} → ${endpoint(s.raddr, s.rport)}`, ""],
    ];
    if (h.span) {
      const end = spanEnd(h.span, this.now);
      const still = h.span.until == null ? " so far" : "";
      lines.push([`${h.span.state} for ${duration(end - h.span.since)}${still}`, "state"]);
      lines.push([`${clock(h.span.since)} – ${h.span.until == null ? "now" : clock(h.span.until)}`, "muted"]);
    } else {
      lines.push([`${s.states.length} states · ${s.open ? "open" : "closed"}`, "muted"]);
    }
    this.tooltip.replaceChildren(...lines.map(([text, cls]) => {
      const div = document.createElement("div");
      div.textContent = text;
      if (cls) div.className = cls;
      if (cls === "state") {
        div.classList.add("st");
        div.dataset.state = h.span.state;
      }
      return div;
    }));
    this.tooltip.hidden = false;
    const host = this.tooltip.offsetParent || document.body;
    const hr = host.getBoundingClientRect();
    const tw = this.tooltip.offsetWidth;
    let left = e.clientX - hr.left + 14;
    if (left + tw > hr.width - 4) left = e.clientX - hr.left - tw - 14;
    this.tooltip.style.left = `${left}px`;
    this.tooltip.style.top = `${e.clientY - hr.top + 14}px`;
  }

  hideTooltip() {
    this.tooltip.hidden = true;
  }
}

function rowLabel(s) {
  const arrow = ARROW[s.role] || ARROW.unknown;
  if (s.role === "listener") return `${endpoint(s.laddr, s.lport)} ${arrow} listening`;
  return `:${s.lport} ${arrow} ${endpoint(s.raddr, s.rport)}`;
}

function extentOf(sockets, now) {
  if (!sockets.length) return null;
  let t0 = Infinity;
  let t1 = -Infinity;
  for (const s of sockets) {
    const st = s.states;
    if (!st.length) continue;
    t0 = Math.min(t0, st[0].since);
    t1 = Math.max(t1, spanEnd(st[st.length - 1], now));
  }
  return isFinite(t0) ? { t0, t1: Math.max(t1, t0 + MIN_SPAN) } : null;
}

/** The longest prefix of `text` that fits `max` px, with an ellipsis when cut; "" if nothing fits. */
function fitText(ctx, text, max) {
  if (ctx.measureText(text).width <= max) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(`${text.slice(0, mid)}…`).width <= max) lo = mid;
    else hi = mid - 1;
  }
  return lo >= 3 ? `${text.slice(0, lo)}…` : "";
}

function clamp(x, lo, hi) {
  return Math.min(hi, Math.max(lo, x));
}
