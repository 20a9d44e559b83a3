// Drives the dashboard's device view in Debian's headless Chromium with
// playwright-core, on a pool on devices one of which is missing: signs
// in, checks that the view names the pool degraded and the device faulted
// with its reason, starts a scrub with the page's button and waits for the
// view to show it done, checks that the LUN view shows a LUN's class and
// reservation, and takes a screenshot. Run by
// crates/blockfork/tests/devices.rs:
//
//   node devices.mjs URL TOKEN MISSING-DEVICE SCREENSHOT.png
import { chromium } from 'playwright-core';

const [url, token, missing, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error('usage: node devices.mjs URL TOKEN MISSING-DEVICE SCREENSHOT.png');
  process.exit(2);
}

function check(condition, what) {
  if (!condition) throw new Error('check failed: ' + what);
  console.log('ok: ' + what);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(url + '/ui');
  await page.fill('input#token', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('#devices .content table');
  const view = page.locator('#devices .content');
  await view.locator('text=degraded').first().waitFor();
  check(true, 'the view says the pool is degraded');
  const row = view.locator('tr', { hasText: missing });
  await row.locator('text=faulted').waitFor();
  check((await row.innerText()).includes('did not open'), 'the missing device is faulted, with its reason');
  await view.locator('button[data-action="scrub-start"]').click();
  await view.locator('text=scrub done').waitFor({ timeout: 60000 });
  check(true, 'a scrub started from the page runs to done');
  const lun = page.locator('#luns .content li.lun[data-lun="vm"]');
  await lun.locator('text=thick').waitFor();
  check((await lun.innerText()).includes('mirror3'), 'the LUN view shows the class and the reservation');
  await page.screenshot({ path: screenshot, fullPage: true });
  check(true, 'screenshot saved');
  check(pageErrors.length === 0, 'no script errors: ' + pageErrors.join('; '));
} finally {
  await browser.close();
}
