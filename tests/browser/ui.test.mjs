// End-to-end check of the dashboard: the real server, a simulated fleet and a real browser.
//
//   cargo build                          # at the workspace root: builds target/debug/iotmon
//   cd tests/browser && npm ci && npm test
//
// Environment: IOTMON_BIN (default ../../target/debug/iotmon), CHROMIUM (default /usr/bin/chromium).
// Screenshots (the history chart open, light and dark, and the phone layout) are written to
// target/ui-desktop.png, target/ui-dark.png and target/ui-phone.png.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as support from './support.mjs';
import { startChild, serverAddresses, stopAll, waitHere, TARGET_DIR } from './support.mjs';

const DEVICES = 120;

let dataDir, browser, page, httpUrl;
let frames;              // parsed WebSocket messages: received (server -> page) and sent
const pageErrors = [];   // uncaught exceptions in the page

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

const rowIds = () => support.gridIds(page);

// Ids of a page of /api/devices with the query `params`.
async function listPage(params, offset, limit) {
  const res = await fetch(`${httpUrl}/api/devices?${params}&offset=${offset}&limit=${limit}`);
  assert.equal(res.status, 200, `/api/devices?${params}`);
  return (await res.json()).devices.map((d) => d.id);
}

const sameSet = (a = [], b = []) => a.length === b.length && a.every((id) => b.includes(id));

// --- Setup and teardown ---------------------------------------------------------------------

before(async () => {
  support.assertBinary();
  await mkdir(TARGET_DIR, { recursive: true });
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
  page.on('pageerror', (err) => { pageErrors.push(err.message); console.error('page error:', err.message); });
  frames = support.recordFrames(page);
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
  // Pages on screen are fetched again every 10 s, so devices that report late show up by then.
  await waitInPage(`#total to reach ${DEVICES}`,
    (n) => Number(document.querySelector('#total')?.textContent) === n, DEVICES, 45_000);
});

test('only the lines on screen exist, and the view is exactly their devices', { timeout: 20_000 }, async () => {
  await waitInPage('the first lines of the grid', () => document.querySelectorAll('#rows [data-device]').length > 10, null, 10_000);
  const ids = await rowIds();
  assert.ok(ids.length < DEVICES / 2, `${ids.length} of ${DEVICES} devices are in the page`);
  assert.equal(new Set(ids).size, ids.length, 'distinct devices');
  assert.equal(ids[0], (await listPage('', 0, 1))[0], 'the list starts where the server\'s does');
  await waitHere('a view naming exactly the rendered devices', () => sameSet(support.lastView(frames)?.devices, ids), 5_000);
  await waitHere('/metrics to count the view', async () => await support.metric(httpUrl, 'iotmon_viewed_devices') === ids.length, 5_000);
});

test('live updates change a temperature on screen', { timeout: 40_000 }, async () => {
  const handle = await waitInPage('a row with a numeric temperature', () => {
    for (const cell of document.querySelectorAll('#rows [data-device]:not(.is-offline) .cell[data-metric="temperature"]')) {
      if (/^-?\d+(\.\d+)?$/.test(cell.textContent.trim())) {
        return { id: cell.closest('[data-device]').dataset.device, value: cell.textContent.trim() };
      }
    }
    return null;
  }, null, 15_000);
  const { id, value } = await handle.jsonValue();
  const cell = `#rows [data-device="${id}"] .cell[data-metric="temperature"]`;
  await waitInPage(`the temperature of ${id} to change from ${value}`, ([sel, old]) => {
    const text = document.querySelector(sel)?.textContent.trim() ?? '';
    return text !== old && /^-?\d+(\.\d+)?$/.test(text);
  }, [cell, value], 30_000);
  assert.ok(frames.received.some((m) => m.type === 'update' && m.devices?.some((d) => d.id === id)),
    `an update message for ${id} arrived over the WebSocket`);
  assert.match(await page.textContent(`#rows [data-device="${id}"] .last-seen`), /\d+ s ago/);
});

