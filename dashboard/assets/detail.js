// The device panel: a drawer with one device's history as a chart. The chart is hand-drawn
// SVG (no libraries): a min–max band with the mean line over it, so spikes that downsampling
// averages away stay visible.

import { state, authHeaders } from "./state.js";
import { $, formatValue, formatAge } from "./util.js";

const HISTORY_REFRESH_MS = 10_000; // the store's finest tier is 10 s: nothing new sooner
const SVG_NS = "http://www.w3.org/2000/svg";

const el = {
  detail: $("detail"), title: $("detail-title"), sub: $("detail-sub"), close: $("detail-close"),
  metric: /** @type {HTMLSelectElement} */ ($("detail-metric")), ranges: $("ranges"), error: $("detail-error"),
  history: $("history"), info: $("history-info"),
};
const detail = state.detail;
/** Per panel, not shared: the fetched series, the request in flight, the refresh timer. */
const local = {
  /** @type {import("./state.js").DeviceState|null} */ device: null,
  series: null, /** @type {AbortController|null} */ ctl: null, timer: 0, /** @type {HTMLElement|null} */ opener: null,
};
/** @type {(id: string|null) => void} */
let markSelected = () => {};

export function openDetail(id, opener) {
  detail.id = id;
  local.opener = opener;
  local.device = state.grid.states.get(id) ?? null;
  markSelected(id);
  el.title.textContent = id;
  // Numeric metrics only: those are what the store keeps history for.
  const metrics = local.device?.metrics ?? {};
  const names = Object.keys(metrics).filter((n) => typeof metrics[n] === "number").sort();
  if (!names.includes(detail.metric)) detail.metric = names.includes("temperature") ? "temperature" : names[0] ?? "";
  el.metric.replaceChildren(...names.map((n) => new Option(n.replace(/_/g, " "), n)));
  el.metric.value = detail.metric;
  el.detail.hidden = false;
  renderDetailHead();
  clearChart();
  loadHistory();
  el.close.focus();
}

function closeDetail() {
  local.ctl?.abort();
  clearTimeout(local.timer);
  detail.id = null;
  el.detail.hidden = true;
  markSelected(null);
  if (local.opener?.isConnected) local.opener.focus();
}

/** The panel's subtitle: group, online, age of the last reading. Runs every second. */
export function renderDetailHead() {
  if (!detail.id) return;
  const s = local.device = state.grid.states.get(detail.id) ?? local.device; // off this page: last known
  if (!s) { el.sub.textContent = "No reading yet."; return; }
  const seen = typeof s.ts === "number" ? `last reading ${formatAge(Date.now() - s.ts)}` : "never seen";
  el.sub.textContent = `${s.group} · ${s.online === false ? "offline" : "online"} · ${seen}`;
}

function clearChart() {
  local.series = null;
  el.history.replaceChildren();
  el.history.removeAttribute("data-points");
  el.info.textContent = el.error.textContent = "";
}

async function loadHistory() {
  clearTimeout(local.timer);
  local.ctl?.abort();
  if (!detail.id) return;
  if (!detail.metric) { el.error.textContent = "This device has reported no numeric metric yet."; return; }
  const ctl = local.ctl = new AbortController();
  const to = Date.now(), from = to - detail.range;
  const url = new URL("/api/history", location.href);
  const points = Math.min(2000, Math.max(2, Math.floor((el.history.clientWidth || 500) / 2))); // ~2 px per bucket
  const params = { device: detail.id, metric: detail.metric, from, to, points };
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, String(v));
  try {
    const res = await fetch(url, { signal: ctl.signal, headers: authHeaders() });
    const body = await res.json().catch(() => ({}));
    if (res.status === 401) throw new Error("the viewer token was refused");
    if (!res.ok) throw new Error(body.error ?? (res.status === 503 ? "this dashboard has no history store" : `HTTP ${res.status}`));
    el.error.textContent = "";
    local.series = { ...body, from, to };
    drawChart(local.series);
  } catch (err) {
    if (err.name === "AbortError") return;
    el.error.textContent = `Could not load the history: ${err.message}`;
  } finally {
    if (ctl === local.ctl && detail.id) local.timer = setTimeout(loadHistory, HISTORY_REFRESH_MS);
  }
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text != null) node.textContent = text;
  return node;
}

// Round steps (1, 2, 5 × 10^n) spanning [lo, hi]; the domain snaps out to whole steps.
function niceScale(lo, hi, count) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw);
  const start = Math.floor(lo / step) * step, end = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let v = start; v <= end + step / 2; v += step) ticks.push(v);
  return { lo: start, hi: end, ticks, decimals: Math.max(0, Math.min(4, -Math.floor(Math.log10(step)))) };
}

const MIN = 60_000, HOUR = 3_600_000, DAY = 86_400_000;
const TIME_STEPS = [MIN, 2 * MIN, 5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY];

function formatDuration(ms) {
  if (ms < MIN) return `${Math.round(ms / 1000)} s`;
  if (ms < HOUR) return `${Math.round(ms / MIN)} min`;
  if (ms < DAY) return `${Math.round(ms / HOUR)} h`;
  return `${Math.round(ms / DAY)} d`;
}

