// The history chart's data (dashboard/assets/chart.js), tested without a browser.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';

// Loaded from its text as a module (see alert-model.test.mjs); it imports nothing, and only
// its page functions (not called here) touch the DOM.
const source = await readFile(new URL('../../dashboard/assets/chart.js', import.meta.url));
const { chartColumns, addLive, liveAfter, MAX_LIVE_POINTS } =
  await import(`data:text/javascript;base64,${source.toString('base64')}`);

const bucket = (ts, min, mean, max) => ({ ts, count: 3, min, mean, max, last: mean });

test('buckets are drawn at their middle as max, mean and min, with a break where one is missing', () => {
  const cols = chartColumns([bucket(0, 1, 2, 3), bucket(10, 2, 3, 4), bucket(40, 5, 6, 9)], 10, []);
  assert.deepEqual(cols[0], [5, 15, 30, 45]);
  assert.deepEqual(cols[1], [3, 4, null, 9]);
  assert.deepEqual(cols[2], [2, 3, null, 6]);
  assert.deepEqual(cols[3], [1, 2, null, 5]);
});

test('live readings extend the chart after the last bucket, inside it they are left out', () => {
  const live = [{ ts: 15, value: 7 }, { ts: 21, value: 8 }, { ts: 25, value: 9 }];
  const cols = chartColumns([bucket(0, 1, 2, 3), bucket(10, 2, 3, 4)], 10, live);
  assert.deepEqual(cols[0], [5, 15, 21, 25]);
  assert.deepEqual(cols[2], [2, 3, 8, 9]);
  assert.deepEqual(cols[1].slice(2), [8, 9], 'a live reading is its own min and max');
  assert.deepEqual(liveAfter(live, [bucket(0, 1, 2, 3), bucket(10, 2, 3, 4)], 10), live.slice(1));
  assert.deepEqual(chartColumns([], 10, live)[0], [15, 21, 25], 'no history yet: the live readings alone');
});

test('live readings are kept in order, without repeats, and bounded', () => {
  const live = [];
  assert.ok(addLive(live, { ts: 1, value: 1 }));
  assert.ok(!addLive(live, { ts: 1, value: 2 }), 'the same reading again');
  assert.ok(!addLive(live, { ts: 0, value: 2 }), 'an older one');
  assert.ok(!addLive(live, { ts: 5, value: NaN }));
  for (let ts = 2; ts < MAX_LIVE_POINTS + 50; ts++) addLive(live, { ts, value: ts });
  assert.equal(live.length, MAX_LIVE_POINTS);
  assert.equal(live[0].ts, 50, 'the oldest went first');
});