test('values ticking shift nothing on the page', { timeout: 20_000 }, async () => {
  // The Layout Instability API reports every shift of visible content not caused by input.
  const shift = await page.evaluate(() => new Promise((resolve) => {
    let total = 0, updates = 0;
    const sources = [];
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        if (entry.hadRecentInput) continue;
        total += entry.value;
        for (const src of entry.sources ?? []) {
          const n = src.node;
          sources.push(`${n?.nodeName}#${n?.id ?? ''}.${n?.className ?? ''} "${(n?.textContent ?? '').slice(0, 30)}" ` +
            `${JSON.stringify(src.previousRect)} -> ${JSON.stringify(src.currentRect)}`);
        }
      }
    }).observe({ type: 'layout-shift' });
    const rows = document.querySelector('#rows');
    new MutationObserver(() => updates++).observe(rows, { subtree: true, characterData: true, childList: true });
    setTimeout(() => resolve({ total, updates, sources: [...new Set(sources)].slice(0, 5) }), 5_000);
  }));
  assert.ok(shift.updates > 0, 'values changed meanwhile');
  assert.equal(shift.total, 0, `layout shift over 5 s of live updates (${shift.updates} changes): ${shift.sources.join('; ')}`);
});

test('scrolling to the end changes the view on the server to the last devices', { timeout: 30_000 }, async () => {
  const first = await rowIds();
  const [lastId] = await listPage('', DEVICES - 1, 1);
  await page.evaluate(() => { const grid = document.querySelector('#grid'); grid.scrollTop = grid.scrollHeight; });
  await waitInPage(`the last device, ${lastId}, on screen`, (id) => !!document.querySelector(`#rows [data-device="${id}"]`), lastId, 10_000);
  const ids = await rowIds();
  assert.ok(!ids.includes(first[0]), 'the first device is no longer in the page');
  await waitHere('a view naming the last devices only', () => {
    const view = support.lastView(frames)?.devices ?? [];
    return view.includes(lastId) && !view.includes(first[0]) && sameSet(view, ids);
  }, 5_000);
  await waitHere('/metrics to count the new view', async () => await support.metric(httpUrl, 'iotmon_viewed_devices') === ids.length, 5_000);
  assert.match(await page.textContent('#position'), new RegExp(`of ${DEVICES}$`));
});

test('sorting by id, descending, is the server\'s order and changes the view', { timeout: 20_000 }, async () => {
  const expected = await listPage('sort=id&order=desc', 0, 5);
  const asked = page.waitForRequest((req) => {
    const u = new URL(req.url());
    return u.pathname === '/api/devices' && u.searchParams.get('sort') === 'id' && u.searchParams.get('order') === 'desc';
  }, { timeout: 5_000 });
  await page.selectOption('#sort', 'id');
  await page.click('#order');
  await asked;
  await waitInPage('the grid sorted by id, descending, from the top', (want) => {
    const items = [...document.querySelectorAll('#rows [data-device]')]
      .sort((a, b) => a.getAttribute('aria-rowindex') - b.getAttribute('aria-rowindex')).map((n) => n.dataset.device);
    return want.every((id, i) => items[i] === id);
  }, expected, 10_000);
  await waitHere('a view with the highest ids', () => (support.lastView(frames)?.devices ?? []).includes(expected[0]), 5_000);
  assert.equal(await page.getAttribute('#head [aria-sort="descending"] button', 'title'), 'Sort by device');
  // A click on the Group column's header sorts by group again, ascending.
  await page.click('#head .group button');
  await waitInPage('the default order back', (id) => document.querySelector('#rows [aria-rowindex="2"]')?.dataset.device === id,
    (await listPage('', 0, 1))[0], 10_000);
});

test('search narrows to one device', { timeout: 20_000 }, async () => {
  const [id] = await rowIds();
  await page.locator('#search').pressSequentially(id, { delay: 10 });
  await waitInPage(`a single row for ${id}`, (want) => {
    const rows = document.querySelectorAll('#rows [data-device]');
    return rows.length === 1 && rows[0].dataset.device === want && /^1–1 of 1$/.test(document.querySelector('#position').textContent);
  }, id, 15_000);
  await waitHere(`a view message for just ${id}`, () => support.lastView(frames)?.devices.join() === id, 5_000);
  await page.fill('#search', '');
});

