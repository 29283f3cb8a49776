// The group tree (sidebar). The structure comes from /api/groups every 10 s; the numbers come
// live over the socket for the nodes on screen (roots plus the children of expanded nodes).
// Up to the server's 100 groups a message, those are subscribed by name; beyond, the page
// takes the fleet subscription (`"*"`: every group, and every alert), which the server sends
// in bounded batches. The roots are always among the subscribed: a subscription also brings
// every alert under the group, so the roots bring the whole fleet's alerts to the alerts panel.

import { state, authHeaders } from "./state.js";
import { $, make, formatValue } from "./util.js";
import { worstSeverityByGroup } from "./alert-model.js";

const GROUPS_REFRESH_MS = 10_000;  // re-fetch the tree's structure so new groups appear
const MAX_GROUP_SUBSCRIPTIONS = 100; // the server's limit per `groups` message
const FLEET = "*";                   // every group, whatever their number
const GROUPS_SEND_DELAY_MS = 250;  // coalesces quick expand/collapse clicks: the server allows
                                   // 5 view/groups changes per second, shared with `view`

const el = { tree: $("tree"), error: $("groups-error"), metric: /** @type {HTMLSelectElement} */ ($("group-metric")), crumbs: $("crumbs"),
  expandAll: $("expand-all") };
const tree = state.tree;
/** @type {Map<string, HTMLLIElement>} path -> rendered li, for in-place updates */
const nodeEls = new Map();
/** @type {Map<string, import("./state.js").Severity>} worst active alert per group */
let worst = new Map();
let treeKey = null;           // the rendered structure (paths in order), to skip rebuilds
let sentGroups = null, groupsTimer = 0, refreshTimer = 0;

/** @type {{ sendGroups: (groups: string[]) => boolean, showGroup: (path: string) => void,
 *           onTree: (nodes: import("./state.js").GroupNode[]) => void }} */
let hooks;

function walk(nodes, fn) { for (const n of nodes) { fn(n); walk(n.children ?? [], fn); } }

export async function loadGroups() {
  clearTimeout(refreshTimer);
  try {
    const res = await fetch("/api/groups", { headers: authHeaders() });
    if (res.status === 401) return;                   // the grid asks for the token, then calls us again
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    tree.nodes = (await res.json()).groups ?? [];
    el.error.textContent = "";
    const paths = [];
    walk(tree.nodes, (n) => { paths.push(n.group); if (n.aggregate) mergeAggregate(n.aggregate); });
    if (paths.join("\n") !== treeKey) { renderTree(); hooks.onTree(tree.nodes); } else for (const li of nodeEls.values()) fillNode(li);
    scheduleGroups();                                 // sends only if the visible set is not the one sent
  } catch (err) {
    el.error.textContent = `Could not load groups (${err.message}); retrying.`;
  }
  refreshTimer = setTimeout(loadGroups, GROUPS_REFRESH_MS);
}

// Keeps the newest aggregate per group (a fetched one may be older than a pushed one).
function mergeAggregate(agg) {
  const old = tree.aggregates.get(agg.group);
  if (old && old.ts > agg.ts) return false;
  tree.aggregates.set(agg.group, agg);
  const before = tree.metricChoices.size;
  for (const name of Object.keys(agg.metrics ?? {})) tree.metricChoices.add(name);
  if (tree.metricChoices.size !== before) renderMetricChoices();
  return true;
}

/** Aggregates pushed in a snapshot or update. */
export function applyAggregates(/** @type {import("./state.js").GroupAggregate[]} */ list) {
  for (const agg of list) {
    if (mergeAggregate(agg) && nodeEls.has(agg.group)) fillNode(nodeEls.get(agg.group));
  }
}

/** The alerts changed: recolour the nodes whose worst severity changed. */
export function applyAlerts() {
  const next = worstSeverityByGroup(state.alerts.byId.values(), Date.now());
  const touched = new Set([...worst.keys(), ...next.keys()]);
  worst = next;
  for (const path of touched) { const li = nodeEls.get(path); if (li) fillNode(li); }
}

function renderMetricChoices() {
  const names = [...tree.metricChoices].sort();
  if (!names.includes(tree.metric)) tree.metric = names.includes("temperature") ? "temperature" : names[0];
  el.metric.replaceChildren(...names.map((n) => new Option(n.replace(/_/g, " "), n)));
  el.metric.value = tree.metric;
  for (const li of nodeEls.values()) fillNode(li);
}

function renderTree() {
  const paths = [];
  walk(tree.nodes, (n) => paths.push(n.group));
  treeKey = paths.join("\n");
  // The rebuild replaces the buttons: keep the keyboard focus on the same node's button.
  const focused = /** @type {HTMLElement|null} */ (document.activeElement?.closest("#tree li[data-group]"));
  const which = document.activeElement?.classList.contains("toggle") ? ".toggle" : ".name";
  nodeEls.clear();
  if (tree.nodes.length === 0) {
    el.tree.replaceChildren(make("li", { className: "hint", textContent: "No groups yet." }));
  } else {
    el.tree.replaceChildren(...tree.nodes.map(renderNode));
  }
  if (focused) /** @type {HTMLElement|null} */ (nodeEls.get(focused.dataset.group)?.querySelector(`:scope > .node ${which}`))?.focus();
  scheduleGroups();
}

