// The device grid: a virtual list over the whole fleet, as a table or as cards. Only the
// lines on screen (plus a few of overscan) exist in the page, and only their devices are in
// the socket's `view`. The list itself comes a page at a time from /api/devices (filtered and
// sorted by the server), cached in a bounded LRU of pages (grid-model.js): the page never
// holds more than MAX_PAGES × PAGE_SIZE devices, at 120 devices or at 100,000.

import { state, authHeaders } from "./state.js";
import { $, make, withData, formatValue, formatAge } from "./util.js";
import { PAGE_SIZE, PageCache, visibleRange, pagesFor, scrollToShow, idAt, viewIds } from "./grid-model.js";

const ROW_HEIGHT = 34;                 // px, table lines (fixed: positions are index × height)
const CARD_HEIGHT = 112, CARD_MIN_WIDTH = 232;
const REFRESH_MS = 10_000;             // pages on screen are fetched again this often
const STALE_MS = 30_000;               // a device is shown grey when its reading is older than this
const SEARCH_DEBOUNCE_MS = 300;
/** The server allows 5 view changes a second (bursts of 10), shared with `groups`: while
 * scrolling, the view goes out at most every 300 ms, the last position always. */
const VIEW_INTERVAL_MS = 300;
const MAX_VIEW = 1000;                 // the server's default `max_view_devices`
const CARD_METRICS = 4;                // metrics a card shows (fixed height)
/** Page requests at once. A scroll bar dragged through 100,000 devices passes hundreds of
 * pages: only those still on screen are fetched, nearest first, two at a time, and one scrolled
 * past is abandoned (the server then skips it too). */
const MAX_INFLIGHT = 2;

const el = {
  total: $("total"), totalLabel: $("total-label"), age: $("age"), search: /** @type {HTMLInputElement} */ ($("search")),
  error: $("error"), grid: $("grid"), head: $("head"), rows: $("rows"), position: $("position"),
  status: /** @type {HTMLSelectElement} */ ($("state-filter")), sort: /** @type {HTMLSelectElement} */ ($("sort")),
  order: $("order"), layout: $("layout"),
};
const grid = state.grid;
/** @type {PageCache} pages of the current query; an evicted page takes its devices' states along */
const cache = new PageCache(undefined, (page) => { for (const id of page.ids) if (id !== state.detail.id) grid.states.delete(id); });
/** Rendered elements by item index, and by device id (for live updates). */
const rendered = new Map(), byId = new Map();
/** Elements not in use, reused before new ones are made. */
const spare = [];
/** Pages being fetched (number -> controller) for the current query. */
const inflight = new Map();
let querySeq = 0, frame = 0, viewTimer = 0, lastViewAt = 0, sentView = null;
let range = { start: 0, end: 0, firstVisible: 0, lastVisible: 0 };
/** Measured once per render, before any write, so placing items forces no layout. */
let geometry = { per: 1, line: ROW_HEIGHT, slot: 0 };

/** @type {{ sendView: (ids: string[]) => boolean, openDetail: (id: string, opener: HTMLElement) => void,
 *           onAges: () => void, unauthorized: () => void }} */
let hooks;

const cards = () => grid.layout === "cards";
const lineHeight = () => (cards() ? CARD_HEIGHT : ROW_HEIGHT);
const perLine = () => (cards() ? Math.max(1, Math.floor(el.rows.clientWidth / CARD_MIN_WIDTH)) : 1);
const headHeight = () => (cards() ? 0 : el.head.offsetHeight);

// --- Layout and rendering -------------------------------------------------------------------

/** The table's columns: fixed widths, so ticking values never move anything. */
function columnTemplate() {
  return `minmax(12rem, 1.3fr) minmax(12rem, 1.5fr) 6.5rem${" 7rem".repeat(grid.metricNames.length)}`;
}

const SORT_LABELS = { group: "Group", id: "Device", seen: "Last seen" };

