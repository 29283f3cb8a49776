// The alerts panel's decisions (dashboard/assets/alert-model.js), tested without a browser.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';

// The page's modules are plain .js files with no package.json saying they are ES modules
// (they are served to browsers, not run by Node): load this one as a module from its text.
// It imports nothing, so that works.
const source = await readFile(new URL('../../dashboard/assets/alert-model.js', import.meta.url));
const { applyAlert, applySnapshot, arrange, worstSeverityByGroup, worstSeverityBySubject, shelveMinutes, formatMinutes } =
  await import(`data:text/javascript;base64,${source.toString('base64')}`);

const NOW = 1_700_000_000_000;
let nextSeq = 1;
const alert = (id, fields = {}) => ({
  id, rule: 'r', subject: `d${id}`, group: 'hq/a', severity: 'minor', state: 'active_unacknowledged',
  message: 'm', raised_at: NOW - id * 1000, changed_at: NOW, seq: nextSeq++, ...fields,
});
const all = { now: NOW, showShelved: false, severities: new Set(['critical', 'major', 'minor', 'warning', 'info']) };
const ids = (arrangement) => arrangement.shown.map((s) => s.alert.id);

test('alerts are listed most severe first, then newest raised first', () => {
  const list = [alert(1, { severity: 'minor' }), alert(2, { severity: 'critical' }), alert(3, { severity: 'critical' }),
    alert(4, { severity: 'info' })];
  // Alert 2 was raised after alert 3 (ids stand for seconds ago).
  assert.deepEqual(ids(arrange(list, all)), [2, 3, 1, 4]);
});

test('a newer copy replaces an older one, an older one is ignored, a closed one leaves', () => {
  const alerts = new Map();
  const first = alert(1);
  assert.equal(applyAlert(alerts, first), 'new');
  assert.equal(applyAlert(alerts, { ...first, state: 'active_acknowledged', seq: first.seq + 1 }), 'changed');
  assert.equal(applyAlert(alerts, first), 'stale');
  assert.equal(alerts.get(1).state, 'active_acknowledged');
  assert.equal(applyAlert(alerts, { ...first, state: 'closed', seq: first.seq + 2 }), 'closed');
  assert.equal(alerts.size, 0);
  assert.equal(applyAlert(alerts, { ...first, state: 'closed', seq: first.seq + 3 }), 'stale', 'a closed unknown alert is not news');
});

test('a snapshot replaces the set but keeps a newer copy already known', () => {
  const alerts = new Map();
  const kept = alert(1), gone = alert(2);
  applyAlert(alerts, { ...kept, seq: 100 });
  applyAlert(alerts, gone);
  const fresh = applySnapshot(alerts, [{ ...kept, seq: 50, state: 'active_unacknowledged' }, alert(3)]);
  assert.deepEqual(fresh, [3]);
  assert.deepEqual([...alerts.keys()].sort(), [1, 3]);
  assert.equal(alerts.get(1).seq, 100);
});

test('shelved alerts are hidden unless asked for, and counted either way', () => {
  const list = [alert(1), alert(2, { shelved_until: NOW + 60_000 }), alert(3, { shelved_until: NOW - 1 })];
  const hidden = arrange(list, all);
  assert.deepEqual(ids(hidden), [1, 3], 'a shelving that ended shows again');
  assert.equal(hidden.shelved, 1);
  assert.equal(hidden.unacknowledged, 2, 'shelved alerts are not counted as waiting');
  assert.deepEqual(ids(arrange(list, { ...all, showShelved: true })), [1, 2, 3]);
});

test('suppressed alerts go under their group alert, or apart when it is not listed', () => {
  const group = alert(10, { subject: 'hq/a', severity: 'critical' });
  const list = [group, alert(1, { suppressed_by: 10 }), alert(2, { suppressed_by: 10 }), alert(3, { suppressed_by: 99 }), alert(4)];
  const arrangement = arrange(list, all);
  assert.deepEqual(ids(arrangement), [10, 4]);
  assert.deepEqual(arrangement.shown[0].suppressed.map((a) => a.id), [1, 2]);
  assert.deepEqual(arrangement.orphans.map((a) => a.id), [3]);
  // Filtering out the group alert's severity puts its suppressed alerts apart.
  const minorOnly = arrange(list, { ...all, severities: new Set(['minor']) });
  assert.deepEqual(ids(minorOnly), [4]);
  assert.deepEqual(minorOnly.orphans.map((a) => a.id), [1, 2, 3]);
});

test('the severity filter hides severities but still counts them', () => {
  const list = [alert(1, { severity: 'critical' }), alert(2, { severity: 'warning' })];
  const arrangement = arrange(list, { ...all, severities: new Set(['warning']) });
  assert.deepEqual(ids(arrangement), [2]);
  assert.equal(arrangement.counts.critical, 1);
});

test('each group takes the worst severity of the active, unshelved alerts under it', () => {
  const worst = worstSeverityByGroup([
    alert(1, { group: 'hq/a/f1', severity: 'minor' }),
    alert(2, { group: 'hq/b', severity: 'major' }),
    alert(3, { group: 'hq/a/f2', severity: 'critical', state: 'cleared_unacknowledged' }),
    alert(4, { group: 'hq/a/f2', severity: 'critical', shelved_until: NOW + 1000 }),
  ], NOW);
  assert.deepEqual(Object.fromEntries(worst), { 'hq': 'major', 'hq/a': 'minor', 'hq/a/f1': 'minor', 'hq/b': 'major' });
});

test('the group filter keeps the alerts under the group, counting only those', () => {
  const list = [alert(1, { group: 'hq/a' }), alert(2, { group: 'hq/a/floor-1', severity: 'critical' }),
    alert(3, { group: 'hq-annex' }), alert(4, { group: 'plant' })];
  const under = arrange(list, { ...all, group: 'hq/a' });
  assert.deepEqual(ids(under), [2, 1]);
  assert.equal(under.counts.critical + under.counts.minor, 2);
  assert.deepEqual(ids(arrange(list, { ...all, group: 'hq' })), [2, 1], 'not hq-annex');
  assert.deepEqual(ids(arrange(list, { ...all, group: 'pla' })), [], 'a prefix of a name is not a group');
  assert.equal(ids(arrange(list, { ...all, group: '' })).length, 4);
});

test('each device takes the worst severity of its active, unshelved alerts', () => {
  const list = [alert(1, { subject: 'd', severity: 'minor' }), alert(2, { subject: 'd', severity: 'major' }),
    alert(3, { subject: 'e', severity: 'critical', state: 'cleared_unacknowledged' }),
    alert(4, { subject: 'f', severity: 'critical', shelved_until: NOW + 1 })];
  assert.deepEqual([...worstSeverityBySubject(list, NOW)], [['d', 'major']]);
});

test('a custom shelving is taken in hours within the server\'s 1 minute to 30 days', () => {
  assert.equal(shelveMinutes('2'), 120);
  assert.equal(shelveMinutes(0.25), 15);
  assert.equal(shelveMinutes('720'), 43_200);
  for (const bad of ['0', '-1', '721', 'soon', '']) assert.equal(shelveMinutes(bad), null, bad);
  assert.deepEqual([15, 60, 480, 1500].map(formatMinutes), ['15 min', '1 h', '8 h', '1 d 1 h']);
});
