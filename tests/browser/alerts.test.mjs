// Alerts in the web UI, end to end: the real server with an alert rule, a device played over
// MQTT, and a real browser. A threshold-breaking reading must show in the alerts panel within
// 1 s of its publication; the page acknowledges, shelves and unshelves it over the WebSocket;
// a reading below the deadband closes it and it leaves the panel; after a server restart the
// page reconnects, subscribes again and shows the open alerts again.
//
//   cargo build && cd tests/browser && npm ci && npm test
//
// Screenshots: target/ui-alerts-desktop.png (light) and target/ui-alerts-dark.png.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as support from './support.mjs';
import { startChild, serverAddresses, stopChild, stopAll, waitHere, mqttConnect, TARGET_DIR } from './support.mjs';

const PROBE = 'ui-probe';
const PROBE_TOPIC = `sensors/lab/bench-1/${PROBE}`;
const ARRIVAL_LIMIT_MS = 1000;
const CONFIG = `
[[alerts.rules]]
name = "hot"
devices = ["${PROBE}"]
metric = "temperature"
above = 30.0
clear = 28.0
severity = "critical"
`;

let dataDir, configFile, server, browser, page, httpUrl, mqttAddr, probe, frames;
let alertId;

const waitInPage = (...args) => support.waitInPage(page, ...args);
const item = () => `#alert-list li[data-alert-id="${alertId}"]`;

async function reading(temperature) {
  const ts = Date.now();
  await probe.publish(PROBE_TOPIC, JSON.stringify({ ts, temperature }));
  return ts;
}

async function openAlerts() {
  const res = await fetch(`${httpUrl}/api/alerts`);
  assert.equal(res.status, 200);
  return (await res.json()).alerts;
}

async function startServer(httpListen = '127.0.0.1:0') {
  server = startChild('serve', ['serve', '--config', configFile, '--mqtt-listen', '127.0.0.1:0',
    '--http-listen', httpListen, '--data-dir', dataDir, '--allow-anonymous']);
  const addrs = await serverAddresses(server, 20_000);
  httpUrl = addrs.http;
  mqttAddr = addrs.mqtt;
  probe = await mqttConnect(mqttAddr, PROBE);
}

before(async () => {
  support.assertBinary();
  dataDir = await mkdtemp(path.join(tmpdir(), 'iotmon-ui-alerts-'));
  configFile = path.join(dataDir, 'iotmon.toml');
  await writeFile(configFile, CONFIG);
  await mkdir(TARGET_DIR, { recursive: true });
  await startServer();
  // A small fleet beside the probe, so the tree and the grid look like a real site.
  startChild('simulate', ['simulate', '--broker', `mqtt://${mqttAddr}`, '--devices', '30', '--interval', '1s']);
  await reading(21.0);                                  // the probe and its group exist before the page loads
  browser = await support.launchBrowser();
  page = await browser.newPage({ viewport: { width: 1366, height: 860 } });
  page.on('pageerror', (err) => console.error('page error:', err.message));
  frames = support.recordFrames(page);
  await page.goto(httpUrl);
}, { timeout: 60_000 });

after(async () => {
  probe?.close();
  await browser?.close().catch(() => {});
  await stopAll();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
}, { timeout: 30_000 });

test('the page subscribes to every top-level group, so it receives the whole fleet\'s alerts', { timeout: 30_000 }, async () => {
  await waitInPage('#status to say "connected"', () => document.querySelector('#status')?.textContent.trim() === 'connected', null, 15_000);
  await waitHere('a groups subscription naming lab and site-1', () =>
    frames.sent.some((m) => m.type === 'groups' && m.groups.includes('lab') && m.groups.includes('site-1')), 20_000);
  const subscribedAt = frames.sent.findLast((m) => m.type === 'groups').seenAt;
  // The snapshot answering it carries lab's aggregate if the bridge has made one yet; if not,
  // the next update does.
  await waitHere('lab\'s aggregate since the subscription', () =>
    frames.received.some((m) => (m.type === 'snapshot' || m.type === 'update') && m.seenAt >= subscribedAt &&
      m.groups?.some((g) => g.group === 'lab')), 10_000);
  await waitInPage('the panel to say there are no alerts',
    () => document.querySelector('#alert-list')?.textContent.includes('No active alerts'), null, 5_000);
});

