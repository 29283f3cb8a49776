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
    page: 0,              // zero-based
    query: "",
    groupFilter: "",      // path of the group the grid is narrowed to; "" = all devices
    total: 0,
    /** @type {string[]} device ids on screen, in server order */
    ids: [],
    loaded: false,        // a page has been fetched at least once (so `ids` means something)
    /** @type {Map<string, DeviceState>} latest state of the devices on screen */
    states: new Map(),
    /** @type {string[]} metric columns currently rendered */
    metricNames: [],
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
  },

  /** The device whose history panel is open. */
  detail: { id: /** @type {string|null} */ (null), metric: "", range: 3_600_000 },
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