function renderHead() {
  el.grid.style.setProperty("--cols", columnTemplate());
  const column = (label, sort, className = "") => {
    const cell = make("div", { className: `cell ${className}` });
    cell.setAttribute("role", "columnheader");
    const on = grid.sort === sort;
    cell.setAttribute("aria-sort", on ? (grid.order === "desc" ? "descending" : "ascending") : "none");
    const button = make("button", { type: "button", textContent: label + (on ? (grid.order === "desc" ? " ↓" : " ↑") : "") });
    button.title = `Sort by ${label.toLowerCase()}`;
    button.onclick = () => setSort(sort, on && grid.order === "asc" ? "desc" : "asc");
    cell.append(button);
    return cell;
  };
  el.head.replaceChildren(column("Device", "id", "id"), column("Group", "group", "group"), column("Last seen", "seen", "last-seen"),
    ...grid.metricNames.map((name) => column(name.replace(/_/g, " "), `metric:${name}`, "num")));
}

function renderSortChoices() {
  const options = [["group", "group"], ["id", "device id"], ["seen", "last reading"],
    ...grid.metricNames.map((n) => [`metric:${n}`, n.replace(/_/g, " ")])];
  if (el.sort.options.length !== options.length) el.sort.replaceChildren(...options.map(([v, t]) => new Option(t, v)));
  el.sort.value = grid.sort;
  el.order.textContent = grid.order === "desc" ? "↓ desc" : "↑ asc";
  el.order.setAttribute("aria-label", grid.order === "desc" ? "Descending order (press for ascending)" : "Ascending order (press for descending)");
}

/** A new metric name seen: a column (and a sort choice) more, once. */
function noteMetrics(/** @type {import("./state.js").DeviceState} */ d) {
  const names = Object.keys(d.metrics ?? {}).filter((n) => !grid.metricNames.includes(n));
  if (!names.length) return false;
  grid.metricNames = [...grid.metricNames, ...names].sort();
  renderHead();
  renderSortChoices();
  for (const node of rendered.values()) { node.replaceChildren(); node.dataset.refill = "1"; } // rebuilt with the new columns
  scheduleRender();
  return true;
}

function makeItem() {
  const node = spare.pop() ?? make("div");
  node.setAttribute("role", "row");
  node.tabIndex = -1;
  return node;
}

/** Builds the item's cells (once per element and layout), then fills them. */
function fillItem(node, index, id) {
  const device = id === undefined ? undefined : grid.states.get(id);
  const layout = cards() ? "card" : "row";
  if (node.dataset.layout !== layout || !node.firstChild) {
    node.dataset.layout = layout;
    node.className = layout;
    node.replaceChildren();
    if (cards()) {
      const metrics = make("dl", { className: "metrics" });
      node.append(make("div", { className: "cell id" }), make("div", { className: "cell group" }),
        make("div", { className: "cell last-seen" }), metrics);
    } else {
      node.append(make("div", { className: "cell id" }), make("div", { className: "cell group" }), make("div", { className: "cell last-seen" }),
        ...grid.metricNames.map((name) => withData(make("div", { className: "cell num" }), { metric: name })));
    }
    for (const cell of node.querySelectorAll(".cell")) cell.setAttribute("role", "gridcell");
  }
  node.setAttribute("aria-rowindex", String(index + 2));   // the header is row 1
  node.tabIndex = index === grid.active ? 0 : -1;
  const { per, line, slot } = geometry;
  node.style.top = `${Math.floor(index / per) * line}px`;
  node.style.left = cards() ? `${(index % per) * slot}px` : "";
  node.style.width = cards() ? `${slot - 8}px` : "";
  delete node.dataset.refill;
  if (id === undefined) {
    delete node.dataset.device;
    node.classList.add("loading");
    node.setAttribute("aria-busy", "true");
    node.querySelector(".id").textContent = "…";
    for (const cell of node.querySelectorAll(".group, .last-seen, .num")) cell.textContent = "";
    node.querySelector("dl")?.replaceChildren();
    return;
  }
  node.classList.remove("loading");
  node.removeAttribute("aria-busy");
  node.dataset.device = id;
  node.classList.toggle("selected", id === state.detail.id);
  node.querySelector(".id").textContent = id;
  fillValues(node, device);
}

