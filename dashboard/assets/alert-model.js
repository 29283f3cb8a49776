// What the alerts panel and the group tree decide about alerts, as pure functions of the
// alerts (no DOM): easy to test under Node (tests/browser/alert-model.test.mjs).

/** @typedef {import("./state.js").Alert} Alert */
/** @typedef {import("./state.js").Severity} Severity */

/** @type {Severity[]} most severe first */
export const SEVERITIES = ["critical", "major", "minor", "warning", "info"];

/** 0 for critical up to 4 for info; unknown severities sort last. */
export const severityRank = (/** @type {string} */ s) => {
  const i = SEVERITIES.indexOf(/** @type {Severity} */ (s));
  return i < 0 ? SEVERITIES.length : i;
};

/** The condition holds now (acknowledged or not). */
export const isActive = (/** @type {Alert} */ a) => a.state === "active_unacknowledged" || a.state === "active_acknowledged";

/** An operator still has to acknowledge it. */
export const needsAck = (/** @type {Alert} */ a) => a.state === "active_unacknowledged" || a.state === "cleared_unacknowledged";

export const isShelved = (/** @type {Alert} */ a, /** @type {number} */ now) => a.shelved_until != null && a.shelved_until > now;

/** The panel's order: most severe first, then newest raised first (ties: higher id first). */
export function compareAlerts(/** @type {Alert} */ a, /** @type {Alert} */ b) {
  return severityRank(a.severity) - severityRank(b.severity) || b.raised_at - a.raised_at || b.id - a.id;
}

/**
 * Applies one `alert` message. Of two copies of an alert, the higher `seq` is newer; a closed
 * alert leaves the list.
 * @param {Map<number, Alert>} alerts
 * @param {Alert} alert
 * @returns {"new"|"changed"|"closed"|"stale"}
 */
export function applyAlert(alerts, alert) {
  const known = alerts.get(alert.id);
  if (known && known.seq >= alert.seq) return "stale";
  if (alert.state === "closed") {
    alerts.delete(alert.id);
    return known ? "closed" : "stale";
  }
  alerts.set(alert.id, alert);
  return known ? "changed" : "new";
}

/**
 * Applies a `snapshot`'s alerts: they are every open alert in the viewer's scope, so alerts
 * not among them are gone (closed while the socket was down, or out of scope now). A copy
 * already known with a higher `seq` is kept.
 * @param {Map<number, Alert>} alerts
 * @param {Alert[]} list
 * @returns {number[]} ids not known before
 */
export function applySnapshot(alerts, list) {
  const fresh = [];
  const next = new Map();
  for (const alert of list) {
    if (alert.state === "closed") continue;
    const known = alerts.get(alert.id);
    if (!known) fresh.push(alert.id);
    next.set(alert.id, known && known.seq > alert.seq ? known : alert);
  }
  alerts.clear();
  for (const [id, alert] of next) alerts.set(id, alert);
  return fresh;
}

/**
 * @typedef {Object} Arrangement
 * @property {{alert: Alert, suppressed: Alert[]}[]} shown   in panel order; each with the
 *   alerts it suppresses (collapsed under it)
 * @property {Alert[]} orphans   suppressed alerts whose group alert is not shown
 * @property {Record<string, number>} counts   alerts per severity, before the severity filter
 * @property {number} shelved    shelved alerts (shown or not)
 * @property {number} unacknowledged   alerts needing acknowledgement, shelved ones excluded
 */

/** Whether `path` is `group` or under it (`group` "" holds everything). */
export const inGroup = (/** @type {string} */ path, /** @type {string} */ group) =>
  !group || path === group || path.startsWith(`${group}/`);

/**
 * What the panel shows: only alerts under `group` (all when ""), shelved alerts only with
 * `showShelved`, only the chosen severities, and suppressed alerts under the group alert that
 * explains them. The counts are of the alerts under `group`.
 * @param {Iterable<Alert>} all
 * @param {{now: number, showShelved: boolean, severities: Set<string>, group?: string}} options
 * @returns {Arrangement}
 */
export function arrange(all, { now, showShelved, severities, group = "" }) {
  const counts = Object.fromEntries(SEVERITIES.map((s) => [s, 0]));
  let shelved = 0, unacknowledged = 0;
  const candidates = [];
  for (const alert of all) {
    if (!inGroup(alert.group ?? "", group)) continue;
    const hidden = isShelved(alert, now);
    if (hidden) shelved++;
    else if (needsAck(alert)) unacknowledged++;
    if (hidden && !showShelved) continue;
    counts[alert.severity] = (counts[alert.severity] ?? 0) + 1;
    candidates.push(alert);
  }
  candidates.sort(compareAlerts);
  const top = candidates.filter((a) => a.suppressed_by == null && severities.has(a.severity));
  const byId = new Map(top.map((a) => [a.id, { alert: a, suppressed: /** @type {Alert[]} */ ([]) }]));
  const orphans = [];
  for (const alert of candidates) {
    if (alert.suppressed_by == null) continue;
    const parent = byId.get(alert.suppressed_by);
    if (parent) parent.suppressed.push(alert);
    else if (severities.has(alert.severity)) orphans.push(alert);
  }
  return { shown: top.map((a) => byId.get(a.id)), orphans, counts, shelved, unacknowledged };
}

/**
 * The worst severity of the active alerts under each group (the group itself and every
 * ancestor of an alert's group). Shelved alerts do not count: an operator put them aside.
 * @param {Iterable<Alert>} alerts
 * @param {number} now
 * @returns {Map<string, Severity>}
 */
export function worstSeverityByGroup(alerts, now) {
  /** @type {Map<string, Severity>} */
  const worst = new Map();
  for (const alert of alerts) {
    if (!isActive(alert) || isShelved(alert, now) || !alert.group) continue;
    const levels = alert.group.split("/");
    for (let i = 1; i <= levels.length; i++) {
      const path = levels.slice(0, i).join("/");
      const old = worst.get(path);
      if (!old || severityRank(alert.severity) < severityRank(old)) worst.set(path, alert.severity);
    }
  }
  return worst;
}

/**
 * The worst severity of the active, unshelved alerts about each device (by subject), for the
 * grid's rows.
 * @param {Iterable<Alert>} alerts
 * @param {number} now
 * @returns {Map<string, Severity>}
 */
export function worstSeverityBySubject(alerts, now) {
  /** @type {Map<string, Severity>} */
  const worst = new Map();
  for (const alert of alerts) {
    if (!isActive(alert) || isShelved(alert, now)) continue;
    const old = worst.get(alert.subject);
    if (!old || severityRank(alert.severity) < severityRank(old)) worst.set(alert.subject, alert.severity);
  }
  return worst;
}

/** The shelving choices, in minutes, within the server's 1 to 43,200 (30 days). */
export const MAX_SHELVE_MINUTES = 43_200;

/**
 * Minutes for a shelving of `hours` typed by an operator, or null when out of range.
 * @param {string|number} hours
 */
export function shelveMinutes(hours) {
  const minutes = Math.round(Number(hours) * 60);
  return Number.isFinite(minutes) && minutes >= 1 && minutes <= MAX_SHELVE_MINUTES ? minutes : null;
}

/** "15 min", "1 h", "8 h", "1 d 6 h": a shelving's length for a button. */
export function formatMinutes(/** @type {number} */ minutes) {
  if (minutes < 60) return `${minutes} min`;
  const d = Math.floor(minutes / 1440), h = Math.floor((minutes % 1440) / 60), m = minutes % 60;
  return [d && `${d} d`, h && `${h} h`, m && `${m} min`].filter(Boolean).join(" ");
}
