// The virtual grid's decisions (dashboard/assets/grid-model.js), tested without a browser.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';

// Loaded from its text as a module (see alert-model.test.mjs); it imports nothing.
const source = await readFile(new URL('../../dashboard/assets/grid-model.js', import.meta.url));
const { visibleRange, pagesFor, scrollToShow, PageCache, idAt, viewIds, PAGE_SIZE } =
  await import(`data:text/javascript;base64,${source.toString('base64')}`);

test('the rendered range is the viewport plus overscan, in whole lines, within the list', () => {
  // 34 px lines, a 340 px viewport scrolled to line 100: lines 100..109 visible.
  const r = visibleRange({ scrollTop: 3400, viewport: 340, lineHeight: 34, perLine: 1, total: 100_000, overscan: 4 });
  assert.deepEqual(r, { start: 96, end: 114, firstVisible: 100, lastVisible: 110 });
  // Cards, 3 a line: item indexes are lines × 3.
  const cards = visibleRange({ scrollTop: 0, viewport: 250, lineHeight: 100, perLine: 3, total: 10, overscan: 1 });
  assert.deepEqual(cards, { start: 0, end: 10, firstVisible: 0, lastVisible: 9 });
  // The end of a list, and an empty one.
  const end = visibleRange({ scrollTop: 99_990 * 34, viewport: 340, lineHeight: 34, perLine: 1, total: 100_000, overscan: 4 });
  assert.deepEqual([end.start, end.end, end.lastVisible], [99_986, 100_000, 100_000]);
  assert.deepEqual(visibleRange({ scrollTop: 500, viewport: 300, lineHeight: 34, perLine: 1, total: 0 }),
    { start: 0, end: 0, firstVisible: 0, lastVisible: 0 });
});

test('a range needs the pages it overlaps', () => {
  assert.equal(PAGE_SIZE, 100);
  assert.deepEqual(pagesFor(96, 114), [0, 1]);
  assert.deepEqual(pagesFor(0, 100), [0]);
  assert.deepEqual(pagesFor(250, 251), [2]);
  assert.deepEqual(pagesFor(5, 5), []);
});

test('moving to a line scrolls only as far as needed', () => {
  assert.equal(scrollToShow(5, 34, 0, 340), 0);          // in view
  assert.equal(scrollToShow(20, 34, 0, 340), 21 * 34 - 340); // below: its bottom at the viewport's
  assert.equal(scrollToShow(2, 34, 500, 340), 68);       // above: its top at the viewport's
});

test('the page cache keeps the most recently used pages and says what it forgets', () => {
  const evicted = [];
  const cache = new PageCache(3, (page) => evicted.push(page.ids[0]));
  const page = (n) => ({ ids: [`d${n}`], fetchedAt: 1000 });
  for (const n of [0, 1, 2]) cache.set(n, page(n));
  cache.get(0);                                          // 0 is now the most recently used
  cache.set(3, page(3));
  assert.deepEqual(evicted, ['d1']);
  assert.deepEqual([...cache.pages.keys()], [2, 0, 3]);
  cache.set(2, { ids: ['d2b'], fetchedAt: 2000 });         // replaced: the old page's devices go
  assert.deepEqual(evicted, ['d1', 'd2']);
  assert.equal(cache.size, 3);
  assert.equal(cache.needsFetch(0, 1000 + 5000, 10_000), false);
  assert.equal(cache.needsFetch(0, 1000 + 20_000, 10_000), true, 'stale');
  assert.equal(cache.needsFetch(7, 0), true, 'missing');
  assert.equal(idAt(cache, 300), 'd3');
  assert.equal(idAt(cache, 301), undefined);
  cache.clear();
  assert.equal(cache.size, 0);
  assert.deepEqual(evicted.slice(2).sort(), ['d0', 'd2b', 'd3']);
});

test('the view holds the loaded devices on screen and the open panel\'s device, within the limit', () => {
  assert.deepEqual(viewIds(['a', undefined, 'b'], null), ['a', 'b']);
  assert.deepEqual(viewIds(['a', 'b'], 'z'), ['a', 'b', 'z']);
  assert.deepEqual(viewIds(['a', 'z', 'b'], 'z'), ['a', 'b', 'z']);
  assert.deepEqual(viewIds(['a', 'b', 'c'], 'z', 2), ['a', 'z']);
});
