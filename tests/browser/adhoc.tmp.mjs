import { chromium } from 'playwright-core';
const url = process.argv[2];
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu'] });
const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
page.on('pageerror', (e) => console.log('PAGE ERROR', e.message));
page.on('console', (m) => console.log('console', m.type(), m.text()));
// Mark some devices offline, and make history fail for humidity.
await page.route('**/api/devices?*', async (route) => {
  const res = await route.fetch(); const body = await res.json();
  body.devices.forEach((d, i) => { if (i % 4 === 1) d.online = false; });
  await route.fulfill({ response: res, json: body });
});
await page.route('**/api/history?*', async (route) => {
  if (new URL(route.request().url()).searchParams.get('metric') === 'humidity')
    return route.fulfill({ status: 400, json: { error: '"points" must be between 2 and 2000' } });
  return route.continue();
});
await page.goto(url);
await page.waitForSelector('tr[data-device]');
await page.waitForTimeout(1500);
await page.click('tr[data-device] >> nth=1');
await page.waitForSelector('#history[data-points]');
await page.selectOption('#detail-metric', 'humidity');
await page.waitForFunction(() => document.querySelector('#detail-error').textContent !== '');
await page.screenshot({ path: '/tmp/adhoc1.png' });
await page.keyboard.press('Escape');
console.log('focused after close:', await page.evaluate(() => document.activeElement?.dataset?.device));
await page.setViewportSize({ width: 700, height: 700 });
await page.screenshot({ path: '/tmp/adhoc2.png' });
// Keyboard: focus a tree toggle, press Enter, focus stays.
await page.focus('li[data-group="site-1"] > .node .toggle');
await page.keyboard.press('Enter');
console.log('focus after toggle:', await page.evaluate(() => document.activeElement?.closest('li')?.dataset.group + ' ' + document.activeElement?.className));
await browser.close();
