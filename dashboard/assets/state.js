// The page's one state object, and the types of what the server sends (see docs/protocol.md).
// Modules read and change `state`; they render from it and never keep copies of their own.

/**
 * @typedef {Object} DeviceState
 * @property {string} id
 * @property {string} group
 * @property {number} [ts]          time of the latest reading, ms since the epoch
 * @property {boolean} [online]
 * @property {Record<string, number|boolean>} [metrics]
 */

/**
 * @typedef {Object} GroupAggregate
 * @property {string} group
 * @property {number} ts
 * @property {{online: number, offline: number, alerting: number}} devices
 * @property {Record<string, {count: number, mean: number, min: number, max: number}>} [metrics]
 */

/**
 * @typedef {Object} GroupNode  one node of /api/groups
 * @property {string} group      full path
 * @property {string} name       last level
 * @property {GroupAggregate|null} [aggregate]
 * @property {GroupNode[]} [children]
 */

/** @typedef {"critical"|"major"|"minor"|"warning"|"info"} Severity */
/** @typedef {"active_unacknowledged"|"active_acknowledged"|"cleared_unacknowledged"|"closed"} AlertState */

/**
 * @typedef {Object} Alert
 * @property {number} id
 * @property {string} rule
 * @property {string} subject       device id, or group path for a group rule
 * @property {string} group
 * @property {Severity} severity
 * @property {AlertState} state
 * @property {string} message
 * @property {number} [value]
 * @property {number} [reading_ts]
 * @property {number} raised_at
 * @property {number} changed_at
 * @property {string} [acknowledged_by]
 * @property {number} [acknowledged_at]
 * @property {number} [shelved_until]
 * @property {string} [shelved_by]
 * @property {number} [suppressed_by]  id of the group alert that explains this one
 * @property {number} seq              grows with every change of any alert
 */

/** @typedef {"connecting"|"connected"|"reconnecting"} ConnectionStatus */

/** A command sent for an alert and not yet answered by a changed `alert`. */
/** @typedef {{action: "ack"|"shelve"|"unshelve", seq: number, at: number}} PendingCommand */

const TOKEN_KEY = "iotmon-token";
const OPERATOR_KEY = "iotmon-operator";

export const state = {
  /** Viewer token for /api and /ws: from the URL (?token=) once, then remembered. */
  token: new URLSearchParams(location.search).get("token") || localStorage.getItem(TOKEN_KEY) || "",

  connection: {
    /** @type {ConnectionStatus} */
    status: "connecting",
    /** Failed attempts in a row, for the backoff. */
    attempts: 0,
  },

  grid: {
    query: "",
    groupFilter: "",      // path of the group the grid is narrowed to; "" = all devices
    /** @type {""|"alerting"|"offline"|"online"} */
    status: "",
    /** "group", "id", "seen" or "metric:NAME", as /api/devices takes it */
    sort: "group",
    /** @type {"asc"|"desc"} */
    order: "asc",
    /** @type {"table"|"cards"} */
    layout: "table",
    /** Devices matching the filter, over all pages (from the server). */
    total: 0,
    loaded: false,        // a page of the current query has arrived
    /** Index of the item that takes the keyboard focus (roving tabindex). */
    active: 0,
    /** @type {Map<string, DeviceState>} latest state of the devices in cached pages (bounded with them) */
    states: new Map(),
    /** @type {string[]} metric columns, in name order; only grows */
    metricNames: [],
    /** @type {Map<string, Severity>} worst active alert per device id */
    severities: new Map(),
  },

  tree: {
    /** @type {GroupNode[]} as last fetched */
    nodes: [],
    /** @type {Set<string>} paths whose children are shown */
    expanded: new Set(),
    /** @type {Map<string, GroupAggregate>} newest aggregate per path */
    aggregates: new Map(),
    /** @type {Set<string>} metric names seen in aggregates, for the "mean of" select */
    metricChoices: new Set(),
    metric: "",           // metric whose mean the tree shows
  },

  alerts: {
    /** @type {Map<number, Alert>} open alerts in this viewer's scope */
    byId: new Map(),
    /** A snapshot has arrived on this connection: the list means something. */
    known: false,
    /** @type {Set<Severity>} severities shown */
    severities: new Set(["critical", "major", "minor", "warning", "info"]),
    showShelved: false,
    /** Operator name sent with commands (empty: the server says "viewer"). */
    operator: localStorage.getItem(OPERATOR_KEY) || "",
    /** @type {Map<number, PendingCommand>} */
    pending: new Map(),
    /** Only alerts under this group path ("" = all). */
    group: "",
    /** Minutes a Shelve puts an alert aside for (the server allows 1 to 43,200). */
    shelveMinutes: 60,
  },

  /** The device whose panel is open; its history range (ms back from now), or a fixed
   * custom [from, to]. */
  detail: { id: /** @type {string|null} */ (null), metric: "", range: 3_600_000, custom: /** @type {[number, number]|null} */ (null) },
};

export function setToken(token) {
  state.token = token;
  localStorage.setItem(TOKEN_KEY, token);
}

export function setOperator(name) {
  state.alerts.operator = name;
  if (name) localStorage.setItem(OPERATOR_KEY, name); else localStorage.removeItem(OPERATOR_KEY);
}

if (state.token) localStorage.setItem(TOKEN_KEY, state.token);

/** Headers for fetches to /api: the token, when there is one. */
export const authHeaders = () => ({ accept: "application/json", ...(state.token ? { authorization: `Bearer ${state.token}` } : {}) });