test('a threshold-breaking reading shows in the alerts panel within 1 s', { timeout: 30_000 }, async () => {
  // Watch the panel from inside the page: the time the item is in the DOM, then painted.
  await page.evaluate((probeId) => {
    window.__alertShown = null;
    const seen = () => [...document.querySelectorAll('#alert-list li[data-alert-id]')]
      .find((li) => li.querySelector('.subject')?.textContent === probeId);
    new MutationObserver((_, observer) => {
      const li = seen();
      if (!li) return;
      observer.disconnect();
      const inDom = Date.now(), flashing = li.classList.contains('arrived');
      requestAnimationFrame(() => requestAnimationFrame(() => {
        window.__alertShown = { inDom, painted: Date.now(), flashing, id: Number(li.dataset.alertId) };
      }));
    }).observe(document.querySelector('#alert-list'), { childList: true, subtree: true, characterData: true });
  }, PROBE);
  const published = await reading(31.5);
  const shown = await (await waitInPage('the alert in the panel', () => window.__alertShown, null, 5_000)).jsonValue();
  const frame = frames.received.find((m) => m.type === 'alert' && m.alert.subject === PROBE);
  alertId = shown.id;
  const arrival = shown.painted - published;
  console.log(`alert arrival: publish -> alert frame ${frame ? frame.seenAt - published : '?'} ms, ` +
    `-> in the panel ${shown.inDom - published} ms, -> painted ${arrival} ms`);
  assert.ok(arrival < ARRIVAL_LIMIT_MS, `the alert took ${arrival} ms from publication to the screen`);
  assert.ok(shown.flashing, 'a new alert flashes');

  const li = page.locator(item());
  assert.equal(await li.getAttribute('data-severity'), 'critical');
  assert.equal(await li.getAttribute('data-state'), 'active_unacknowledged');
  assert.equal((await li.locator('.state').textContent()).trim(), 'unacknowledged');
  assert.match(await li.locator('.msg').textContent(), /temperature/);
  assert.match(await li.locator('.where').textContent(), /ui-probe · lab\/bench-1 · rule hot/);
  assert.equal((await page.textContent('#alerts-unack')).trim(), '1');
  // The tree: the probe's groups take the alert's colour and count the alerting device.
  await waitInPage('lab to be coloured critical and count 1 device alerting', () => {
    const node = document.querySelector('li[data-group="lab"] > .node');
    return node?.dataset.severity === 'critical' && node.querySelector('.alerting')?.textContent === '1';
  }, null, 10_000);
  assert.equal(await page.getAttribute('li[data-group="site-1"] > .node', 'data-severity'), null);

  await page.screenshot({ path: path.join(TARGET_DIR, 'ui-alerts-desktop.png') });
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: path.join(TARGET_DIR, 'ui-alerts-dark.png') });
  await page.emulateMedia({ colorScheme: 'light' });
});

test('the severity filter hides and shows it', { timeout: 10_000 }, async () => {
  await page.click('#severity-filter button[data-severity="critical"]');
  await waitInPage('the alert to be filtered out', (sel) => !document.querySelector(sel) &&
    document.querySelector('#alert-list').textContent.includes('No alert matches the filter'), item(), 3_000);
  assert.equal(await page.getAttribute('#severity-filter button[data-severity="critical"]', 'aria-pressed'), 'false');
  await page.click('#severity-filter button[data-severity="critical"]');
  await page.waitForSelector(item(), { timeout: 3_000 });
});

