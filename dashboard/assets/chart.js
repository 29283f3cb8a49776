// The history chart: uPlot (vendored, see VENDORED.md) drawing a metric's min–max band with
// its mean line, from /api/history's buckets, extended by live readings. The data shaping is
// pure (no DOM) so that it is tested under Node (tests/browser/chart.test.mjs); only
// `loadUplot` and `createChart` touch the page.

/**
 * @typedef {Object} HistoryPoint  one bucket of /api/history
 * @property {number} ts     bucket start, ms
 * @property {number} count
 * @property {number} mean
 * @property {number} min
 * @property {number} max
 * @property {number} last
 */

/** @typedef {{ts: number, value: number}} LivePoint  a reading pushed over the socket */

/** Most live readings kept after the last bucket: a device reporting every second fills it in
 * ten minutes, and a refetch (every 10 s) folds older ones into buckets anyway. Oldest go first. */
export const MAX_LIVE_POINTS = 600;

/**
 * uPlot's columns: x (ms), max, mean, min. A bucket is drawn at its middle; a missing bucket
 * (a gap of more than 1.5 buckets) gets a row of nulls so the line and band break instead of
 * bridging it. Live readings after the last bucket follow, each as min = mean = max.
 * @param {HistoryPoint[]} points   in time order
 * @param {number} bucketMs
 * @param {LivePoint[]} live        in time order
 * @returns {[number[], (number|null)[], (number|null)[], (number|null)[]]}
 */
export function chartColumns(points, bucketMs, live) {
  /** @type {[number[], (number|null)[], (number|null)[], (number|null)[]]} */
  const cols = [[], [], [], []];
  const push = (x, max, mean, min) => { cols[0].push(x); cols[1].push(max); cols[2].push(mean); cols[3].push(min); };
  let lastX = -Infinity;
  for (const p of points) {
    const x = p.ts + bucketMs / 2;
    if (cols[0].length && x - lastX > bucketMs * 1.5) push((x + lastX) / 2, null, null, null);
    push(x, p.max, p.mean, p.min);
    lastX = x;
  }
  const end = points.length ? points.at(-1).ts + bucketMs : -Infinity;
  for (const r of live) {
    if (r.ts < end || r.ts <= lastX) continue;        // already inside a bucket
    push(r.ts, r.value, r.value, r.value);
    lastX = r.ts;
  }
  return cols;
}

/**
 * Adds a live reading, keeping at most MAX_LIVE_POINTS (oldest dropped) in time order.
 * @param {LivePoint[]} live
 * @param {LivePoint} reading
 * @returns {boolean} whether it was added (not a repeat or an older reading)
 */
export function addLive(live, reading) {
  if (!Number.isFinite(reading.value) || (live.length && reading.ts <= live.at(-1).ts)) return false;
  live.push(reading);
  if (live.length > MAX_LIVE_POINTS) live.splice(0, live.length - MAX_LIVE_POINTS);
  return true;
}

/** The live readings not yet inside the history's last bucket. */
export function liveAfter(/** @type {LivePoint[]} */ live, /** @type {HistoryPoint[]} */ points, /** @type {number} */ bucketMs) {
  const end = points.length ? points.at(-1).ts + bucketMs : -Infinity;
  return live.filter((r) => r.ts >= end);
}

// --- uPlot in the page ----------------------------------------------------------------------

/** @type {Promise<any>|null} */
let loading = null;

/** Loads uPlot's script and style sheet once (the page's first load does not carry them). */
export function loadUplot() {
  loading ??= new Promise((resolve, reject) => {
    const css = Object.assign(document.createElement("link"), { rel: "stylesheet", href: "assets/uPlot.min.css" });
    const script = Object.assign(document.createElement("script"), { src: "assets/uPlot.iife.min.js" });
    script.onload = () => resolve(/** @type {any} */ (globalThis).uPlot);
    script.onerror = () => { loading = null; reject(new Error("the chart library did not load")); };
    document.head.append(css, script);
  });
  return loading;
}

const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/**
 * A uPlot chart in `host`, in the page's colours (read now: recreate it when the scheme changes).
 * @param {any} uPlot
 * @param {HTMLElement} host
 * @param {{ width: number, height: number, range: () => [number, number], label: string }} options
 */
export function createChart(uPlot, host, { width, height, range, label }) {
  const accent = cssVar("--accent"), muted = cssVar("--muted"), grid = cssVar("--line-soft");
  const axis = { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  return new uPlot({
    width, height,
    ms: 1,                                            // x values are ms since the epoch
    cursor: { drag: { x: false, y: false } },
    legend: { show: true, live: true },
    scales: { x: { time: true, range: () => range() } },
    axes: [axis, { ...axis, size: 56 }],
    series: [
      {},
      { label: "max", stroke: "transparent", points: { show: false } },
      { label, stroke: accent, width: 1.6 },           // points drawn where they are sparse
      { label: "min", stroke: "transparent", points: { show: false } },
    ],
    bands: [{ series: [1, 3], fill: accent + "2e" }], // the min–max band: spikes survive downsampling
  }, [[], [], [], []], host);
}