/** The values of a rendered item (row or card) from the device's state. */
function fillValues(node, device) {
  node.querySelector(".group").textContent = device?.group ?? "";
  const offline = device?.online === false;
  node.classList.toggle("is-offline", offline);
  node.querySelector(".id").title = device ? (offline ? "offline" : "online") : "";
  const severity = grid.severities.get(node.dataset.device);
  if (severity) node.dataset.severity = severity; else delete node.dataset.severity;
  if (node.dataset.layout === "card") {
    const names = Object.keys(device?.metrics ?? {}).sort().slice(0, CARD_METRICS);
    const dl = node.querySelector("dl");
    if (dl.childElementCount !== names.length * 2 || [...dl.querySelectorAll("dt")].some((dt, i) => dt.dataset.metric !== names[i])) {
      dl.replaceChildren(...names.flatMap((n) => [withData(make("dt", { textContent: n.replace(/_/g, " ") }), { metric: n }), make("dd")]));
    }
    names.forEach((n, i) => { dl.children[i * 2 + 1].textContent = formatValue(device.metrics[n]); });
  } else {
    for (const cell of node.querySelectorAll(".cell[data-metric]")) cell.textContent = formatValue(device?.metrics?.[cell.dataset.metric]);
  }
  fillAge(node, device, Date.now());
}

function fillAge(node, device, now) {
  const cell = node.querySelector(".last-seen");
  const ts = device?.ts;
  if (typeof ts !== "number") { cell.textContent = node.dataset.device ? "never" : ""; node.classList.toggle("stale", !!node.dataset.device); return; }
  cell.textContent = formatAge(now - ts);
  cell.title = new Date(ts).toLocaleString();
  node.classList.toggle("stale", now - ts > STALE_MS);
}

/** Renders the items of the current scroll position, reusing elements; fetches missing pages. */
function render() {
  frame = 0;
  // Every measurement first, then the writes: one layout a frame at most.
  const per = perLine(), head = headHeight();
  geometry = { per, line: lineHeight(), slot: el.rows.clientWidth / per };
  range = visibleRange({ scrollTop: el.grid.scrollTop - head, viewport: el.grid.clientHeight - head,
    lineHeight: geometry.line, perLine: per, total: grid.total });
  el.rows.style.height = `${Math.ceil(grid.total / per) * geometry.line}px`;
  el.grid.setAttribute("aria-rowcount", String(grid.total + 1));
  if (grid.active >= grid.total) grid.active = Math.max(0, grid.total - 1);
  // Keep one item tabbable: the active one if rendered, else the first visible.
  if ((grid.active < range.start || grid.active >= range.end) && !el.rows.contains(document.activeElement)) grid.active = range.firstVisible;
  for (const [index, node] of rendered) {
    if (index >= range.start && index < range.end) continue;
    rendered.delete(index);
    if (node.dataset.device && byId.get(node.dataset.device) === node) byId.delete(node.dataset.device);
    if (node === document.activeElement) el.grid.focus({ preventScroll: true }); // not lost to <body>
    node.remove();
    node.classList.remove("flash-a", "flash-b", "selected", "is-offline", "stale");
    delete node.dataset.severity;
    spare.push(node);
  }
  for (let index = range.start; index < range.end; index++) {
    let node = rendered.get(index);
    const id = idAt(cache, index);
    if (!node) { node = makeItem(); rendered.set(index, node); el.rows.append(node); }
    else if (node.dataset.device === id && !node.dataset.refill && node.dataset.layout === (cards() ? "card" : "row")) {
      node.tabIndex = index === grid.active ? 0 : -1;
      continue;                                        // up to date: live updates fill it in place
    }
    if (node.dataset.device && byId.get(node.dataset.device) === node) byId.delete(node.dataset.device);
    fillItem(node, index, id);
    if (id !== undefined) byId.set(id, node);
  }
  spare.length = Math.min(spare.length, 200);          // a spare pool no bigger than a tall screen
  renderPosition();
  fetchPages();
  scheduleView();
}