test('Acknowledge sends an ack and the panel shows it acknowledged', { timeout: 20_000 }, async () => {
  await page.fill('#operator', 'ana');
  await page.press('#operator', 'Tab');                 // commits the name (change event)
  // By keyboard: focus the button and press Enter.
  await page.focus(`${item()} button[data-action="ack"]`);
  await page.keyboard.press('Enter');
  await waitHere('an ack frame for the alert', () =>
    frames.sent.some((m) => m.type === 'ack' && m.id === alertId && m.by === 'ana'), 3_000);
  await waitHere('/api/alerts to show it active_acknowledged', async () =>
    (await openAlerts()).some((a) => a.id === alertId && a.state === 'active_acknowledged' && a.acknowledged_by === 'ana'), 5_000);
  await waitInPage('the panel to show it acknowledged', (sel) => {
    const li = document.querySelector(sel);
    return li?.dataset.state === 'active_acknowledged' && !li.classList.contains('unacknowledged') &&
      li.querySelector('button[data-action="ack"]').hidden && /acknowledged by ana/.test(li.querySelector('.note').textContent) &&
      document.querySelector('#alerts-unack').textContent.trim() === '0';
  }, item(), 5_000);
  // The focus stays on the alert (the acknowledge button went away: its shelve button).
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.action), 'shelve');
});

test('Shelve for a chosen time hides it behind the shelved toggle; Unshelve brings it back', { timeout: 20_000 }, async () => {
  // A custom length outside the server's range is refused on the page; 15 minutes is taken.
  await page.selectOption('#shelve-minutes', 'custom');
  await page.fill('#shelve-hours', '1000');
  await waitInPage('the out-of-range length refused', () => /30 days/.test(document.querySelector('#alerts-error').textContent), null, 3_000);
  await page.fill('#shelve-hours', '0.25');
  await waitInPage('the shelve button to say 15 min', (sel) => document.querySelector(`${sel} button[data-action="shelve"]`)?.textContent === 'Shelve 15 min',
    item(), 3_000);
  const before = Date.now();
  await page.click(`${item()} button[data-action="shelve"]`);
  await waitHere('a shelve frame for 15 minutes', () =>
    frames.sent.some((m) => m.type === 'shelve' && m.id === alertId && m.minutes === 15), 3_000);
  await waitInPage('the alert to be hidden and counted as shelved', (sel) => !document.querySelector(sel) &&
    document.querySelector('#shelved-count').textContent === '1', item(), 5_000);
  const until = (await openAlerts()).find((a) => a.id === alertId).shelved_until;
  assert.ok(until >= before + 15 * 60_000 - 1000 && until <= Date.now() + 15 * 60_000 + 1000, 'shelved for 15 minutes');
  await page.selectOption('#shelve-minutes', '60');
  await page.check('#show-shelved');
  await waitInPage('the shelved alert shown with Unshelve', (sel) =>
    document.querySelector(`${sel}.shelved button[data-action="unshelve"]`) !== null, item(), 3_000);
  await page.click(`${item()} button[data-action="unshelve"]`);
  await waitHere('an unshelve frame', () => frames.sent.some((m) => m.type === 'unshelve' && m.id === alertId), 3_000);
  await waitInPage('the alert unshelved', (sel) => {
    const li = document.querySelector(sel);
    return li && !li.classList.contains('shelved') && document.querySelector('#shelved-count').textContent === '0';
  }, item(), 5_000);
  await page.uncheck('#show-shelved');
});

