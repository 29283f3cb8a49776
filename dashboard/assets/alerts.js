// The alerts panel: the open alerts in this viewer's scope, from the snapshot's `alerts` and
// pushed `alert` messages; acknowledge, shelve and unshelve them over the socket.
// Rendering is keyed by alert id: an item is updated in place, so a flash or a focused button
// survives other alerts changing. An item's History button shows its transitions, from
// /api/alerts/{id}, fetched again when the alert changes while they are shown.

import { state, setOperator, authHeaders } from "./state.js";
import { $, make, formatAge, formatTime } from "./util.js";
import { SEVERITIES, applyAlert, applySnapshot, arrange, needsAck, isShelved, shelveMinutes, formatMinutes } from "./alert-model.js";

const COMMAND_TIMEOUT_MS = 6_000;  // the server answers within 5 s or says why not

const el = {
  list: $("alert-list"), count: $("alerts-count"), unack: $("alerts-unack"), error: $("alerts-error"),
  filter: $("severity-filter"), showShelved: /** @type {HTMLInputElement} */ ($("show-shelved")),
  shelvedCount: $("shelved-count"), operator: /** @type {HTMLInputElement} */ ($("operator")),
  announce: $("alerts-announce"), group: /** @type {HTMLSelectElement} */ ($("alert-group")),
  shelveFor: /** @type {HTMLSelectElement} */ ($("shelve-minutes")), shelveCustom: $("shelve-custom"),
  shelveHours: /** @type {HTMLInputElement} */ ($("shelve-hours")), tabCount: $("tab-alerts-count"),
};
/**
 * Transitions shown, per alert whose History is open: the `seq` they were fetched at, and the
 * list (null while loading). Only open histories are kept, so it is bounded by the list.
 * @type {Map<number, {seq: number, transitions: any[]|null, error?: string}>}
 */
const histories = new Map();
const alerts = state.alerts;
/** @type {Map<number, HTMLLIElement>} one item per alert, reused across renders */
const items = new Map();
/** @type {Set<number>} alerts to flash at the next render */
const arrived = new Set();
/** Suppressed alerts whose group alert is not listed, behind a toggle of their own. */
const orphans = make("li", { className: "orphans" });
const orphansDetails = make("details");
orphansDetails.append(make("summary"), make("ol"));
orphans.append(orphansDetails);

/** @type {{ send: (msg: object) => boolean, onChange: () => void }} */
let hooks;

const STATE_TEXT = {
  active_unacknowledged: "unacknowledged",
  active_acknowledged: "acknowledged",
  cleared_unacknowledged: "cleared · unacknowledged",
};

// --- Messages from the server ---------------------------------------------------------------

/** A snapshot's alerts: the whole set in scope. */
export function onSnapshot(/** @type {import("./state.js").Alert[]} */ list) {
  const first = !alerts.known;
  const fresh = applySnapshot(alerts.byId, list);
  alerts.known = true;
  // Alerts raised while the socket was down are news; the page's first list is not.
  if (!first) for (const id of fresh) arrived.add(id);
  announce(first ? [] : fresh.map((id) => alerts.byId.get(id)));
  changed();
}

/** One alert changed. */
export function onAlert(/** @type {import("./state.js").Alert} */ alert) {
  const outcome = applyAlert(alerts.byId, alert);
  if (outcome === "stale") return;
  if (outcome === "new") { arrived.add(alert.id); announce([alert]); }
  const pending = alerts.pending.get(alert.id);
  if (pending && alert.seq > pending.seq) alerts.pending.delete(alert.id);
  if (outcome === "closed") alerts.pending.delete(alert.id);
  changed();
}

/**
 * An `error` from the server. The refusal of an alert command names its alert (`alert`);
 * an error without one is about something else (a view change) unless only an alert
 * command could have caused it.
 * @param {string} message
 * @param {number | undefined} alertId
 */