function scheduleRender() { frame ||= requestAnimationFrame(render); }

function renderPosition() {
  el.total.textContent = String(grid.total);
  el.totalLabel.textContent = grid.query || grid.status ? "matching" : "devices";
  el.position.textContent = grid.total === 0 ? (grid.loaded ? emptyText() : "Loading…")
    : `${range.firstVisible + 1}–${Math.max(range.firstVisible + 1, range.lastVisible)} of ${grid.total}`;
}

const emptyText = () => (grid.query || grid.status ? "No device matches." : grid.groupFilter ? "No devices in this group." : "No devices yet.");

/** Runs every second: relative "last seen" text, stale rows and the header's age indicator. */
export function refreshAges() {
  const now = Date.now();
  let newest = -Infinity;
  for (const node of byId.values()) {
    const device = grid.states.get(node.dataset.device);
    if (typeof device?.ts === "number") newest = Math.max(newest, device.ts);
    fillAge(node, device, now);
  }
  el.age.textContent = Number.isFinite(newest) ? formatAge(now - newest) : "–";
  el.age.classList.toggle("old", Number.isFinite(newest) && now - newest > STALE_MS);
  hooks.onAges();
}

/**
 * Applies states from the socket to the devices the page holds; others are ignored. Only
 * items whose values differ are refilled (and flashed).
 * @param {import("./state.js").DeviceState[]} devices
 */
export function applyStates(devices, { flashRows }) {
  for (const d of devices) {
    const old = d && grid.states.get(d.id);
    if (!old || old.ts > d.ts) continue;              // not held (any more), or out of date
    grid.states.set(d.id, d);
    noteMetrics(d);
    const node = byId.get(d.id);
    if (!node) continue;
    if (!node.firstChild) { fillItem(node, Number(node.getAttribute("aria-rowindex")) - 2, d.id); continue; }
    const changed = JSON.stringify(old.metrics) !== JSON.stringify(d.metrics) || old.online !== d.online;
    if (!changed) { fillAge(node, d, Date.now()); continue; }
    fillValues(node, d);
    if (flashRows) flash(node);
  }
}

function flash(node) {
  const next = node.classList.contains("flash-a") ? "flash-b" : "flash-a";
  node.classList.remove("flash-a", "flash-b");
  node.classList.add(next);
}

/** Marks the item of the device whose panel is open (or none). */
export function markSelected(id) {
  for (const node of el.rows.querySelectorAll(".selected")) node.classList.remove("selected");
  if (id) byId.get(id)?.classList.add("selected");
}

/** The devices' worst active alert changed (device id -> severity). */
export function applySeverities(/** @type {Map<string, string>} */ severities) {
  const touched = new Set([...grid.severities.keys(), ...severities.keys()]);
  grid.severities = severities;
  for (const id of touched) { const node = byId.get(id); if (node) fillValues(node, grid.states.get(id)); }
}

// --- Fetching pages -------------------------------------------------------------------------

function pageUrl(page) {
  const url = new URL("/api/devices", location.href);
  const params = { offset: page * PAGE_SIZE, limit: PAGE_SIZE, q: grid.query, group: grid.groupFilter, state: grid.status,
    sort: grid.sort === "group" ? "" : grid.sort, order: grid.order === "desc" ? "desc" : "" };
  for (const [k, v] of Object.entries(params)) if (v !== "") url.searchParams.set(k, String(v));
  return url;
}

