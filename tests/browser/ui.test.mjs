// End-to-end check of the dashboard: the real server, a simulated fleet and a real browser.
//
//   cargo build                          # at the workspace root: builds target/debug/iotmon
//   cd tests/browser && npm ci && npm test
//
// Environment: IOTMON_BIN (default ../../target/debug/iotmon), CHROMIUM (default /usr/bin/chromium).
// A screenshot with the group tree expanded and a device's history chart open is written to
// tests/browser/screenshot.png.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as support from './support.mjs';
import { startChild, serverAddresses, stopAll, waitHere } from './support.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const DEVICES = 120;
const PAGE_SIZE = 50;

let dataDir, browser, page, httpUrl;
let framesReceived = []; // parsed WebSocket messages, server -> page
let framesSent = [];     // parsed WebSocket messages, page -> server

const waitInPage = (...args) => support.waitInPage(page, ...args);

// The device count the server gives for a group, to compare the page with.
async function groupSize(group) {
  const res = await fetch(`${httpUrl}/api/devices?limit=1&group=${encodeURIComponent(group)}`);
  assert.equal(res.status, 200, `/api/devices?group=${group}`);
  return (await res.json()).total;
}

// The number in a tree node's own count span (not its children's).
const nodeCount = (group, kind) =>
  `Number(document.querySelector('li[data-group="${group}"] > .node .${kind}')?.textContent)`;

const rowIds = () => page.$$eval('tbody tr[data-device]', (rows) => rows.map((r) => r.dataset.device));

// --- Setup and teardown ---------------------------------------------------------------------

before(async () => {
  support.assertBinary();
  dataDir = await mkdtemp(path.join(tmpdir(), 'iotmon-ui-'));
  const server = startChild('serve', ['serve', '--mqtt-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0',
    '--data-dir', dataDir, '--allow-anonymous']);
  const addrs = await serverAddresses(server, 20_000);
  httpUrl = addrs.http;
  // A few devices drop off for a minute now and then (presence on), so offline marking shows.
  startChild('simulate', ['simulate', '--broker', `mqtt://${addrs.mqtt}`, '--devices', String(DEVICES), '--interval', '1s',
    '--presence', '--offline-rate', '0.001', '--offline-for', '60s']);

  browser = await support.launchBrowser();
  page = await browser.newPage({ viewport: { width: 1366, height: 860 } });
  page.on('pageerror', (err) => console.error('page error:', err.message));
  ({ received: framesReceived, sent: framesSent } = support.recordFrames(page));
  await page.goto(httpUrl);
}, { timeout: 60_000 });

after(async () => {
  await browser?.close().catch(() => {});
  await stopAll();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
}, { timeout: 30_000 });

// --- The checks, in order: each builds on the page state the previous one left -------------

test('the live connection comes up', { timeout: 20_000 }, async () => {
  await waitInPage('#status to say "connected"',
    () => document.querySelector('#status')?.textContent.trim() === 'connected', null, 15_000);
});

test('the whole fleet is counted', { timeout: 60_000 }, async () => {
  // The page re-fetches its list every 10 s, so devices that report late show up by then.
  await waitInPage(`#total to reach ${DEVICES}`,
    (n) => Number(document.querySelector('#total')?.textContent) === n, DEVICES, 45_000);
});

test('the first page shows 50 rows', { timeout: 20_000 }, async () => {
  await waitInPage('50 rows on page 1 of 3',
    (n) => document.querySelectorAll('tbody tr[data-device]').length === n &&
      document.querySelector('#page')?.textContent.trim() === 'page 1 of 3', PAGE_SIZE, 15_000);
  const ids = await rowIds();
  assert.equal(new Set(ids).size, PAGE_SIZE, 'device ids on a page are distinct');
});

test('live updates change a temperature on screen', { timeout: 40_000 }, async () => {
  // Any row with a numeric temperature will do.
  const handle = await waitInPage('a row with a numeric temperature', () => {
    for (const td of document.querySelectorAll('tbody tr[data-device]:not(.is-offline) td[data-metric="temperature"]')) {
      if (/^-?\d+(\.\d+)?$/.test(td.textContent.trim())) {
        return { id: td.closest('tr').dataset.device, value: td.textContent.trim() };
      }
    }
    return null;
  }, null, 15_000);
  const { id, value } = await handle.jsonValue();
  const cell = `tbody tr[data-device="${id}"] td[data-metric="temperature"]`;
  await waitInPage(`the temperature of ${id} to change from ${value}`, ([sel, old]) => {
    const text = document.querySelector(sel)?.textContent.trim() ?? '';
    return text !== old && /^-?\d+(\.\d+)?$/.test(text);
  }, [cell, value], 30_000);
  assert.ok(framesReceived.some((m) => m.type === 'update' && m.devices?.some((d) => d.id === id)),
    `an update message for ${id} arrived over the WebSocket`);
  assert.match(await page.textContent(`tbody tr[data-device="${id}"] td.last-seen`), /\d+ s ago/);
});