export function onError(message, alertId) {
  if (alertId === undefined) {
    if (!alerts.pending.size) return;
    alerts.pending.clear();
  } else if (!alerts.pending.delete(alertId)) {
    return;
  }
  el.error.textContent = `The server refused: ${message}`;
  render();
}

/** The connection went up or down: the buttons only work while it is up. */
export function onConnection() {
  if (state.connection.status !== "connected") alerts.pending.clear();
  render();
}

function changed() {
  render();
  hooks.onChange();
}

function announce(list) {
  const text = list.filter(Boolean).map((a) => `New ${a.severity} alert: ${a.message} (${a.subject})`).join(". ");
  if (text) el.announce.textContent = text;
}

// --- Commands -------------------------------------------------------------------------------

function command(/** @type {"ack"|"shelve"|"unshelve"} */ action, /** @type {number} */ id) {
  const alert = alerts.byId.get(id);
  if (!alert) return;
  const by = alerts.operator ? { by: alerts.operator } : {};
  const msg = action === "shelve" ? { type: action, id, minutes: alerts.shelveMinutes, ...by } : { type: action, id, ...by };
  if (!hooks.send(msg)) {
    el.error.textContent = "Not connected: try again when the connection is back.";
    return;
  }
  el.error.textContent = "";
  alerts.pending.set(id, { action, seq: alert.seq, at: Date.now() });
  render();
}

// --- Rendering ------------------------------------------------------------------------------

function alertItem(id) {
  let li = items.get(id);
  if (li) return li;
  li = make("li", { className: "alert" });
  li.dataset.alertId = String(id);
  const top = make("div", { className: "alert-top" });
  top.append(make("span", { className: "sev" }), make("span", { className: "state" }), make("time", { className: "when" }));
  const actions = make("div", { className: "alert-actions" });
  actions.append(
    make("button", { type: "button", className: "primary" }),   // acknowledge (when it needs it)
    make("button", { type: "button" }),                         // shelve / unshelve
    make("button", { type: "button", className: "history-toggle", textContent: "History" }));
  actions.children[0].dataset.action = "ack";
  actions.children[2].setAttribute("aria-expanded", "false");
  const transitions = make("ol", { className: "transitions", hidden: true });
  transitions.id = `alert-${id}-history`;
  actions.children[2].setAttribute("aria-controls", transitions.id);
  li.append(top, make("div", { className: "msg" }), make("div", { className: "where" }), make("div", { className: "note" }), actions, transitions);
  li.addEventListener("animationend", (ev) => { if (ev.target === li) li.classList.remove("arrived"); });
  items.set(id, li);
  return li;
}

const setText = (node, text) => { if (node.textContent !== text) node.textContent = text; };

