// What the virtual device grid decides, as pure functions and a bounded page cache (no DOM):
// which items a scroll position shows, which pages of /api/devices they need, and which
// pages to forget. Tested under Node (tests/browser/grid-model.test.mjs).

/** Devices per /api/devices request: a few screens of rows, well under the server's 500. */
export const PAGE_SIZE = 100;
/** Pages kept: 40 × 100 = 4,000 devices at most, whatever the fleet's size. The least recently
 * used page goes first; the pages on screen are always the most recently used. */
export const MAX_PAGES = 40;
/** A cached page older than this is shown but fetched again (the order and the fleet move). */
export const PAGE_TTL_MS = 10_000;
/** Lines rendered above and below the viewport, so a short scroll shows rows already built. */
export const OVERSCAN_LINES = 4;

/**
 * The items to render for a scroll position: whole lines of `perLine` items (1 in a table, a
 * row of cards otherwise), the viewport plus `overscan` lines each side.
 * @param {{scrollTop: number, viewport: number, lineHeight: number, perLine: number, total: number, overscan?: number}} p
 * @returns {{start: number, end: number, firstVisible: number, lastVisible: number}} item indexes; end exclusive
 */
export function visibleRange({ scrollTop, viewport, lineHeight, perLine, total, overscan = OVERSCAN_LINES }) {
  const lines = Math.ceil(total / perLine);
  const top = Math.max(0, scrollTop);
  const firstLine = Math.min(lines, Math.floor(top / lineHeight));
  const lastLine = Math.min(lines, Math.ceil((top + viewport) / lineHeight));  // exclusive
  const clampItem = (line) => Math.min(total, Math.max(0, line) * perLine);
  return {
    start: clampItem(firstLine - overscan),
    end: clampItem(Math.min(lines, lastLine + overscan)),
    firstVisible: clampItem(firstLine),
    lastVisible: clampItem(lastLine),
  };
}

/** The page numbers covering items [start, end). */
export function pagesFor(/** @type {number} */ start, /** @type {number} */ end, pageSize = PAGE_SIZE) {
  const pages = [];
  if (end <= start) return pages;
  for (let p = Math.floor(start / pageSize); p * pageSize < end; p++) pages.push(p);
  return pages;
}

/**
 * The `scrollTop` that brings line `line` into a viewport of `viewport` px, or the current one
 * if it is in view already.
 */
export function scrollToShow(/** @type {number} */ line, /** @type {number} */ lineHeight, /** @type {number} */ scrollTop, /** @type {number} */ viewport) {
  const top = line * lineHeight, bottom = top + lineHeight;
  if (top < scrollTop) return top;
  if (bottom > scrollTop + viewport) return bottom - viewport;
  return scrollTop;
}

/** @typedef {{ids: string[], fetchedAt: number}} Page */

/**
 * Pages of one query (one filter and sort), least recently used first out. A Map keeps
 * insertion order, so re-inserting on use makes its first key the least recently used.
 */
export class PageCache {
  /** @param {number} max  pages kept @param {(page: Page) => void} [onEvict] */
  constructor(max = MAX_PAGES, onEvict = () => {}) {
    this.max = max;
    this.onEvict = onEvict;
    /** @type {Map<number, Page>} */
    this.pages = new Map();
  }

  /** The page, marked as just used; undefined if not cached. */
  get(/** @type {number} */ n) {
    const page = this.pages.get(n);
    if (page) { this.pages.delete(n); this.pages.set(n, page); }
    return page;
  }

  /** Stores page `n`, evicting the least recently used beyond `max`. */
  set(/** @type {number} */ n, /** @type {Page} */ page) {
    const old = this.pages.get(n);
    this.pages.delete(n);
    this.pages.set(n, page);
    if (old) this.onEvict(old);
    while (this.pages.size > this.max) {
      const [oldest, evicted] = this.pages.entries().next().value;
      this.pages.delete(oldest);
      this.onEvict(evicted);
    }
  }

  /** Whether page `n` should be fetched (again) at `now`. */
  needsFetch(/** @type {number} */ n, /** @type {number} */ now, ttl = PAGE_TTL_MS) {
    const page = this.pages.get(n);
    return !page || now - page.fetchedAt > ttl;
  }

  clear() {
    for (const page of this.pages.values()) this.onEvict(page);
    this.pages.clear();
  }

  get size() { return this.pages.size; }
}

/**
 * The device id at item `index`, if its page is cached (without touching the LRU order).
 * @param {PageCache} cache
 */
export function idAt(cache, /** @type {number} */ index, pageSize = PAGE_SIZE) {
  return cache.pages.get(Math.floor(index / pageSize))?.ids[index % pageSize];
}

/**
 * The `view` for the server: the loaded devices rendered (in order), then `pinned` (the open
 * device panel) if not among them; at most `max` ids.
 * @param {(string|undefined)[]} rendered
 * @param {string|null} pinned
 */
export function viewIds(rendered, pinned, max = 1000) {
  const ids = [...new Set(rendered.filter((id) => id !== undefined && id !== pinned))];
  return pinned ? [...ids.slice(0, max - 1), pinned] : ids.slice(0, max);
}