/** Fetches the pages the rendered range needs that are missing or stale; abandons others. */
function fetchPages() {
  const now = Date.now();
  const pages = grid.loaded ? pagesFor(range.start, range.end) : [0];
  for (const [page, ctl] of inflight) {
    if (!pages.includes(page)) { ctl.abort(); inflight.delete(page); }
  }
  // Missing pages before stale ones: a stale page is still shown.
  const wanted = pages.filter((p) => !inflight.has(p) && cache.needsFetch(p, now))
    .sort((a, b) => Number(cache.pages.has(a)) - Number(cache.pages.has(b)));
  for (const page of wanted) {
    if (inflight.size >= MAX_INFLIGHT) break;
    fetchPage(page);
  }
}

async function fetchPage(page) {
  const ctl = new AbortController();
  const seq = querySeq;
  inflight.set(page, ctl);
  try {
    const res = await fetch(pageUrl(page), { signal: ctl.signal, headers: authHeaders() });
    if (res.status === 401) { hooks.unauthorized(); return; }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = await res.json();
    if (seq !== querySeq) return;
    el.error.textContent = "";
    const ids = body.devices.map((d) => d.id);
    const held = body.devices.map((d) => grid.states.get(d.id));
    // Stored first: replacing the page forgets its old devices' states, set again here.
    cache.set(page, { ids, fetchedAt: Date.now() });
    body.devices.forEach((d, i) => {
      const live = held[i];                           // keep a newer state the socket delivered
      grid.states.set(d.id, live && live.ts > d.ts ? live : d);
      noteMetrics(d);
    });
    grid.total = body.total;
    grid.loaded = true;
    // The page's rendered items are filled again from it (another device, or fresher values).
    for (let i = 0; i < PAGE_SIZE; i++) {
      const node = rendered.get(page * PAGE_SIZE + i);
      if (node) node.dataset.refill = "1";
    }
    scheduleRender();
  } catch (err) {
    if (err.name === "AbortError") return;
    el.error.textContent = `Could not load devices (${err.message}); retrying.`;
  } finally {
    // A success renders, which fetches the next page if any; a failure waits for the refresh.
    if (inflight.get(page) === ctl) inflight.delete(page);
  }
}

/** The filter or the order changed: a new query, from the top. */
function restart() {
  querySeq++;
  for (const ctl of inflight.values()) ctl.abort();
  inflight.clear();
  cache.clear();
  grid.total = 0;
  grid.loaded = false;
  grid.active = 0;
  el.grid.scrollTop = 0;
  for (const node of rendered.values()) node.dataset.refill = "1";
  render();
}

// --- The view -------------------------------------------------------------------------------

/** Sends the view soon: at most one per VIEW_INTERVAL_MS, always the latest. */
function scheduleView() {
  if (viewTimer) return;
  viewTimer = setTimeout(() => { viewTimer = 0; sendView(false); }, Math.max(0, lastViewAt + VIEW_INTERVAL_MS - Date.now()));
}

/** The devices the view holds now: those rendered and loaded, and the open panel's device. */
export function currentView() {
  const ids = [];
  for (let i = range.start; i < range.end; i++) ids.push(idAt(cache, i));
  return viewIds(ids, state.detail.id, MAX_VIEW);
}

/** Tells the server which devices are on screen, unless it knows already (or `force`). */
export function sendView(force) {
  if (!grid.loaded && !state.detail.id) return;
  const ids = currentView();
  const key = ids.join("\n");
  if (!force && key === sentView) return;
  if (hooks.sendView(ids)) { sentView = key; lastViewAt = Date.now(); }
}

/** The socket changed (or the server refused a view): the next sendView sends again. */
export function forgetSentView() { sentView = null; }

/** The open panel changed: the view follows. */
export const viewChanged = () => scheduleView();

/** Narrows the grid to a group ("" = all devices). */
export function showGroup(path) {
  grid.groupFilter = path;
  restart();
}

/** The first page, at start-up or after a token was given. */
export function load() { restart(); }

function setSort(sort, order) {
  grid.sort = sort;
  grid.order = order;
  renderHead();
  renderSortChoices();
  restart();
}