/** Fills an item from its alert; only what changed is touched (no layout work when idle). */
function fillAlert(li, /** @type {import("./state.js").Alert} */ a, now) {
  li.dataset.severity = a.severity;
  li.dataset.state = a.state;
  li.classList.toggle("unacknowledged", needsAck(a));
  li.classList.toggle("cleared", a.state === "cleared_unacknowledged");
  const shelved = isShelved(a, now);
  li.classList.toggle("shelved", shelved);
  const [top, msg, where, note, actions] = li.children;
  const [sev, stateText, when] = top.children;
  setText(sev, a.severity);
  setText(stateText, STATE_TEXT[a.state] ?? a.state);
  setText(when, formatAge(now - a.raised_at));
  when.setAttribute("datetime", new Date(a.raised_at).toISOString());
  when.title = `raised ${new Date(a.raised_at).toLocaleString()}`;
  setText(msg, a.message);
  if (!where.firstChild) {                            // subject, group and rule never change
    where.append(make("span", { className: "subject", textContent: a.subject }));
    if (a.group && a.group !== a.subject) where.append(` · ${a.group}`);
    where.append(` · rule ${a.rule}`);
  }
  const notes = [];
  if (a.state === "cleared_unacknowledged") notes.push(`cleared ${formatTime(a.changed_at)}`);
  if (a.acknowledged_by) notes.push(`acknowledged by ${a.acknowledged_by}${a.acknowledged_at ? ` at ${formatTime(a.acknowledged_at)}` : ""}`);
  if (shelved) notes.push(`shelved until ${formatTime(a.shelved_until)}${a.shelved_by ? ` by ${a.shelved_by}` : ""}`);
  if (a.suppressed_by != null) notes.push(`suppressed by group alert #${a.suppressed_by}`);
  setText(note, notes.join(" · "));
  note.hidden = notes.length === 0;

  const online = state.connection.status === "connected";
  const pending = alerts.pending.get(a.id);
  const [ack, shelve, history] = /** @type {HTMLButtonElement[]} */ ([...actions.children]);
  const label = `${a.message} on ${a.subject}`;
  ack.hidden = !needsAck(a);
  setText(ack, pending?.action === "ack" ? "Acknowledging…" : "Acknowledge");
  ack.ariaLabel = `Acknowledge: ${label}`;
  // aria-disabled, not disabled: a disabled button drops the keyboard focus.
  const inert = String(!online || !!pending);
  ack.setAttribute("aria-disabled", inert);
  shelve.dataset.action = shelved ? "unshelve" : "shelve";
  const length = formatMinutes(alerts.shelveMinutes);
  setText(shelve, pending?.action === "shelve" ? "Shelving…" : pending?.action === "unshelve" ? "Unshelving…"
    : shelved ? "Unshelve" : `Shelve ${length}`);
  shelve.ariaLabel = `${shelved ? "Unshelve" : `Shelve for ${length}`}: ${label}`;
  shelve.setAttribute("aria-disabled", inert);
  history.ariaLabel = `History: ${label}`;
  fillHistory(li, a);
}

// --- An alert's history ---------------------------------------------------------------------

const EVENT_TEXT = { raised: "raised", cleared: "cleared", reactivated: "active again", acknowledged: "acknowledged",
  shelved: "shelved", unshelved: "unshelved", suppressed: "suppressed", unsuppressed: "no longer suppressed", closed: "closed" };

/** Shows (or hides) the item's transitions; fetches them when shown and out of date. */
function fillHistory(li, /** @type {import("./state.js").Alert} */ a) {
  const toggle = li.querySelector(".history-toggle"), list = li.querySelector(".transitions");
  const shown = histories.get(a.id);
  toggle.setAttribute("aria-expanded", String(!!shown));
  list.hidden = !shown;
  if (!shown) return;
  if (shown.seq < a.seq && shown.transitions !== null) loadHistory(a);
  if (shown.error) { list.replaceChildren(make("li", { className: "hint", textContent: shown.error })); return; }
  if (!shown.transitions) { if (!list.firstChild) list.replaceChildren(make("li", { className: "hint", textContent: "Loading…" })); return; }
  if (list.dataset.seq === String(shown.seq)) return;  // drawn already
  list.dataset.seq = String(shown.seq);
  list.replaceChildren(...(shown.transitions.length ? shown.transitions.map((t) => {
    const item = make("li", { className: "transition" });
    item.dataset.event = t.event;
    const when = make("time", { textContent: formatTime(t.ts) });
    when.setAttribute("datetime", new Date(t.ts).toISOString());
    when.title = new Date(t.ts).toLocaleString();
    const what = [EVENT_TEXT[t.event] ?? t.event];
    if (t.by) what.push(`by ${t.by}`);
    if (t.value != null) what.push(`at ${Math.round(t.value * 100) / 100}`);
    item.append(when, " ", make("span", { className: "event", textContent: what.join(" ") }));
    return item;
  }) : [make("li", { className: "hint", textContent: "No transitions stored (this dashboard has no store)." })]));
}