test('next shows other devices', { timeout: 20_000 }, async () => {
  const first = await rowIds();
  await page.click('#next');
  await waitInPage('page 2 with other devices', (ids) => {
    const rows = [...document.querySelectorAll('tbody tr[data-device]')].map((r) => r.dataset.device);
    return document.querySelector('#page')?.textContent.trim() === 'page 2 of 3' &&
      rows.length > 0 && rows.every((id) => !ids.includes(id));
  }, first, 15_000);
  // The server is told about exactly the new page.
  const second = await rowIds();
  await waitHere('a view message for page 2', () => {
    const views = framesSent.filter((m) => m.type === 'view');
    return views.length > 0 && views.at(-1).devices.join() === second.join();
  }, 5_000);
});

test('search narrows to one device', { timeout: 20_000 }, async () => {
  const [id] = await rowIds();
  await page.locator('#search').pressSequentially(id, { delay: 10 });
  await waitInPage(`a single row for ${id}`, (want) => {
    const rows = document.querySelectorAll('tbody tr[data-device]');
    return rows.length === 1 && rows[0].dataset.device === want &&
      document.querySelector('#page')?.textContent.trim() === 'page 1 of 1';
  }, id, 15_000);
  await waitHere(`a view message for just ${id}`, () => {
    const views = framesSent.filter((m) => m.type === 'view');
    return views.length > 0 && views.at(-1).devices.join() === id;
  }, 5_000);
});

test('the sidebar lists the sites, with live online counts', { timeout: 30_000 }, async () => {
  await page.fill('#search', '');                       // back to the whole fleet
  await waitInPage('a tree node for site-1', () => !!document.querySelector('#groups li[data-group="site-1"]'), null, 15_000);
  // The page subscribes to the visible nodes, and the counts come from the pushed aggregates.
  await waitHere('a groups subscription naming site-1', () =>
    framesSent.some((m) => m.type === 'groups' && m.groups.includes('site-1')), 10_000);
  await waitHere('a pushed aggregate of site-1 with devices online', () =>
    framesReceived.some((m) => (m.type === 'update' || m.type === 'snapshot') &&
      m.groups?.some((g) => g.group === 'site-1' && g.devices.online > 0)), 15_000);
  await waitInPage('site-1 to count devices online',
    new Function(`return ${nodeCount('site-1', 'online')} > 0`), null, 10_000);
});

test('expanding the tree subscribes to the new nodes; clicking one narrows the grid', { timeout: 40_000 }, async () => {
  const group = 'site-1/building-a/floor-2';
  await page.click('li[data-group="site-1"] > .node .toggle');
  await page.click('li[data-group="site-1/building-a"] > .node .toggle');
  await page.waitForSelector(`li[data-group="${group}"]`, { timeout: 10_000 });
  await waitHere(`a groups subscription naming ${group}`, () =>
    framesSent.some((m) => m.type === 'groups' && m.groups.includes(group)), 10_000);
  await waitInPage(`${group} to count devices online`,
    new Function(`return ${nodeCount(group, 'online')} > 0`), null, 15_000);

  const expected = await groupSize(group);
  assert.ok(expected > 0 && expected < DEVICES, `${group} holds part of the fleet (${expected})`);
  await page.click(`li[data-group="${group}"] > .node .name`);
  await waitInPage(`#total to narrow to ${expected} and every row to be in ${group}`, ([g, n]) => {
    const groups = [...document.querySelectorAll('tbody tr[data-device] td.group')].map((td) => td.textContent);
    return Number(document.querySelector('#total')?.textContent) === n && groups.length === Math.min(n, 50) &&
      groups.every((text) => text === g || text.startsWith(`${g}/`));
  }, [group, expected], 15_000);
  // The view still names the page's devices.
  const ids = await rowIds();
  await waitHere('a view message for the group page', () => {
    const views = framesSent.filter((m) => m.type === 'view');
    return views.length > 0 && views.at(-1).devices?.join() === ids.join();
  }, 5_000);
});