function setLayout(layout) {
  if (grid.layout === layout) return;
  const first = range.firstVisible;
  grid.layout = layout;
  el.grid.dataset.layout = layout;
  for (const b of el.layout.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.layout === layout));
  // Keep the first visible device at the top.
  el.grid.scrollTop = Math.floor(first / perLine()) * lineHeight() + headHeight();
  render();
}

// --- Keyboard -------------------------------------------------------------------------------

/** Moves the active item to `index`, scrolls it into view and focuses it. */
function moveTo(index) {
  if (grid.total === 0) return;
  grid.active = Math.max(0, Math.min(grid.total - 1, index));
  const per = perLine();
  const viewport = el.grid.clientHeight - headHeight();
  const head = headHeight();
  el.grid.scrollTop = head + scrollToShow(Math.floor(grid.active / per), lineHeight(), el.grid.scrollTop - head, viewport);
  render();
  const node = rendered.get(grid.active);
  for (const other of rendered.values()) other.tabIndex = other === node ? 0 : -1;
  node?.focus({ preventScroll: true });
}

function onKey(/** @type {KeyboardEvent} */ ev) {
  const node = /** @type {HTMLElement} */ (ev.target).closest("[role=row][aria-rowindex]");
  if (!node || !el.rows.contains(node)) return;
  const index = Number(node.getAttribute("aria-rowindex")) - 2;
  const per = perLine();
  const page = Math.max(1, Math.floor((el.grid.clientHeight - headHeight()) / lineHeight()) - 1) * per;
  const moves = { ArrowDown: per, ArrowUp: -per, PageDown: page, PageUp: -page, Home: -Infinity, End: Infinity,
    ...(cards() ? { ArrowRight: 1, ArrowLeft: -1 } : {}) };
  if (ev.key in moves) {
    ev.preventDefault();
    const step = moves[ev.key];
    moveTo(step === -Infinity ? 0 : step === Infinity ? grid.total - 1 : index + step);
  } else if ((ev.key === "Enter" || ev.key === " ") && node.dataset.device) {
    ev.preventDefault();
    hooks.openDetail(node.dataset.device, node);
  }
}

/** @param {typeof hooks} h */
export function initGrid(h) {
  hooks = h;
  // A phone starts with cards: a table's columns do not fit its width.
  if (matchMedia("(max-width: 820px)").matches) grid.layout = "cards";
  for (const b of el.layout.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.layout === grid.layout));
  renderHead();
  renderSortChoices();
  el.grid.dataset.layout = grid.layout;
  el.grid.addEventListener("scroll", scheduleRender, { passive: true });
  new ResizeObserver(scheduleRender).observe(el.grid);
  let searchTimer = 0;
  el.search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      const q = el.search.value.trim();
      if (q === grid.query) return;
      grid.query = q;
      restart();
    }, SEARCH_DEBOUNCE_MS);
  });
  el.status.addEventListener("change", () => { grid.status = el.status.value; restart(); });
  el.sort.addEventListener("change", () => setSort(el.sort.value, grid.order));
  el.order.addEventListener("click", () => setSort(grid.sort, grid.order === "desc" ? "asc" : "desc"));
  el.layout.addEventListener("click", (ev) => {
    const button = /** @type {HTMLElement} */ (ev.target).closest("button[data-layout]");
    if (button) setLayout(button.dataset.layout);
  });
  el.rows.addEventListener("click", (ev) => {
    const node = /** @type {HTMLElement} */ (ev.target).closest("[data-device]");
    if (!node || !node.dataset.device) return;
    grid.active = Number(node.getAttribute("aria-rowindex")) - 2;
    hooks.openDetail(node.dataset.device, node);
  });
  el.rows.addEventListener("keydown", onKey);
  // Pages on screen are fetched again (new devices, a moving sort order); others when shown.
  setInterval(() => { if (grid.loaded) fetchPages(); }, REFRESH_MS);
}
