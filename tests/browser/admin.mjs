#!/usr/bin/env node
// Drives wakeway's admin page in headless Chromium (run by tests/e2e/admin.rs).
//
// Usage: node admin.mjs --base URL --key KEY --sleep ID --wake ID --user SUBSTRING --backup ID --out DIR
// In order, in one browser context: a wrong key is refused (401); the right key signs in; the filter
// (state=running, user contains SUBSTRING) narrows the table; Sleep on session --sleep turns its row
// to "sleeping"; a wake of it through the API shows up in the open page by itself (the 5 s refresh);
// the Download of backup --backup is saved and hashed; screenshots of the sessions and usage tabs
// (desktop) and of the sessions on a phone. Prints ONE JSON line with what it saw.
import { chromium } from 'playwright-core';
import { parseArgs } from 'node:util';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

const { values: a } = parseArgs({
  options: {
    base: { type: 'string' }, key: { type: 'string' }, sleep: { type: 'string' }, wake: { type: 'string' },
    user: { type: 'string' }, backup: { type: 'string' }, out: { type: 'string', default: '.' },
  },
});
const log = (...x) => console.error('[admin.mjs]', ...x);
const seen = {};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic'],
});
const context = await browser.newContext({ viewport: { width: 1440, height: 720 }, acceptDownloads: true });
const page = await context.newPage();

/** Submit the sign-in form with `key`; the document's status and text. */
async function signIn(key) {
  await page.fill('input[name=key]', key);
  const [response] = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  return { status: response.status(), text: await page.locator('main').innerText() };
}

/** The state shown in the row of session `id` ('' when it has no row). */
const stateOf = (id) => page.locator(`tr[data-id="${id}"] .pill`).innerText({ timeout: 1000 }).catch(() => '');

/** Wait (≤ `seconds`) until the row of `id` shows `state`, without reloading; how many polls it took. */
async function waitState(id, state, seconds) {
  for (let i = 0; i < seconds * 4; i++) {
    if ((await stateOf(id)) === state) return i;
    await page.waitForTimeout(250);
  }
  throw new Error(`row ${id} did not show ${state} within ${seconds} s (shows ${await stateOf(id)})`);
}

try {
  const first = await page.goto(`${a.base}/admin`);
  seen.signInStatus = first.status();
  seen.wrongKey = await signIn('not-the-key-0123456789');
  await page.screenshot({ path: path.join(a.out, 'admin-wrong-key.png') });
  seen.rightKey = await signIn(a.key);
  seen.afterSignIn = page.url();
  seen.idsAll = await page.locator('tbody#rows tr').evaluateAll((rows) => rows.map((r) => r.dataset.id));

  await page.selectOption('select[name=state]', 'running');
  await page.fill('input[name=user]', a.user);
  await Promise.all([page.waitForNavigation(), page.click('form.filters button[type=submit]')]);
  seen.filteredUrl = page.url();
  seen.idsFiltered = await page.locator('tbody#rows tr').evaluateAll((rows) => rows.map((r) => r.dataset.id));

  await page.goto(`${a.base}/admin`);
  await Promise.all([page.waitForNavigation(), page.click(`tr[data-id="${a.sleep}"] button:has-text("Sleep")`)]);
  await waitState(a.sleep, 'sleeping', 60);
  seen.afterSleep = await stateOf(a.sleep);
  seen.flash = await page.locator('.flash').innerText().catch(() => '');

  // A change made elsewhere (the API) shows up in the open page: no navigation, the script's refresh.
  let navigations = 0;
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations++; });
  const woke = await fetch(`${a.base}/session/${a.wake}/wake?wait=true`, { method: 'POST', headers: { 'x-api-key': a.key } });
  seen.apiWake = woke.status;
  await waitState(a.wake, 'running', 30);
  seen.refreshedWithoutNavigation = navigations === 0;
  await page.screenshot({ path: path.join(a.out, 'admin-sessions.png'), fullPage: true });

  await page.goto(`${a.base}/admin/backups`);
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click(`tr[data-id="${a.backup}"] a:has-text("Download")`),
  ]);
  await page.screenshot({ path: path.join(a.out, 'admin-backups.png'), fullPage: true });
  const file = path.join(a.out, 'download.zip');
  await download.saveAs(file);
  const bytes = await readFile(file);
  seen.download = { name: download.suggestedFilename(), size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), magic: bytes.subarray(0, 4).toString('hex') };

  await page.goto(`${a.base}/admin/session/${a.wake}/delete`);
  seen.confirmText = await page.locator('main').innerText();
  await page.screenshot({ path: path.join(a.out, 'admin-confirm.png'), fullPage: true });

  await page.goto(`${a.base}/admin/usage`);
  seen.usageText = await page.locator('main').innerText();
  seen.svgs = await page.locator('svg.chart').count();
  await page.screenshot({ path: path.join(a.out, 'admin-usage.png'), fullPage: true });

  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${a.base}/admin`);
  seen.phone = await page.evaluate(() => {
    const s = document.querySelector('.scroll');
    return { pageWidth: document.documentElement.scrollWidth, tableScrolls: !!s && s.scrollWidth > s.clientWidth };
  });
  await page.screenshot({ path: path.join(a.out, 'admin-phone.png'), fullPage: true });
} catch (e) {
  seen.error = String(e && e.stack || e);
  await page.screenshot({ path: path.join(a.out, 'admin-failure.png'), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
log(JSON.stringify({ ...seen, usageText: (seen.usageText || '').slice(0, 200) }));
console.log(JSON.stringify(seen));