test('the breadcrumb widens the filter to a parent group', { timeout: 30_000 }, async () => {
  const parent = 'site-1/building-a';
  const expected = await groupSize(parent);
  await page.click(`#crumbs button[data-path="${parent}"]`);
  await waitInPage(`#total to be ${expected} for ${parent}`, ([g, n]) =>
    Number(document.querySelector('#total')?.textContent) === n &&
    [...document.querySelectorAll('tbody tr[data-device] td.group')].every((td) => td.textContent.startsWith(`${g}/`)),
  [parent, expected], 15_000);
});

test('clicking a row opens its history chart', { timeout: 120_000 }, async () => {
  const [id] = await rowIds();
  await page.click(`tbody tr[data-device="${id}"] td.id`);
  await page.waitForSelector('#detail:not([hidden])', { timeout: 5_000 });
  assert.equal((await page.textContent('#detail-title')).trim(), id);
  assert.equal(await page.inputValue('#detail-metric'), 'temperature');
  // The store's finest tier closes a window every 10 s; the panel refetches as often.
  await waitInPage('#history to draw at least one point',
    () => Number(document.querySelector('#history')?.dataset.points) >= 1, null, 45_000);

  // Another range and another metric are fetched anew.
  const sixHours = page.waitForRequest((req) => {
    const u = new URL(req.url());
    return u.pathname === '/api/history' && Number(u.searchParams.get('to')) - Number(u.searchParams.get('from')) === 6 * 3_600_000;
  }, { timeout: 5_000 });
  await page.click('#ranges button[data-range="21600000"]');
  await sixHours;
  await waitInPage('#history to draw the 6 h range',
    () => Number(document.querySelector('#history')?.dataset.points) >= 1, null, 15_000);
  const humidity = page.waitForRequest((req) => new URL(req.url()).searchParams.get('metric') === 'humidity', { timeout: 5_000 });
  await page.selectOption('#detail-metric', 'humidity');
  await humidity;
  await page.selectOption('#detail-metric', 'temperature');
  await page.click('#ranges button[data-range="3600000"]');
  await waitInPage('#history to draw temperature over 1 h again',
    () => Number(document.querySelector('#history')?.dataset.points) >= 1, null, 15_000);
  assert.equal(await page.textContent('#detail-error'), '');
  // A few buckets, so the band and the mean line show as such (and in the screenshot).
  await waitInPage('#history to draw 3 points as a band and a line',
    () => Number(document.querySelector('#history')?.dataset.points) >= 3 &&
      !!document.querySelector('#history path.band') && !!document.querySelector('#history path.mean'), null, 60_000);
  await page.screenshot({ path: path.join(here, 'screenshot.png') });

  await page.keyboard.press('Escape');
  await page.waitForSelector('#detail', { state: 'hidden', timeout: 5_000 });
});

test('"All devices" clears the group filter', { timeout: 20_000 }, async () => {
  await page.click('#crumbs button[data-path=""]');
  await waitInPage(`#total to be ${DEVICES} again`,
    (n) => Number(document.querySelector('#total')?.textContent) === n, DEVICES, 15_000);
  assert.equal(await page.locator('#groups li.current').count(), 0, 'no tree node is marked current');
});

test('an offline device is marked in its row and counted in the tree', { timeout: 120_000 }, async () => {
  // The fleet takes devices offline at random: poll the server until one is.
  let offline;
  const deadline = Date.now() + 90_000;
  while (!offline) {
    assert.ok(Date.now() < deadline, 'no device went offline within 90 s');
    const body = await (await fetch(`${httpUrl}/api/devices?limit=500`)).json();
    offline = body.devices.find((d) => d.online === false)?.id;
    if (!offline) await new Promise((r) => setTimeout(r, 500));
  }
  await page.locator('#search').pressSequentially(offline, { delay: 10 });
  await waitInPage(`the row of ${offline} to be marked offline`, (id) => {
    const rows = document.querySelectorAll('tbody tr[data-device]');
    return rows.length === 1 && rows[0].dataset.device === id && rows[0].classList.contains('is-offline') &&
      rows[0].querySelector('td.id').title === 'offline';
  }, offline, 15_000);
  await waitInPage('site-1 to count a device offline',
    new Function(`return ${nodeCount('site-1', 'offline')} > 0`), null, 15_000);
  await page.fill('#search', '');
});