async function loadHistory(/** @type {import("./state.js").Alert} */ a) {
  const entry = { seq: a.seq, transitions: /** @type {any[]|null} */ (null) };
  histories.set(a.id, entry);
  try {
    const res = await fetch(`/api/alerts/${a.id}`, { headers: authHeaders() });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.error ?? `HTTP ${res.status}`);
    entry.transitions = body.transitions ?? [];
  } catch (err) {
    entry.error = `Could not load the history: ${err.message}`;
  }
  if (histories.get(a.id) === entry) render();
}

function toggleHistory(/** @type {number} */ id) {
  const alert = alerts.byId.get(id);
  if (histories.has(id)) histories.delete(id);
  else if (alert) loadHistory(alert);
  render();
}

/** Makes `parent`'s children exactly `nodes`, moving only those out of place. */
function syncChildren(parent, nodes) {
  nodes.forEach((node, i) => { if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] ?? null); });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

/** The alerts an item suppresses, collapsed under it. */
function fillSuppressed(li, list, now) {
  let details = li.querySelector(":scope > details");
  if (!list.length) { details?.remove(); return; }
  if (!details) {
    details = make("details");
    details.append(make("summary"), make("ol"));
    li.append(details);
  }
  setText(details.firstElementChild, `${list.length} suppressed alert${list.length === 1 ? "" : "s"}`);
  syncChildren(details.lastElementChild, list.map((a) => { const item = alertItem(a.id); fillAlert(item, a, now); return item; }));
}

export function render() {
  const now = Date.now();
  const arrangement = arrange(alerts.byId.values(), { now, showShelved: alerts.showShelved, severities: alerts.severities, group: alerts.group });
  const focused = /** @type {HTMLElement|null} */ (document.activeElement);
  const focusedAlert = focused?.closest?.("li[data-alert-id]");

  const nodes = [];
  const used = new Set();
  for (const { alert, suppressed } of arrangement.shown) {
    const li = alertItem(alert.id);
    fillAlert(li, alert, now);
    fillSuppressed(li, suppressed, now);
    nodes.push(li);
    used.add(alert.id);
    for (const a of suppressed) used.add(a.id);
  }
  if (arrangement.orphans.length) {
    const n = arrangement.orphans.length;
    setText(orphansDetails.firstElementChild, `${n} suppressed alert${n === 1 ? "" : "s"} (their group alert is hidden)`);
    syncChildren(orphansDetails.lastElementChild, arrangement.orphans.map((a) => {
      used.add(a.id);
      const item = alertItem(a.id);
      fillAlert(item, a, now);
      return item;
    }));
    nodes.push(orphans);
  }
  if (!nodes.length) {
    const text = !alerts.known ? "Waiting for the live connection…"
      : alerts.byId.size > arrangement.shelved || alerts.group ? "No alert matches the filter." : "No active alerts.";
    nodes.push(make("li", { className: "hint", textContent: text }));
  }
  syncChildren(el.list, nodes);
  for (const id of items.keys()) if (!used.has(id)) items.delete(id);
  for (const id of histories.keys()) if (!alerts.byId.has(id)) histories.delete(id);
  for (const id of arrived) items.get(id)?.classList.add("arrived");
  if (arrived.size) restartAnimation(el.count);
  arrived.clear();
  // A moved or rebuilt item loses the keyboard focus: give it back, to the same alert if it
  // is still listed (its first enabled button when the focused one went away).
  if (focused && document.activeElement !== focused && focusedAlert) {
    const li = items.get(Number(focusedAlert.dataset.alertId));
    const target = focused.isConnected && !focused.hidden ? focused : li?.querySelector("button:not([hidden])");
    target?.focus();
  }

  const open = alerts.byId.size - arrangement.shelved;
  setText(el.count, String(open));
  setText(el.tabCount, String(open));
  setText(el.unack, alerts.known ? String(arrangement.unacknowledged) : "–");
  el.unack.classList.toggle("some", arrangement.unacknowledged > 0);
  setText(el.shelvedCount, String(arrangement.shelved));
  for (const button of el.filter.children) {
    setText(button.lastElementChild, String(arrangement.counts[button.dataset.severity] ?? 0));
  }
}

