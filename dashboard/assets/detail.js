// The device panel: a drawer with one device's live values and the history of one metric as a
// uPlot chart (chart.js): last hour, day, week or a custom range from /api/history, with the
// min–max band, extended by live readings while the range ends now.

import { state, authHeaders } from "./state.js";
import { $, make, formatValue, formatAge } from "./util.js";
import { chartColumns, addLive, liveAfter, loadUplot, createChart } from "./chart.js";

const HOUR = 3_600_000;
/** How often the history is fetched again, by range: the store's finest tier is 10 s. */
const refreshEvery = (range) => (range <= HOUR ? 10_000 : range <= 24 * HOUR ? 60_000 : 300_000);
const CHART_HEIGHT = 260;

const el = {
  detail: $("detail"), title: $("detail-title"), sub: $("detail-sub"), close: $("detail-close"), values: $("detail-values"),
  metric: /** @type {HTMLSelectElement} */ ($("detail-metric")), ranges: $("ranges"), error: $("detail-error"),
  custom: /** @type {HTMLFormElement} */ ($("custom-range")),
  from: /** @type {HTMLInputElement} */ ($("custom-from")), to: /** @type {HTMLInputElement} */ ($("custom-to")),
  history: $("history"), info: $("history-info"),
};
const detail = state.detail;
/**
 * Per panel, not shared: the device's last known state, the fetched series, the live readings
 * since, the chart, the request in flight, the refresh timer, and what opened the panel.
 */
const local = {
  /** @type {import("./state.js").DeviceState|null} */ device: null,
  /** @type {{points: import("./chart.js").HistoryPoint[], bucket_ms: number, tier_ms: number}|null} */ series: null,
  /** @type {import("./chart.js").LivePoint[]} */ live: [],
  /** @type {any} */ chart: null,
  /** The x range drawn, ms. */ from: 0, to: 0,
  /** @type {AbortController|null} */ ctl: null, timer: 0, /** @type {HTMLElement|null} */ opener: null,
};
/** @type {{ markSelected: (id: string|null) => void, viewChanged: () => void }} */
let hooks;

/** The range ends now (a sliding window that live readings extend), or is a fixed custom one. */
const isLive = () => detail.custom === null;

export function openDetail(id, opener) {
  if (detail.id !== id) local.live = [];
  detail.id = id;
  local.opener = opener;
  local.device = state.grid.states.get(id) ?? null;
  hooks.markSelected(id);
  hooks.viewChanged();                                // the device stays in the view while its panel is open
  el.title.textContent = id;
  fillMetricChoices();
  el.detail.hidden = false;
  renderDetailHead();
  clearChart();
  loadHistory();
  el.close.focus();
}

function fillMetricChoices() {
  // Numeric metrics only: those are what the store keeps history for.
  const metrics = local.device?.metrics ?? {};
  const names = Object.keys(metrics).filter((n) => typeof metrics[n] === "number").sort();
  if (!names.includes(detail.metric)) detail.metric = names.includes("temperature") ? "temperature" : names[0] ?? "";
  el.metric.replaceChildren(...names.map((n) => new Option(n.replace(/_/g, " "), n)));
  el.metric.value = detail.metric;
}

function closeDetail() {
  local.ctl?.abort();
  clearTimeout(local.timer);
  detail.id = null;
  el.detail.hidden = true;
  destroyChart();
  hooks.markSelected(null);
  hooks.viewChanged();
  if (local.opener?.isConnected) local.opener.focus();
}

/** The panel's subtitle and live values: group, online, age of the last reading. Every second. */
export function renderDetailHead() {
  if (!detail.id) return;
  const s = local.device = state.grid.states.get(detail.id) ?? local.device;
  if (!s) { el.sub.textContent = "No reading yet."; el.values.replaceChildren(); return; }
  const seen = typeof s.ts === "number" ? `last reading ${formatAge(Date.now() - s.ts)}` : "never seen";
  el.sub.textContent = `${s.group} · ${s.online === false ? "offline" : "online"} · ${seen}`;
  const names = Object.keys(s.metrics ?? {}).sort();
  if (el.values.dataset.names !== names.join()) {
    el.values.dataset.names = names.join();
    el.values.replaceChildren(...names.map((n) => {
      const pair = make("div");                       // a dl may group each dt with its dd
      pair.append(make("dt", { textContent: n.replace(/_/g, " ") }), make("dd"));
      return pair;
    }));
  }
  names.forEach((n, i) => { el.values.children[i].lastElementChild.textContent = formatValue(s.metrics[n]); });
}

/** A new state of the open device arrived over the socket: its values, and the chart live. */
export function onDeviceState(/** @type {import("./state.js").DeviceState} */ device) {
  if (device.id !== detail.id) return;
  local.device = device;
  renderDetailHead();
  const value = device.metrics?.[detail.metric];
  if (typeof value !== "number" || typeof device.ts !== "number" || !isLive()) return;
  if (addLive(local.live, { ts: device.ts, value })) draw();
}

function clearChart() {
  local.series = null;
  el.history.removeAttribute("data-points");
  el.history.removeAttribute("data-live");
  el.info.textContent = el.error.textContent = "";
  local.chart?.setData([[], [], [], []]);
}