function drawChart({ points, bucket_ms: bucket, tier_ms: tier, from, to }) {
  const W = Math.max(300, el.history.clientWidth || 500), H = 260;   // drawn at pixel size: text is not scaled
  const m = { l: 52, r: 14, t: 12, b: 26 };
  const y = points.length ? niceScale(Math.min(...points.map((p) => p.min)), Math.max(...points.map((p) => p.max)), 5)
    : { ...niceScale(0, 1, 2), ticks: [] };
  const px = (t) => m.l + (Math.min(to, Math.max(from, t)) - from) / (to - from) * (W - m.l - m.r);
  const py = (v) => m.t + (y.hi - v) / (y.hi - y.lo) * (H - m.t - m.b);
  const f = (n) => n.toFixed(1);
  const parts = [];
  for (const v of y.ticks) {
    parts.push(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: f(py(v)), y2: f(py(v)) }),
      svg("text", { x: m.l - 6, y: f(py(v) + 4), "text-anchor": "end" }, v.toFixed(y.decimals)));
  }
  // Time ticks on round local times (whole hours, midnights).
  const step = TIME_STEPS.find((s) => (to - from) / s <= 6) ?? DAY * Math.ceil((to - from) / DAY / 6);
  const tz = new Date(from).getTimezoneOffset() * MIN;
  const long = to - from > DAY;
  for (let t = Math.ceil((from - tz) / step) * step + tz; t <= to; t += step) {
    const d = new Date(t);
    const label = step >= DAY ? d.toLocaleDateString([], { weekday: "short", day: "numeric" })
      : (long ? `${d.toLocaleDateString([], { weekday: "short" })} ` : "") + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    parts.push(svg("line", { class: "axis", x1: f(px(t)), x2: f(px(t)), y1: H - m.b, y2: H - m.b + 4 }));
    if (px(t) < W - 30) parts.push(svg("text", { x: f(px(t)), y: H - 8, "text-anchor": "middle" }, label)); // else clipped
  }
  parts.push(svg("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
  // Runs of consecutive buckets; a missing bucket breaks the line instead of bridging the gap.
  const runs = [];
  for (const [i, p] of points.entries()) {
    if (i === 0 || p.ts - points[i - 1].ts > bucket * 1.5) runs.push([]);
    runs.at(-1).push(p);
  }
  const half = Math.max(1.5, (px(from + bucket) - px(from)) / 2); // a lone bucket still gets a width
  for (const run of runs) {
    const xs = run.map((p) => px(p.ts + bucket / 2));
    if (run.length === 1) { xs.unshift(xs[0] - half); xs[1] += half; run.unshift(run[0]); }
    const top = run.map((p, i) => `${f(xs[i])},${f(py(p.max))}`);
    const bottom = run.map((p, i) => `${f(xs[i])},${f(py(p.min))}`).reverse();
    parts.push(svg("path", { class: "band", d: `M${top.join("L")}L${bottom.join("L")}Z` }),
      svg("path", { class: "mean", d: `M${run.map((p, i) => `${f(xs[i])},${f(py(p.mean))}`).join("L")}` }));
  }
  // Few points: mark each, with its numbers as a tooltip.
  if (points.length <= 60) {
    for (const p of points) {
      const dot = svg("circle", { cx: f(px(p.ts + bucket / 2)), cy: f(py(p.mean)), r: 2.5 });
      dot.append(svg("title", {}, `${new Date(p.ts).toLocaleString()}: mean ${formatValue(p.mean)}, ` +
        `min ${formatValue(p.min)}, max ${formatValue(p.max)}, ${p.count} readings`));
      parts.push(dot);
    }
  }
  if (!points.length) {
    parts.push(svg("text", { x: (W + m.l) / 2, y: H / 2, "text-anchor": "middle" }, "No data in this range yet."));
  }
  el.history.setAttribute("viewBox", `0 0 ${W} ${H}`);
  el.history.replaceChildren(...parts);
  el.history.dataset.points = String(points.length);
  el.info.textContent = `${points.length} point${points.length === 1 ? "" : "s"} · ` +
    `${formatDuration(bucket)} buckets (from the ${formatDuration(tier)} tier) · band: min–max, line: mean`;
}

/** @param {{ markSelected: (id: string|null) => void }} hooks */
export function initDetail(hooks) {
  markSelected = hooks.markSelected;
  el.close.addEventListener("click", closeDetail);
  el.metric.addEventListener("change", () => { detail.metric = el.metric.value; clearChart(); loadHistory(); });
  el.ranges.addEventListener("click", (ev) => {
    const button = /** @type {HTMLElement} */ (ev.target).closest("button[data-range]");
    if (!button) return;
    detail.range = Number(button.dataset.range);
    for (const b of el.ranges.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
    clearChart();
    loadHistory();
  });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !el.detail.hidden) closeDetail(); });
  window.addEventListener("resize", () => { if (local.series && !el.detail.hidden) drawChart(local.series); });
}