function restartAnimation(node) {
  node.classList.remove("arrived");
  void node.offsetWidth;  // once per arrival, not per item: restarts the pulse
  node.classList.add("arrived");
}

/** Every second: ages, shelvings that ended, commands that got no answer. */
function tick() {
  const now = Date.now();
  for (const [id, pending] of alerts.pending) {
    if (now - pending.at > COMMAND_TIMEOUT_MS) {
      alerts.pending.delete(id);
      el.error.textContent = `No answer from the server to ${pending.action} alert #${id}; try again.`;
    }
  }
  render();
}

/** @param {typeof hooks} h */
export function initAlerts(h) {
  hooks = h;
  for (const severity of SEVERITIES) {
    const button = make("button", { type: "button", title: `Show ${severity} alerts` });
    button.dataset.severity = severity;
    button.setAttribute("aria-pressed", "true");
    button.append(`${severity} `, make("span", { className: "n", textContent: "0" }));
    button.addEventListener("click", () => {
      const on = !alerts.severities.has(severity);
      if (on) alerts.severities.add(severity); else alerts.severities.delete(severity);
      button.setAttribute("aria-pressed", String(on));
      render();
    });
    el.filter.append(button);
  }
  el.showShelved.addEventListener("change", () => { alerts.showShelved = el.showShelved.checked; render(); });
  el.operator.value = alerts.operator;
  el.operator.addEventListener("change", () => setOperator(el.operator.value.trim()));
  el.group.addEventListener("change", () => { alerts.group = el.group.value; render(); });
  el.shelveFor.addEventListener("change", () => {
    const custom = el.shelveFor.value === "custom";
    el.shelveCustom.hidden = !custom;
    if (custom) { el.shelveHours.focus(); setShelveHours(); } else alerts.shelveMinutes = Number(el.shelveFor.value);
    render();
  });
  el.shelveHours.addEventListener("input", () => { setShelveHours(); render(); });
  el.list.addEventListener("click", (ev) => {
    const toggle = /** @type {HTMLElement} */ (ev.target).closest("button.history-toggle");
    if (toggle) { toggleHistory(Number(/** @type {HTMLElement} */ (toggle.closest("li[data-alert-id]")).dataset.alertId)); return; }
    const button = /** @type {HTMLElement} */ (ev.target).closest("button[data-action]:not([aria-disabled='true'])");
    const li = button?.closest("li[data-alert-id]");
    if (li) command(/** @type {any} */ (button.dataset.action), Number(/** @type {HTMLElement} */ (li).dataset.alertId));
  });
  setInterval(tick, 1000);
}

/** A custom shelving in hours: used when within the server's range, said when not. */
function setShelveHours() {
  const minutes = shelveMinutes(el.shelveHours.value);
  el.shelveHours.setCustomValidity(minutes === null ? "between 0.25 and 720 hours" : "");
  if (minutes !== null) alerts.shelveMinutes = minutes;
  el.error.textContent = minutes === null ? "A shelving lasts from 15 minutes to 720 hours (30 days)." : "";
}

/** The group tree changed: the group filter offers every group. */
export function setGroupChoices(/** @type {import("./state.js").GroupNode[]} */ nodes) {
  const paths = [];
  const walk = (list) => { for (const n of list) { paths.push(n.group); walk(n.children ?? []); } };
  walk(nodes);
  const key = paths.join("\n");
  if (el.group.dataset.key === key) return;
  el.group.dataset.key = key;
  el.group.replaceChildren(new Option("all groups", ""), ...paths.map((p) => new Option(p, p)));
  if (alerts.group && !paths.includes(alerts.group)) paths.push(alerts.group), el.group.append(new Option(alerts.group, alerts.group));
  el.group.value = alerts.group;
}