function renderNode(node) {
  const kids = node.children ?? [];
  const open = tree.expanded.has(node.group);
  const li = make("li", { className: node.group === state.grid.groupFilter ? "current" : "" });
  li.dataset.group = node.group;
  const toggle = kids.length ? make("button", { type: "button", className: "toggle", textContent: open ? "▾" : "▸",
    ariaExpanded: String(open), ariaLabel: `${open ? "Collapse" : "Expand"} ${node.name}` }) : make("span", { className: "toggle" });
  if (kids.length) toggle.onclick = () => { if (open) tree.expanded.delete(node.group); else tree.expanded.add(node.group); renderTree(); };
  const name = make("button", { type: "button", className: "name", textContent: node.name, title: `Show the devices in ${node.group}` });
  if (node.group === state.grid.groupFilter) name.ariaCurrent = "true";
  name.onclick = () => selectGroup(node.group);
  const counts = make("span", { className: "counts" });
  counts.append(make("span", { className: "online", title: "online devices" }), make("span", { className: "offline", title: "offline devices" }),
    make("span", { className: "alerting", title: "devices with an active alert" }));
  const row = make("div", { className: "node" });
  row.append(toggle, name, counts, make("span", { className: "mean" }));
  li.append(row);
  if (open && kids.length) {
    const ul = make("ul");
    ul.append(...kids.map(renderNode));
    li.append(ul);
  }
  nodeEls.set(node.group, li);
  fillNode(li);
  return li;
}

function fillNode(li) {
  const path = li.dataset.group;
  const agg = tree.aggregates.get(path);
  const row = /** @type {HTMLElement} */ (li.firstElementChild);
  const [online, offline, alerting] = row.querySelectorAll(".counts > span");
  online.textContent = agg ? String(agg.devices.online) : "–";
  offline.textContent = agg ? String(agg.devices.offline) : "–";
  offline.classList.toggle("some", (agg?.devices.offline ?? 0) > 0);
  const count = agg?.devices.alerting ?? 0;
  alerting.textContent = count > 0 ? String(count) : "";
  alerting.classList.toggle("some", count > 0);
  const severity = worst.get(path);
  if (severity) row.dataset.severity = severity; else delete row.dataset.severity;
  row.title = severity ? `worst active alert: ${severity}` : "";
  const m = agg?.metrics?.[tree.metric];
  const mean = /** @type {HTMLElement} */ (row.querySelector(".mean"));
  mean.textContent = m?.count ? formatValue(m.mean) : "";
  mean.title = m?.count ? `${tree.metric}: mean ${formatValue(m.mean)}, min ${formatValue(m.min)}, max ${formatValue(m.max)} (${m.count} devices)` : "";
}

/** Roots first, then the children of expanded nodes, depth first: the groups on screen. */
export function visibleGroups() {
  const out = tree.nodes.map((n) => n.group);
  const visit = (nodes) => {
    for (const n of nodes) {
      if (!tree.expanded.has(n.group)) continue;
      for (const child of n.children ?? []) { out.push(child.group); visit([child]); }
    }
  };
  visit(tree.nodes);
  return out;
}

/** What to subscribe to: the groups on screen, or the whole fleet when they are too many. */
export function subscribedGroups() {
  const visible = visibleGroups();
  return visible.length > MAX_GROUP_SUBSCRIPTIONS ? [FLEET] : visible;
}

function scheduleGroups(delay = GROUPS_SEND_DELAY_MS) {
  clearTimeout(groupsTimer);
  groupsTimer = setTimeout(sendGroups, delay);
}

/** Subscribes to the groups on screen, unless the server knows them already. */
export function sendGroups() {
  const list = subscribedGroups();
  const key = list.join("\n");
  if (key === sentGroups || (!list.length && !sentGroups)) return;
  if (hooks.sendGroups(list)) sentGroups = key;
}

/** The socket changed (or the server refused a change): the next sendGroups sends again. */
export function forgetSentGroups() { sentGroups = null; }

/** Narrows the grid to a group ("" = all devices) and opens the tree down to it. */
export function selectGroup(path) {
  const parts = path ? path.split("/") : [];
  for (let i = 1; i < parts.length; i++) tree.expanded.add(parts.slice(0, i).join("/"));
  hooks.showGroup(path);
  renderTree();
  renderCrumbs();
}

export function renderCrumbs() {
  const filter = state.grid.groupFilter;
  const parts = filter ? filter.split("/") : [];
  const crumb = (text, path, current) => {
    const node = make(current ? "span" : "button", { textContent: text });
    node.dataset.path = path;
    if (current) node.ariaCurrent = "location";
    else Object.assign(node, { type: "button", onclick: () => selectGroup(path) });
    return node;
  };
  const items = [crumb("All devices", "", parts.length === 0)];
  parts.forEach((name, i) => items.push(" / ", crumb(name, parts.slice(0, i + 1).join("/"), i === parts.length - 1)));
  el.crumbs.replaceChildren(...items);
}

/** @param {typeof hooks} h */
export function initGroups(h) {
  hooks = h;
  el.expandAll.addEventListener("click", () => {
    const expand = el.expandAll.getAttribute("aria-pressed") !== "true";
    if (expand) walk(tree.nodes, (n) => { if (n.children?.length) tree.expanded.add(n.group); });
    else tree.expanded.clear();
    el.expandAll.setAttribute("aria-pressed", String(expand));
    el.expandAll.textContent = expand ? "Collapse all" : "Expand all";
    renderTree();
  });
  el.metric.addEventListener("change", () => {
    tree.metric = el.metric.value;
    for (const li of nodeEls.values()) fillNode(li);
  });
}