test('the sidebar lists the sites, with live online counts', { timeout: 30_000 }, async () => {
  await waitInPage('a tree node for site-1', () => !!document.querySelector('#groups li[data-group="site-1"]'), null, 15_000);
  await waitHere('a groups subscription naming site-1', () =>
    frames.sent.some((m) => m.type === 'groups' && m.groups.includes('site-1')), 10_000);
  await waitHere('a pushed aggregate of site-1 with devices online', () =>
    frames.received.some((m) => (m.type === 'update' || m.type === 'snapshot') &&
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
    frames.sent.some((m) => m.type === 'groups' && m.groups.includes(group)), 10_000);
  await waitInPage(`${group} to count devices online`,
    new Function(`return ${nodeCount(group, 'online')} > 0`), null, 15_000);

  const expected = await groupSize(group);
  assert.ok(expected > 0 && expected < DEVICES, `${group} holds part of the fleet (${expected})`);
  await page.click(`li[data-group="${group}"] > .node .name`);
  await waitInPage(`#total to narrow to ${expected} and every row to be in ${group}`, ([g, n]) => {
    const groups = [...document.querySelectorAll('#rows [data-device] .group')].map((c) => c.textContent);
    return Number(document.querySelector('#total')?.textContent) === n && groups.length === n &&
      groups.every((text) => text === g || text.startsWith(`${g}/`));
  }, [group, expected], 15_000);
  const ids = await rowIds();
  await waitHere('a view message for the group', () => sameSet(support.lastView(frames)?.devices, ids), 5_000);
});

test('the breadcrumb widens the filter to a parent group', { timeout: 30_000 }, async () => {
  const parent = 'site-1/building-a';
  const expected = await groupSize(parent);
  await page.click(`#crumbs button[data-path="${parent}"]`);
  await waitInPage(`#total to be ${expected} for ${parent}`, ([g, n]) =>
    Number(document.querySelector('#total')?.textContent) === n &&
    [...document.querySelectorAll('#rows [data-device] .group')].every((c) => c.textContent.startsWith(`${g}/`)),
  [parent, expected], 15_000);
});

test('the keyboard moves along the rows and Enter opens one', { timeout: 20_000 }, async () => {
  await page.focus('#rows [tabindex="0"]');
  const first = await page.evaluate(() => document.activeElement.dataset.device);
  await page.keyboard.press('ArrowDown');
  const second = await page.evaluate(() => document.activeElement.dataset.device);
  const ids = await rowIds();
  assert.deepEqual([first, second], ids.slice(0, 2), 'ArrowDown focuses the next row');
  await page.keyboard.press('End');
  const last = await page.evaluate(() => document.activeElement.dataset.device);
  assert.equal(last, (await rowIds()).at(-1), 'End focuses the last row');
  assert.equal(await page.locator('#rows [tabindex="0"]').count(), 1, 'one row is in the tab order');
  await page.keyboard.press('Home');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#detail:not([hidden])', { timeout: 5_000 });
  assert.equal((await page.textContent('#detail-title')).trim(), first);
  await page.keyboard.press('Escape');
  await page.waitForSelector('#detail', { state: 'hidden', timeout: 5_000 });
  assert.equal(await page.evaluate(() => document.activeElement.dataset.device), first, 'the focus goes back to the row');
});

test('a device\'s panel draws its history with uPlot and extends it live', { timeout: 120_000 }, async () => {
  const [id] = await rowIds();
  await page.click(`#rows [data-device="${id}"] .id`);
  await page.waitForSelector('#detail:not([hidden])', { timeout: 5_000 });
  assert.equal((await page.textContent('#detail-title')).trim(), id);
  assert.equal(await page.inputValue('#detail-metric'), 'temperature');
  await waitInPage('live values in the panel', () => /^\d/.test(document.querySelector('#detail-values dd')?.textContent ?? ''), null, 10_000);
  // The store's finest tier closes a window every 10 s; the panel fetches as often.
  await waitInPage('a uPlot chart with history points', () =>
    !!document.querySelector('#history .uplot canvas') && Number(document.querySelector('#history').dataset.points) >= 1, null, 45_000);
  // uPlot holds what it draws: the mean series has as many values as the chart's x axis.
  const drawn = await page.evaluate(() => document.querySelectorAll('#history .u-series').length);
  assert.ok(drawn >= 4, `the legend names x, max, mean and min (${drawn})`);
  // Live readings of the device extend the chart between fetches.
  await waitInPage('live readings drawn after the history', () => Number(document.querySelector('#history').dataset.live) >= 2, null, 15_000);

  const day = page.waitForRequest((req) => {
    const u = new URL(req.url());
    return u.pathname === '/api/history' && Number(u.searchParams.get('to')) - Number(u.searchParams.get('from')) === 86_400_000;
  }, { timeout: 5_000 });
  await page.click('#ranges button[data-range="86400000"]');
  await day;
  await waitInPage('the day drawn', () => Number(document.querySelector('#history')?.dataset.points) >= 1, null, 15_000);
  // A custom range: the last 30 minutes, typed into the form.
  await page.click('#ranges button[data-range="custom"]');
  const custom = page.waitForRequest((req) => {
    const u = new URL(req.url());
    const span = Number(u.searchParams.get('to')) - Number(u.searchParams.get('from'));
    return u.pathname === '/api/history' && span === 30 * 60_000;
  }, { timeout: 5_000 });
  await page.evaluate(() => {
    const local = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
    const end = Math.floor(Date.now() / 60_000) * 60_000 + 60_000;
    document.querySelector('#custom-from').value = local(end - 30 * 60_000);
    document.querySelector('#custom-to').value = local(end);
  });
  await page.click('#custom-range button[type="submit"]');
  await custom;
  await waitInPage('the custom range drawn, without live readings', () =>
    Number(document.querySelector('#history')?.dataset.points) >= 1 && document.querySelector('#history').dataset.live === '0', null, 15_000);
  const humidity = page.waitForRequest((req) => new URL(req.url()).searchParams.get('metric') === 'humidity', { timeout: 5_000 });
  await page.selectOption('#detail-metric', 'humidity');
  await humidity;
  await page.selectOption('#detail-metric', 'temperature');
  await page.click('#ranges button[data-range="3600000"]');
  assert.equal(await page.textContent('#detail-error'), '');
  // A few buckets, so the band and the mean line show as such in the screenshots.
  await waitInPage('3 points drawn', () => Number(document.querySelector('#history')?.dataset.points) >= 3, null, 60_000);
  // The panel's device stays in the view even when it is scrolled away.
  await page.evaluate(() => { const grid = document.querySelector('#grid'); grid.scrollTop = grid.scrollHeight; });
  await waitHere(`a view that keeps ${id}`, () => (support.lastView(frames)?.devices ?? []).includes(id), 5_000);
  await page.screenshot({ path: path.join(TARGET_DIR, 'ui-desktop.png') });
  await page.emulateMedia({ colorScheme: 'dark' });
  await waitInPage('the chart made anew in dark colours', () => document.querySelector('#history').dataset.scheme === 'dark' &&
    !!document.querySelector('#history .uplot canvas') && Number(document.querySelector('#history').dataset.points) >= 3, null, 15_000);
  await page.screenshot({ path: path.join(TARGET_DIR, 'ui-dark.png') });
  await page.emulateMedia({ colorScheme: 'light' });
  await waitInPage('the chart back in light colours', () => document.querySelector('#history').dataset.scheme === 'light', null, 15_000);
  await page.keyboard.press('Escape');
  await page.waitForSelector('#detail', { state: 'hidden', timeout: 5_000 });
});

test('cards show the same devices, fewer a line, and keep the view in step', { timeout: 20_000 }, async () => {
  await page.click('#layout button[data-layout="cards"]');
  await waitInPage('cards in the grid', () => document.querySelectorAll('#rows .card[data-device]').length > 0 &&
    !document.querySelector('#rows .row'), null, 5_000);
  const ids = await rowIds();
  await waitHere('a view naming the cards', () => sameSet(support.lastView(frames)?.devices, ids), 5_000);
  await waitInPage('values on the cards', () => /\d/.test(document.querySelector('#rows .card dd')?.textContent ?? ''), null, 10_000);
  await page.click('#layout button[data-layout="table"]');
  await page.waitForSelector('#rows .row[data-device]', { timeout: 5_000 });
});

test('"All devices" clears the group filter', { timeout: 20_000 }, async () => {
  await page.click('#crumbs button[data-path=""]');
  await waitInPage(`#total to be ${DEVICES} again`,
    (n) => Number(document.querySelector('#total')?.textContent) === n, DEVICES, 15_000);
  assert.equal(await page.locator('#groups li.current').count(), 0, 'no tree node is marked current');
});

test('at phone width the panels become tabs', { timeout: 30_000 }, async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await waitInPage('the tabs shown, the grid alone under them', () =>
    getComputedStyle(document.querySelector('#tabs')).display !== 'none' &&
    getComputedStyle(document.querySelector('#groups')).display === 'none' &&
    getComputedStyle(document.querySelector('#alerts')).display === 'none' &&
    document.querySelector('#grid').getBoundingClientRect().width <= 390, null, 5_000);
  // No horizontal scrolling of the page itself.
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 390), 'the page fits 390 px');
  await page.click('#tabs [data-tab="groups"]');
  await waitInPage('the tree shown instead', () => getComputedStyle(document.querySelector('#groups')).display !== 'none' &&
    getComputedStyle(document.querySelector('#main')).display === 'none', null, 5_000);
  await page.keyboard.press('ArrowRight');                // from the focused tab to the next
  await waitInPage('the alerts tab by keyboard', () => document.activeElement?.dataset.tab === 'alerts' &&
    getComputedStyle(document.querySelector('#alerts')).display !== 'none', null, 5_000);
  await page.click('#tabs [data-tab="devices"]');
  await waitInPage('the grid back', () => document.querySelectorAll('#rows [data-device]').length > 5, null, 5_000);
  await page.setViewportSize({ width: 1366, height: 860 });
  // A page opened on a phone starts with cards, one a line, values on them.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  try {
    await phone.goto(httpUrl);
    await phone.waitForFunction(() => document.querySelector('#grid')?.dataset.layout === 'cards' &&
      document.querySelectorAll('#rows .card[data-device]').length > 3 && /\d/.test(document.querySelector('#rows .card dd')?.textContent ?? ''),
    null, { timeout: 15_000, polling: 100 });
    const widths = await phone.$$eval('#rows .card[data-device]', (cards) => cards.map((c) => c.getBoundingClientRect().right));
    assert.ok(widths.every((right) => right <= 390), 'every card fits the screen');
    await phone.screenshot({ path: path.join(TARGET_DIR, 'ui-phone.png') });
  } finally {
    await phone.close();
  }
});

test('an offline device is marked, listed by the offline filter and counted in the tree', { timeout: 120_000 }, async () => {
  // The fleet takes devices offline at random: poll the server until one is.
  let offline;
  await waitHere('a device offline', async () => {
    offline = (await listPage('state=offline', 0, 1))[0];
    return !!offline;
  }, 90_000);
  await page.selectOption('#state-filter', 'offline');
  await waitInPage(`${offline} among only offline rows`, (id) => {
    const rows = [...document.querySelectorAll('#rows [data-device]')];
    return rows.some((r) => r.dataset.device === id) && rows.every((r) => r.classList.contains('is-offline')) &&
      document.querySelector(`#rows [data-device="${id}"] .id`).title === 'offline';
  }, offline, 15_000);
  assert.equal(await page.textContent('#total-label'), 'matching');
  await waitInPage('site-1 to count a device offline',
    new Function(`return ${nodeCount('site-1', 'offline')} > 0`), null, 15_000);
  await page.selectOption('#state-filter', '');
});

test('the page threw nothing', () => {
  assert.deepEqual(pageErrors, []);
});