test('the history of an alert lists its transitions, and follows it', { timeout: 20_000 }, async () => {
  const fetched = page.waitForRequest((req) => new URL(req.url()).pathname === `/api/alerts/${alertId}`, { timeout: 5_000 });
  await page.click(`${item()} button.history-toggle`);
  await fetched;
  const events = () => page.$$eval(`${item()} .transitions li[data-event]`, (lis) => lis.map((li) => li.dataset.event));
  await waitInPage('raised, acknowledged, shelved and unshelved in the history', (sel) => {
    const shown = [...document.querySelectorAll(`${sel} .transitions li[data-event]`)].map((li) => li.dataset.event);
    return ['raised', 'acknowledged', 'shelved', 'unshelved'].every((e) => shown.includes(e));
  }, item(), 5_000);
  assert.equal(await page.getAttribute(`${item()} button.history-toggle`, 'aria-expanded'), 'true');
  assert.match(await page.textContent(`${item()} .transitions li[data-event="acknowledged"]`), /by ana/);
  // A new transition while it is open (shelved alerts shown, so it stays listed): fetched again.
  const count = (await events()).length;
  await page.check('#show-shelved');
  await page.click(`${item()} button[data-action="shelve"]`);
  await waitInPage('the new shelving in the open history', ([sel, n]) =>
    document.querySelectorAll(`${sel} .transitions li[data-event]`).length > n, [item(), count], 5_000);
  await page.click(`${item()} button[data-action="unshelve"]`);
  await waitInPage('unshelved again', (sel) => !document.querySelector(sel)?.classList.contains('shelved'), item(), 5_000);
  await page.uncheck('#show-shelved');
  await page.click(`${item()} button.history-toggle`);
  assert.equal(await page.isHidden(`${item()} .transitions`), true);
});

test('the group filter keeps the alerts under a group', { timeout: 15_000 }, async () => {
  await waitInPage('lab and site-1 offered', () => {
    const values = [...document.querySelectorAll('#alert-group option')].map((o) => o.value);
    return values.includes('lab') && values.includes('site-1');
  }, null, 10_000);
  await page.selectOption('#alert-group', 'site-1');
  await waitInPage('the alert hidden under site-1', (sel) => !document.querySelector(sel) &&
    document.querySelector('#alert-list').textContent.includes('No alert matches the filter'), item(), 3_000);
  await page.selectOption('#alert-group', 'lab/bench-1');
  await page.waitForSelector(item(), { timeout: 3_000 });
  await page.selectOption('#alert-group', '');
  await page.waitForSelector(item(), { timeout: 3_000 });
});

test('after a server restart the page reconnects, subscribes again and shows the open alert', { timeout: 60_000 }, async () => {
  const port = new URL(httpUrl).port;
  const sentBefore = frames.sent.length;
  probe.close();
  await stopChild(server);
  await waitInPage('#status to say "reconnecting"', () => document.querySelector('#status')?.textContent.trim() === 'reconnecting', null, 5_000);
  // The alert stays listed (dimmed) while the connection is down; its buttons do nothing.
  assert.equal(await page.getAttribute(`${item()} button[data-action="shelve"]`, 'aria-disabled'), 'true');
  await startServer(`127.0.0.1:${port}`);
  await waitInPage('#status to say "connected" again', () => document.querySelector('#status')?.textContent.trim() === 'connected', null, 20_000);
  await waitHere('the view and the groups sent again', () => {
    const again = frames.sent.slice(sentBefore);
    return again.some((m) => m.type === 'view') && again.some((m) => m.type === 'groups' && m.groups.includes('lab'));
  }, 5_000);
  await waitHere('a snapshot carrying the open alert', () =>
    frames.received.some((m) => m.type === 'snapshot' && m.alerts?.some((a) => a.id === alertId)), 10_000);
  await page.waitForSelector(`${item()}[data-state="active_acknowledged"]`, { timeout: 5_000 });
});

test('a reading below the clear level closes it and it leaves the panel', { timeout: 20_000 }, async () => {
  await reading(27.0);
  await waitHere('a closed alert frame', () =>
    frames.received.some((m) => m.type === 'alert' && m.alert.id === alertId && m.alert.state === 'closed'), 5_000);
  await waitInPage('the alert to leave the panel', (sel) => !document.querySelector(sel) &&
    document.querySelector('#alert-list').textContent.includes('No active alerts'), item(), 5_000);
  assert.equal((await openAlerts()).length, 0);
  await waitInPage('lab to lose its colour', () =>
    !document.querySelector('li[data-group="lab"] > .node')?.dataset.severity, null, 5_000);
});