function destroyChart() {
  local.chart?.destroy();
  local.chart = null;
  el.history.removeAttribute("data-scheme");
}

async function loadHistory() {
  clearTimeout(local.timer);
  local.ctl?.abort();
  if (!detail.id) return;
  if (!detail.metric) { el.error.textContent = "This device has reported no numeric metric yet."; return; }
  const ctl = local.ctl = new AbortController();
  const [from, to] = isLive() ? [Date.now() - detail.range, Date.now()] : detail.custom;
  const width = el.history.clientWidth || 500;
  const points = Math.min(2000, Math.max(2, Math.floor(width / 2))); // ~2 px per bucket
  const url = new URL("/api/history", location.href);
  for (const [k, v] of Object.entries({ device: detail.id, metric: detail.metric, from, to, points })) url.searchParams.set(k, String(v));
  try {
    const [res, uPlot] = await Promise.all([fetch(url, { signal: ctl.signal, headers: authHeaders() }), loadUplot()]);
    const body = await res.json().catch(() => ({}));
    if (res.status === 401) throw new Error("the viewer token was refused");
    if (!res.ok) throw new Error(body.error ?? (res.status === 503 ? "this dashboard has no history store" : `HTTP ${res.status}`));
    if (ctl !== local.ctl) return;
    el.error.textContent = "";
    local.series = body;
    local.live = liveAfter(local.live, body.points, body.bucket_ms);
    if (!local.chart) {
      local.chart = createChart(uPlot, el.history, {
        width, height: CHART_HEIGHT, label: detail.metric, range: () => [local.from, local.to],
      });
      // The colours it was made in (it is made anew when the scheme changes).
      el.history.dataset.scheme = matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
    }
    local.chart.series[2].label = detail.metric;
    draw();
  } catch (err) {
    if (err.name === "AbortError") return;
    el.error.textContent = `Could not load the history: ${err.message}`;
  } finally {
    if (ctl === local.ctl && detail.id && isLive()) local.timer = setTimeout(loadHistory, refreshEvery(detail.range));
  }
}

/** Draws the series and the live readings; a live range slides to end now. */
function draw() {
  if (!local.chart || !local.series) return;          // made anew (colour scheme) or not loaded yet
  const { points, bucket_ms: bucket, tier_ms: tier } = local.series;
  [local.from, local.to] = isLive() ? [Date.now() - detail.range, Date.now()] : detail.custom;
  local.chart.setData(chartColumns(points, bucket, isLive() ? local.live : []));
  el.history.dataset.points = String(points.length);
  el.history.dataset.live = String(isLive() ? local.live.length : 0);
  const live = isLive() ? ` · ${local.live.length} live reading${local.live.length === 1 ? "" : "s"} since` : "";
  el.info.textContent = `${points.length} point${points.length === 1 ? "" : "s"} · ${formatDuration(bucket)} buckets ` +
    `(from the ${formatDuration(tier)} tier)${live} · band: min–max, line: mean`;
}

function formatDuration(ms) {
  if (ms < 60_000) return `${Math.round(ms / 1000)} s`;
  if (ms < HOUR) return `${Math.round(ms / 60_000)} min`;
  if (ms < 24 * HOUR) return `${Math.round(ms / HOUR)} h`;
  return `${Math.round(ms / (24 * HOUR))} d`;
}

/** A datetime-local input's value for `ms` (local time, minutes). */
const localInput = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60_000).toISOString().slice(0, 16);

function pressRange(button) {
  for (const b of el.ranges.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
}

/** @param {typeof hooks} h */
export function initDetail(h) {
  hooks = h;
  el.close.addEventListener("click", closeDetail);
  el.metric.addEventListener("change", () => { detail.metric = el.metric.value; local.live = []; clearChart(); loadHistory(); });
  el.ranges.addEventListener("click", (ev) => {
    const button = /** @type {HTMLElement} */ (ev.target).closest("button[data-range]");
    if (!button) return;
    pressRange(button);
    if (button.dataset.range === "custom") {
      // The form opens on the range shown now; Apply draws it.
      el.custom.hidden = false;
      const [from, to] = detail.custom ?? [Date.now() - detail.range, Date.now()];
      el.from.value = localInput(from);
      el.to.value = localInput(to);
      el.from.focus();
      return;
    }
    el.custom.hidden = true;
    detail.custom = null;
    detail.range = Number(button.dataset.range);
    clearChart();
    loadHistory();
  });
  el.custom.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const from = new Date(el.from.value).getTime(), to = new Date(el.to.value).getTime();
    if (!(from < to)) { el.error.textContent = "The range must start before it ends."; return; }
    detail.custom = [from, to];
    clearChart();
    loadHistory();
  });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !el.detail.hidden) closeDetail(); });
  new ResizeObserver(() => {
    if (local.chart && el.history.clientWidth) local.chart.setSize({ width: el.history.clientWidth, height: CHART_HEIGHT });
  }).observe(el.history);
  // The chart takes its colours when made: make it anew when the scheme changes.
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (!local.chart) return;
    destroyChart();
    if (local.series) loadHistory();
  });
}
