// Drives blockfork's dashboard in Debian's headless Chromium with
// playwright-core: signs in, takes a snapshot and a clone through the page,
// checks that the tree shows the clone under its snapshot, that a delete
// names what depends on it, that live I/O rates and events show, and takes
// a screenshot. Run by crates/blockfork/tests/dashboard.rs:
//
//   node dashboard.mjs URL TOKEN LUN SCREENSHOT.png
//
// Any failed check throws: the process exits non-zero and says which.
import { chromium } from 'playwright-core';

const [url, token, lun, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error('usage: node dashboard.mjs URL TOKEN LUN SCREENSHOT.png');
  process.exit(2);
}
const TIMEOUT = 15000;

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
  page.setDefaultTimeout(TIMEOUT);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));

  // Without a session the page is the login form; a wrong token is refused.
  await page.goto(url + '/ui');
  await page.waitForSelector('input#token');
  await page.fill('input#token', 'not-the-token');
  await page.click('button[type=submit]');
  await page.waitForSelector('.error:has-text("not the API token")');
  check(true, 'a wrong token is refused with a sentence');

  await page.fill('input#token', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('#luns .content ul.tree');
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'bf_session');
  check(session && session.httpOnly && session.sameSite === 'Strict',
    'the session cookie is HttpOnly and SameSite=Strict');
  check(!(await page.evaluate(() => document.cookie)).includes('bf_session'),
    'page scripts cannot read the session cookie');

  // The seeded LUN is in the tree, with live I/O (the test writes to it).
  const lunNode = `li.lun[data-lun="${lun}"]`;
  await page.waitForSelector(`${lunNode} > .node .io:has-text("IOPS")`);
  check(true, `the tree shows LUN ${lun} with live I/O rates`);

  // A cookie-authenticated change without the dashboard's header is refused.
  const forged = await page.evaluate(async (name) => {
    const r = await fetch('/api/v1/luns', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name, size: 1048576 }),
    });
    return r.status;
  }, 'forged');
  check(forged === 403, `a change without X-Blockfork-UI is refused (got ${forged})`);

  // Snapshot through the page.
  await page.click(`${lunNode} > .node button[data-action="snapshot"]`);
  await page.fill('#dialog-input', 'nightly');
  await page.click('#dialog-ok');
  const snapNode = `${lunNode} li.snapshot[data-snapshot="${lun}@nightly"]`;
  await page.waitForSelector(snapNode);
  check(true, 'the snapshot appears under its LUN');

  // Clone of that snapshot through the page: it appears under the snapshot.
  await page.click(`${snapNode} > .node button[data-action="clone"]`);
  await page.fill('#dialog-input', `${lun}-test`);
  await page.click('#dialog-ok');
  const cloneNode = `${snapNode} li.lun[data-lun="${lun}-test"]`;
  await page.waitForSelector(cloneNode);
  check(true, 'the clone appears in the tree under the snapshot it depends on');

  // Deleting the snapshot names the clone that depends on it; cancel.
  await page.click(`${snapNode} > .node button[data-action="delete-snapshot"]`);
  await page.waitForSelector('#dialog[open]');
  const body = await page.textContent('#dialog-body');
  check(body.includes(`${lun}-test`), 'the delete confirmation names the dependent clone');
  await page.click('#dialog-cancel');
  await page.waitForSelector('#dialog:not([open])', { state: 'attached' });
  check(await page.isVisible(snapNode), 'a cancelled delete deletes nothing');

  // Deleting the LUN names its snapshot and the clone reading through it.
  await page.click(`${lunNode} > .node button[data-action="delete-lun"]`);
  const lunBody = await page.textContent('#dialog-body');
  check(lunBody.includes('nightly') && lunBody.includes(`${lun}-test`),
    'the LUN delete confirmation names its snapshot and the clone');
  await page.click('#dialog-cancel');

  // The README's picture: the clone under its snapshot, live I/O, events.
  await page.waitForTimeout(2500);
  await page.screenshot({ path: screenshot, fullPage: true });
  check(true, 'screenshot saved to ' + screenshot);

  // Split the clone from the page; the job and its end show up.
  await page.click(`${cloneNode} > .node button[data-action="split-start"]`);
  await page.waitForSelector('#events td:has-text("split-finished")', { timeout: 60000 });
  check(true, 'the split ran and its end is in the events');
  for (const kind of ['snapshot-created', 'clone-created', 'split-started']) {
    check(await page.isVisible(`#events td:has-text("${kind}")`), `the events show ${kind}`);
  }

  // Something refused shows in the banner, with the server's sentence.
  await page.click(`${lunNode} > .node button[data-action="snapshot"]`);
  await page.fill('#dialog-input', 'nightly');
  await page.click('#dialog-ok');
  await page.waitForSelector('#banner:not([hidden])');
  const banner = await page.textContent('#banner');
  check(banner.includes('nightly'), `a refused snapshot shows the server's reason: ${banner}`);

  check(pageErrors.length === 0, 'no script errors: ' + pageErrors.join('; '));
} finally {
  await browser.close();
}
