#!/usr/bin/env node
// Drives wakeway's OIDC sign-in in headless Chromium (run by tests/e2e/oidc.rs).
//
// Usage: node oidc.mjs --issuer URL --steps JSON [--out DIR]
// Steps run in order in ONE browser context (cookies carry over). Each step is an object:
//   open: URL to navigate to          click: a selector to click instead
//   login: account to type at the provider's login form (any password); absent: the form is not filled
//   deny: true → press Cancel at the provider      confirm: true → confirm the provider's logout page
//   screenshot: file name (in --out) taken at the end
//   replay: "same" opens the last callback URL the provider sent the browser to again; "tamper-state" with its
//   state changed
//   wait: milliseconds to wait first (on the page the last step left)
//   control: a test control of the provider POSTed first (e.g. "tamper?mode=exp", see oidc-provider.mjs)
//   eval: JavaScript run in the page (after open/click), e.g. to submit a form an older page would have held;
//   navigates: true → the navigation `eval` starts is waited for
//   title: wait (≤ 60 s) until the page title is this (e.g. "testspace", through the waiting page)
//   text_has: wait (≤ 60 s) until the page's text contains this, without reloading (live updates)
// Prints ONE JSON line: {"steps":[{url,status,title,h1,text,provider,started,ended}]}; `provider` counts the
// requests to the issuer's origin during the step, `status` is the last non-redirect document status, `started`
// and `ended` are Date.now() around the step.
import { chromium } from 'playwright-core';
import { parseArgs } from 'node:util';
import path from 'node:path';

const { values: a } = parseArgs({
  options: { issuer: { type: 'string' }, steps: { type: 'string' }, out: { type: 'string', default: '.' } },
});
const issuer = new URL(a.issuer).origin;
const steps = JSON.parse(a.steps);
const log = (...x) => console.error('[oidc.mjs]', ...x);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic'],
});
const context = await browser.newContext();
const page = await context.newPage();
let provider = 0;
let status = null;
let callback = null;
page.on('request', (r) => {
  if (r.url().startsWith(issuer)) provider++;
  if (r.url().includes('/oauth/callback?')) callback = r.url();
});
page.on('response', (r) => {
  if (r.request().isNavigationRequest() && r.frame() === page.mainFrame() && (r.status() < 300 || r.status() >= 400)) {
    status = r.status();
  }
});

const atProvider = () => page.url().startsWith(issuer);
const count = async (sel) => page.locator(sel).count().catch(() => 0);

async function step(s) {
  provider = 0;
  status = null;
  const started = Date.now();
  if (s.control) {
    const r = await fetch(`${issuer}/__control/${s.control}`, { method: 'POST' });
    if (!r.ok) throw new Error(`control ${s.control}: ${r.status}`);
  }
  if (s.wait) await page.waitForTimeout(s.wait);
  if (s.replay) {
    const again = new URL(callback);
    if (s.replay === 'tamper-state') again.searchParams.set('state', again.searchParams.get('state') + 'x');
    s.open = again.toString();
  }
  if (s.open) await page.goto(s.open, { waitUntil: 'domcontentloaded' }).catch((e) => log('goto', e.message));
  if (s.click) {
    await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }).catch(() => {}), page.click(s.click)]);
  }
  if (s.eval && s.navigates) {
    await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }).catch(() => {}), page.evaluate(s.eval)]);
  } else if (s.eval) {
    await page.evaluate(s.eval);
  }
  let typed = false;
  for (let i = 0; i < 120 && atProvider(); i++) {
    if (await count('input[name=login]')) {
      if (s.deny) {
        await page.click('text=[ Cancel ]');
      } else if (s.login && !typed) {
        typed = true;
        await page.fill('input[name=login]', s.login);
        await page.fill('input[name=password]', 'anything');
        await Promise.all([page.waitForLoadState('domcontentloaded'), page.click('button[type=submit]')]);
      } else if (!s.login) {
        break; // the test expected no login form
      }
    } else if (s.confirm && (await count('button[value=yes]'))) {
      await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }).catch(() => {}), page.click('button[value=yes]')]);
    } else if (await count('input[name=prompt][value=consent]')) {
      await page.click(s.deny ? 'text=[ Cancel ]' : 'button[type=submit]');
    }
    await page.waitForTimeout(250);
  }
  await page.waitForLoadState('domcontentloaded').catch(() => {});
  if (s.title) {
    for (let i = 0; i < 240 && (await page.title().catch(() => '')) !== s.title; i++) await page.waitForTimeout(250);
  }
  if (s.text_has) {
    for (let i = 0; i < 240 && !(await page.locator('body').innerText().catch(() => '')).includes(s.text_has); i++) {
      await page.waitForTimeout(250);
    }
  }
  if (s.screenshot) await page.screenshot({ path: path.join(a.out, s.screenshot), fullPage: true });
  const h1 = await page.locator('h1').first().innerText().catch(() => '');
  const text = await page.locator('body').innerText().catch(() => '');
  const title = await page.title().catch(() => '');
  const result = { url: page.url(), status, title, h1, text, provider, started, ended: Date.now() };
  log(JSON.stringify({ ...result, text: text.slice(0, 200) }));
  return result;
}

const results = [];
try {
  for (const s of steps) results.push(await step(s));
} finally {
  await browser.close();
}
console.log(JSON.stringify({ steps: results }));
