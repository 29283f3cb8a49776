// Small helpers shared by every module: DOM building and value formatting.

/** @param {string} id */
export const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/**
 * An element with properties set (textContent, className, ...). Text from devices and the
 * server always goes in as textContent, never as HTML: ids, groups and messages are untrusted.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Partial<HTMLElementTagNameMap[K]> & Record<string, unknown>} [props]
 * @returns {HTMLElementTagNameMap[K]}
 */
export const make = (tag, props = {}) => Object.assign(document.createElement(tag), props);

/**
 * `node` with `data-*` attributes set (`dataset` cannot be assigned whole).
 * @template {HTMLElement} T
 * @param {T} node
 * @param {Record<string, string>} data
 * @returns {T}
 */
export const withData = (node, data) => { Object.assign(node.dataset, data); return node; };

/** A metric value as shown in a cell. */
export function formatValue(v) {
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number" && Number.isFinite(v)) return String(Math.round(v * 100) / 100);
  return v == null ? "—" : String(v);
}

/** How long ago, in the largest whole unit. */
export function formatAge(ms) {
  const s = Math.max(0, Math.floor(ms / 1000)); // clock skew can put ts slightly in the future
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86_400)} d ago`;
}

/** A clock time, with the date when it is not today. */
export function formatTime(ms) {
  const d = new Date(ms);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === new Date().toDateString() ? time : `${d.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}
