// The device grid: a page of devices from /api/devices, kept live by the socket's `view`;
// with its pager, search and per-second "last seen" ages.

import { state, authHeaders } from "./state.js";
import { $, formatValue, formatAge } from "./util.js";

export const PAGE_SIZE = 50;
const REFRESH_MS = 10_000;   // re-fetch the page list so new devices appear
const STALE_MS = 30_000;     // a device is shown grey when its reading is older than this
const SEARCH_DEBOUNCE_MS = 300;

const el = {
  total: $("total"), totalLabel: $("total-label"), age: $("age"), search: $("search"), error: $("error"),
  head: $("head"), rows: $("rows"), prev: $("prev"), next: $("next"), page: $("page"),
};
const grid = state.grid;

/** @type {{ sendView: (ids: string[]) => boolean, openDetail: (id: string, row: HTMLElement) => void,
 *           onAges: () => void, unauthorized: () => void }} */
let hooks;
let sentView = null;         // ids of the last view sent on the current socket (joined), or null

export const pageCount = () => Math.max(1, Math.ceil(grid.total / PAGE_SIZE));

// --- Rendering ------------------------------------------------------------------------------
function unionMetricNames() {
  const names = new Set();
  for (const id of grid.ids) for (const name of Object.keys(grid.states.get(id)?.metrics ?? {})) names.add(name);
  return [...names].sort();
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function headerCell(text, className) {
  const th = document.createElement("th");
  th.scope = "col";
  if (className) th.className = className;
  th.textContent = text;
  return th;
}

// Rebuilds the whole table; used when the page, its device set or its metric columns change.
function renderTable() {
  grid.metricNames = unionMetricNames();
  el.head.replaceChildren(headerCell("Device"), headerCell("Group"), headerCell("Last seen"),
    ...grid.metricNames.map((name) => headerCell(name.replace(/_/g, " "), "num")));
  if (grid.ids.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(grid.query ? "No device matches the search." : grid.groupFilter ? "No devices in this group." : "No devices yet.", "empty");
    td.colSpan = 3 + grid.metricNames.length;
    tr.append(td);
    el.rows.replaceChildren(tr);
  } else {
    el.rows.replaceChildren(...grid.ids.map((id) => {
      const tr = document.createElement("tr");
      tr.dataset.device = id;
      tr.tabIndex = 0;                                // rows open the detail panel, by keyboard too
      tr.classList.toggle("selected", id === state.detail.id);
      tr.append(cell(id, "id"), cell("", "group"), cell("", "last-seen"));
      for (const name of grid.metricNames) {
        const td = cell("", "num");
        td.dataset.metric = name;
        tr.append(td);
      }
      fillRow(tr, grid.states.get(id));
      return tr;
    }));
  }
  renderPager();
  refreshAges();
}

function renderPager() {
  const pages = pageCount();
  el.page.textContent = `page ${grid.page + 1} of ${pages}`;
  /** @type {HTMLButtonElement} */ (el.prev).disabled = grid.page === 0;
  /** @type {HTMLButtonElement} */ (el.next).disabled = grid.page + 1 >= pages;
  el.total.textContent = String(grid.total);
  el.totalLabel.textContent = grid.query ? "matching" : "devices";
}

function fillRow(tr, device) {
  tr.querySelector("td.group").textContent = device?.group ?? "";
  const offline = device?.online === false;
  tr.classList.toggle("is-offline", offline);
  tr.querySelector("td.id").title = device ? (offline ? "offline" : "online") : "";
  for (const td of tr.querySelectorAll("td[data-metric]")) {
    td.textContent = formatValue(device?.metrics?.[td.dataset.metric]);
  }
}

function flash(tr) {
  const next = tr.classList.contains("flash-a") ? "flash-b" : "flash-a";
  tr.classList.remove("flash-a", "flash-b");
  tr.classList.add(next);
}

/** Runs every second: relative "last seen" text, stale rows and the header's age indicator. */
export function refreshAges() {
  const now = Date.now();
  let newest = -Infinity;
  for (const tr of el.rows.querySelectorAll("tr[data-device]")) {
    const ts = grid.states.get(tr.dataset.device)?.ts;
    const td = tr.querySelector("td.last-seen");
    if (typeof ts !== "number") { td.textContent = "never"; tr.classList.add("stale"); continue; }
    newest = Math.max(newest, ts);
    td.textContent = formatAge(now - ts);
    td.title = new Date(ts).toLocaleString();
    tr.classList.toggle("stale", now - ts > STALE_MS);
  }
  el.age.textContent = Number.isFinite(newest) ? formatAge(now - newest) : "–";
  el.age.classList.toggle("old", Number.isFinite(newest) && now - newest > STALE_MS);
  hooks.onAges();
}

/**
 * Applies states from the socket (or a fetch) to the devices on screen; others are ignored.
 * Only rows whose values differ are refilled (and flashed); a newer ts alone just moves
 * "last seen", which refreshAges reads from `grid.states`.
 * @param {import("./state.js").DeviceState[]} devices
 */
export function applyStates(devices, { flashRows }) {
  let needsRender = false, newer = false;
  const changed = [];
  for (const d of devices) {
    const old = d && grid.states.get(d.id);
    if (!old || old.ts > d.ts) continue;              // not on this page (any more), or out of date
    grid.states.set(d.id, d);
    newer ||= d.ts !== old.ts;
    if (Object.keys(d.metrics ?? {}).some((name) => !grid.metricNames.includes(name))) needsRender = true;
    // A device going offline (or back) may come with the same readings: that is a change too.
    if (JSON.stringify(old.metrics) !== JSON.stringify(d.metrics) || old.online !== d.online) changed.push(d.id);
  }
  if (needsRender) renderTable();
  for (const id of changed) {
    const tr = el.rows.querySelector(`tr[data-device="${CSS.escape(id)}"]`);
    if (!tr) continue;
    if (!needsRender) fillRow(tr, grid.states.get(id));
    if (flashRows) flash(tr);
  }
  if (newer && !needsRender) refreshAges();
}

/** Marks the row of the device whose panel is open (or none). */
export function markSelected(id) {
  for (const tr of el.rows.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  if (id) el.rows.querySelector(`tr[data-device="${CSS.escape(id)}"]`)?.classList.add("selected");
}

// --- Fetching the page ----------------------------------------------------------------------
let loadSeq = 0, inflight = null, refreshTimer = 0;

/** Fetches the current page; `forceView` re-sends the view even if the ids did not change. */
export async function load({ forceView = false } = {}) {
  clearTimeout(refreshTimer);
  inflight?.abort();                                  // only the newest request matters
  const ctl = inflight = new AbortController();
  const mySeq = ++loadSeq;
  const url = new URL("/api/devices", location.href);
  url.searchParams.set("offset", String(grid.page * PAGE_SIZE));
  url.searchParams.set("limit", String(PAGE_SIZE));
  if (grid.query) url.searchParams.set("q", grid.query);
  if (grid.groupFilter) url.searchParams.set("group", grid.groupFilter);
  try {
    const res = await fetch(url, { signal: ctl.signal, headers: authHeaders() });
    if (res.status === 401) { hooks.unauthorized(); return; }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = await res.json();
    if (mySeq !== loadSeq) return;
    grid.total = body.total;
    if (grid.page >= pageCount() && grid.total > 0) { // devices vanished or the search narrowed
      grid.page = pageCount() - 1;
      return load({ forceView: true });
    }
    const newIds = body.devices.map((d) => d.id);
    el.error.textContent = "";
    if (!forceView && newIds.join("\n") === grid.ids.join("\n")) {
      // Same rows (the periodic refresh): update in place, without losing newer live values.
      applyStates(body.devices, { flashRows: false });
      renderPager();
    } else {
      const previous = new Map(grid.states);
      grid.ids = newIds;
      grid.states.clear();
      for (const d of body.devices) {
        const live = previous.get(d.id);              // keep a newer state the socket delivered
        grid.states.set(d.id, live && live.ts > d.ts ? live : d);
      }
      renderTable();
    }
    grid.loaded = true;
    sendView(forceView);
  } catch (err) {
    if (err.name === "AbortError") return;
    el.error.textContent = `Could not load devices (${err.message}); retrying.`;
  } finally {
    if (mySeq === loadSeq && !el.error.querySelector("form")) refreshTimer = setTimeout(load, REFRESH_MS);
  }
}

/** Tells the server which devices are on screen, unless it knows already (or `force`). */
export function sendView(force) {
  const key = grid.ids.join("\n");
  if (!grid.loaded || (!force && key === sentView)) return;
  if (hooks.sendView(grid.ids)) sentView = key;
}

/** The socket changed (or the server refused a view): the next sendView sends again. */
export function forgetSentView() { sentView = null; }

/** Narrows the grid to a group ("" = all devices). */
export function showGroup(path) {
  grid.groupFilter = path;
  grid.page = 0;
  load({ forceView: true });
}

/** @param {typeof hooks} h */
export function initGrid(h) {
  hooks = h;
  el.prev.addEventListener("click", () => { if (grid.page > 0) { grid.page--; load({ forceView: true }); } });
  el.next.addEventListener("click", () => { if (grid.page + 1 < pageCount()) { grid.page++; load({ forceView: true }); } });
  let searchTimer = 0;
  el.search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      const q = /** @type {HTMLInputElement} */ (el.search).value.trim();
      if (q === grid.query) return;
      grid.query = q;
      grid.page = 0;
      load({ forceView: true });
    }, SEARCH_DEBOUNCE_MS);
  });
  // Rows open the detail panel: click, or Enter on a focused row.
  el.rows.addEventListener("click", (ev) => {
    const tr = /** @type {HTMLElement} */ (ev.target).closest("tr[data-device]");
    if (tr) hooks.openDetail(tr.dataset.device, tr);
  });
  el.rows.addEventListener("keydown", (ev) => {
    const tr = /** @type {HTMLElement} */ (ev.target).closest("tr[data-device]");
    if (tr && ev.key === "Enter") hooks.openDetail(tr.dataset.device, tr);
  });
}
