#!/usr/bin/env node
// Drives a real VS Code workbench (code-server) in Chromium through wakeway, for issue 3's proof.
// Run by tests/e2e/browser.rs; install what it needs with scripts/install-browser-test-deps.sh.
//
// Usage:
//   node tests/browser/vscode.mjs <idle|typing|reload> --url http://vs-code-<id>.localhost:PORT/ \
//     --api http://127.0.0.1:PORT --key KEY --id ID --out DIR [options]
// Every valued option can also be given as an environment variable: --url is BROWSER_TEST_URL, --render-timeout is
// BROWSER_TEST_RENDER_TIMEOUT, and so on (not WAKEWAY_*: wakeway rejects unknown WAKEWAY_ variables).
//
// Options (seconds unless said otherwise):
//   --file NAME          a file in the workspace folder, created beforehand (default notes.txt)
//   --render-timeout S   how long the workbench may take to render (default 90)
//   --sleep-deadline S   idle: give up waiting for `sleeping` this long after the render (default 300)
//   --asleep-for S       idle: how long the tab stays open once asleep (default 180)
//   --type-for S         typing: how long to type (default 240)
//   --type-every S       typing: pause between bursts (default 20)
//   --then-idle S        typing: after saving, leave the tab idle up to S s and time the sleep (default 0: don't)
//   --wake-timeout S     reload: waiting page -> workbench limit (default 180)
//   --open-first         reload: open the workbench while awake, sleep it through the API, then reload
//   --reload-after-sleep idle, typing: once the session slept, reload the open tab (waiting page -> workbench)
//   --poll-ms MS         status poll period (default 2000)
//
// Prints exactly ONE JSON line on stdout (the results, also when a step fails: {"ok": false, "error": ...});
// everything else goes to stderr. Exits 0 when the scenario ran to its end (whatever the session did),
// 1 when the browser could not do what the scenario needs, 2 on bad arguments or missing tools (the JSON says which).

import { mkdtempSync, rmSync, mkdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const t0 = Date.now();
const since = (t = Date.now()) => Math.round((t - t0) / 100) / 10;
const log = (...a) => console.error(`[vscode.mjs ${since().toFixed(1).padStart(6)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- arguments
const [scenario, ...rest] = process.argv.slice(2);
const opts = {};
for (let i = 0; i < rest.length; i++) {
  const a = rest[i];
  if (!a.startsWith('--')) die(`unexpected argument ${a}`);
  const name = a.slice(2);
  if (name === 'open-first' || name === 'reload-after-sleep') opts[name] = true;
  else opts[name] = rest[++i];
}
function opt(name, def) {
  const env = 'BROWSER_TEST_' + name.toUpperCase().replace(/-/g, '_');
  const v = opts[name] ?? process.env[env] ?? def;
  if (v === undefined) die(`missing --${name} (or ${env})`);
  return v;
}
function die(msg) {
  emit({ ok: false, error: msg });
  process.exit(2);
}

let emitted = false;
function emit(obj) {
  if (emitted) return;
  emitted = true;
  process.stdout.write(JSON.stringify(obj) + '\n');
}

if (!['idle', 'typing', 'reload'].includes(scenario)) die(`scenario must be idle, typing or reload (got ${scenario})`);
const URL_ = opt('url');
const API = opt('api').replace(/\/$/, '');
const KEY = opt('key');
const ID = opt('id');
const OUT = opt('out');
const FILE = opt('file', 'notes.txt');
const RENDER_TIMEOUT = Number(opt('render-timeout', 90)) * 1000;
const POLL_MS = Number(opt('poll-ms', 2000));
const CHROMIUM = process.env.CHROMIUM_PATH || ['/usr/bin/chromium', '/usr/lib/chromium/chromium'].find(existsSync);
mkdirSync(OUT, { recursive: true });

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  die(`playwright-core is not installed in tests/browser (run scripts/install-browser-test-deps.sh): ${e.message}`);
}
if (!CHROMIUM) die('chromium not found at /usr/bin/chromium (run scripts/install-browser-test-deps.sh)');

// ---------------------------------------------------------------- status polling
// Every poll is kept; `transitions` lists each change of state with the time (s since start).
class Poller {
  constructor() {
    this.polls = [];
    this.transitions = [];
    this.errors = 0;
    this.running = false;
  }
  async once() {
    const at = Date.now();
    try {
      const r = await fetch(`${API}/session/${ID}/status`, {
        headers: { 'X-API-Key': KEY },
        signal: AbortSignal.timeout(10_000),
      });
      if (r.status !== 200) {
        this.errors++;
        log(`status answered ${r.status}`);
        return null;
      }
      const s = await r.json();
      const p = {
        t: since(at),
        at: new Date(at).toISOString(),
        state: s.state,
        last_activity: s.last_activity ?? null,
        activity_source: s.activity_source ?? null,
        open_connections: s.open_connections ?? null,
        slept_at: s.session?.slept_at ?? null,
      };
      this.polls.push(p);
      const last = this.transitions[this.transitions.length - 1];
      if (!last || last.state !== p.state) {
        this.transitions.push({ t: p.t, at: p.at, state: p.state });
        log(`state ${p.state} (last_activity ${p.last_activity}, source ${p.activity_source}, open ${p.open_connections})`);
      }
      return p;
    } catch (e) {
      this.errors++;
      log(`status failed: ${e.message}`);
      return null;
    }
  }
  start() {
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        const started = Date.now();
        await this.once();
        await sleep(Math.max(0, POLL_MS - (Date.now() - started)));
      }
    })();
  }
  async stop() {
    this.running = false;
    await this.loop;
  }
  last() {
    return this.polls[this.polls.length - 1];
  }
  statesSeen() {
    return [...new Set(this.polls.map((p) => p.state))];
  }
  // Distinct (last_activity, source) values, to see what counted as activity.
  activities() {
    const out = [];
    for (const p of this.polls) {
      const l = out[out.length - 1];
      if (!l || l.last_activity !== p.last_activity) out.push({ t: p.t, last_activity: p.last_activity, source: p.activity_source });
    }
    return out;
  }
  summary() {
    return { transitions: this.transitions, states_seen: this.statesSeen(), activities: this.activities(), polls: this.polls.length, poll_errors: this.errors };
  }
}

// ---------------------------------------------------------------- browser
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

async function launch() {
  // Playwright refuses --user-data-dir in args: a persistent context on a fresh folder is the same thing.
  const profile = mkdtempSync(join(tmpdir(), `wakeway-chromium-${scenario}-`));
  log(`launching ${CHROMIUM} (profile ${profile})`);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 800 },
    timeout: 60_000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => log(`page error: ${String(e.message).slice(0, 200)}`));
  page.on('crash', () => log('page crashed'));
  // Every request the tab makes (HTTP and WebSocket), to see what an open tab sends while asleep.
  const requests = [];
  const mark = (kind, url, extra = {}) => {
    const u = new URL(url);
    requests.push({ t: since(), kind, path: (u.pathname + u.search).slice(0, 160), ...extra });
  };
  page.on('request', (r) => mark('http', r.url(), { method: r.method(), type: r.resourceType(), navigation: r.isNavigationRequest() }));
  page.on('websocket', (ws) => mark('websocket', ws.url()));
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, page, close, requests };
}

const WORKBENCH = '.monaco-workbench';

async function openWorkbench(page) {
  const start = Date.now();
  log(`opening ${URL_}`);
  await page.goto(URL_, { waitUntil: 'domcontentloaded', timeout: RENDER_TIMEOUT });
  await page.waitForSelector(WORKBENCH, { timeout: Math.max(1000, RENDER_TIMEOUT - (Date.now() - start)) });
  const rendered = Date.now();
  log(`workbench rendered in ${((rendered - start) / 1000).toFixed(1)} s`);
  return { start, rendered };
}

// The Explorer row of `name` (the explorer view is open by default when a folder is open).
function explorerRow(page, name) {
  return page.locator(`.explorer-folders-view .monaco-list-row[aria-label^="${name}"], .explorer-folders-view .monaco-list-row:has(.label-name:text-is("${name}"))`).first();
}

async function shot(page, name) {
  const path = join(OUT, name);
  await page.screenshot({ path }).catch((e) => log(`screenshot ${name} failed: ${e.message}`));
  return path;
}

// Open FILE in an editor: Quick Open (Ctrl+P), falling back to a double click in the Explorer.
async function openFile(page) {
  const tab = page.locator(`.tabs-container .tab[data-resource-name="${FILE}"], .tabs-container .tab[aria-label^="${FILE}"]`).first();
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      await page.locator(WORKBENCH).click({ position: { x: 640, y: 400 }, timeout: 5000 }).catch(() => {});
      await page.keyboard.press('Escape');
      await page.keyboard.press('Control+P');
      const input = page.locator('.quick-input-widget input');
      await input.waitFor({ state: 'visible', timeout: 15_000 });
      await input.fill(FILE);
      const pick = page.locator(`.quick-input-widget .monaco-list-row[aria-label*="${FILE}"]`).first();
      await pick.waitFor({ state: 'visible', timeout: 20_000 });
      await page.keyboard.press('Enter');
      await tab.waitFor({ state: 'visible', timeout: 15_000 });
      log(`opened ${FILE} with Quick Open (attempt ${attempt})`);
      return 'quick-open';
    } catch (e) {
      log(`quick open attempt ${attempt} failed: ${e.message.split('\n')[0]}`);
      await page.keyboard.press('Escape').catch(() => {});
    }
    try {
      const row = explorerRow(page, FILE);
      await row.waitFor({ state: 'visible', timeout: 10_000 });
      await row.dblclick();
      await tab.waitFor({ state: 'visible', timeout: 15_000 });
      log(`opened ${FILE} from the Explorer (attempt ${attempt})`);
      return 'explorer';
    } catch (e) {
      log(`explorer attempt ${attempt} failed: ${e.message.split('\n')[0]}`);
    }
  }
  throw new Error(`could not open ${FILE} in an editor`);
}

// The text area of the active editor of FILE.
function editor(page) {
  return page.locator('.editor-group-container.active .editor-instance .monaco-editor').first();
}

// ---------------------------------------------------------------- scenarios

// Navigate (a fresh visit, or a reload of the open tab) to a sleeping workspace: the waiting page
// must come at once (screenshot `shotName`), then reload itself into the workbench, with FILE in
// the Explorer. Throws only when the workbench never renders.
async function throughWaitingPage(page, how, shotName, wakeTimeout) {
  const r = {};
  const navStart = Date.now();
  if (how === 'reload') await page.reload({ waitUntil: 'domcontentloaded', timeout: 30_000 });
  else await page.goto(URL_, { waitUntil: 'domcontentloaded', timeout: 30_000 });
  const waitingAt = Date.now();
  const title = await page.title().catch(() => '');
  const text = await page.locator('body').innerText({ timeout: 5000 }).catch(() => '');
  r.waiting_page_seen = /Waking up your workspace/.test(text);
  r.waiting_page_title = title;
  r.navigation_to_waiting_page_s = (waitingAt - navStart) / 1000;
  r.screenshot = await shot(page, shotName);
  log(`${how}: waiting page ${r.waiting_page_seen ? 'seen' : 'NOT seen'} after ${r.navigation_to_waiting_page_s} s (title "${title}")`);
  if (!r.waiting_page_seen) log(`page text: ${text.slice(0, 300)}`);
  await page.waitForSelector(WORKBENCH, { timeout: wakeTimeout });
  const wbAt = Date.now();
  r.workbench_loaded = true;
  r.navigation_to_workbench_s = (wbAt - navStart) / 1000;
  r.waiting_page_to_workbench_s = (wbAt - waitingAt) / 1000;
  log(`workbench ${r.navigation_to_workbench_s} s after the ${how}`);
  r.file_in_explorer = await explorerRow(page, FILE).waitFor({ state: 'visible', timeout: 60_000 }).then(() => true, () => false);
  r.explorer_seen_s = (Date.now() - navStart) / 1000;
  log(`${FILE} in the Explorer: ${r.file_in_explorer}`);
  await shot(page, shotName.replace('waiting-page', 'workbench-after-wake'));
  return r;
}
async function idle() {
  const sleepDeadline = Number(opt('sleep-deadline', 300)) * 1000;
  const asleepFor = Number(opt('asleep-for', 180)) * 1000;
  const poller = new Poller();
  const { page, close, requests } = await launch();
  const result = { scenario: 'idle' };
  try {
    poller.start();
    const { start, rendered } = await openWorkbench(page);
    result.workbench_render_s = (rendered - start) / 1000;
    result.workbench_rendered_at = new Date(rendered).toISOString();
    // Do nothing: the tab stays open, focused and idle.
    let sleptSeen = null;
    while (Date.now() - rendered < sleepDeadline) {
      const p = poller.last();
      if (p && p.state === 'sleeping') {
        sleptSeen = p;
        break;
      }
      await sleep(500);
    }
    if (!sleptSeen) {
      result.slept = false;
      result.note = `still ${poller.last()?.state} ${sleepDeadline / 1000} s after the workbench rendered, tab open and idle`;
      log(result.note);
      await shot(page, 'idle-never-slept.png');
    } else {
      result.slept = true;
      // The last activity recorded before the sleep, and the exact sleep time from the session.
      const awake = poller.polls.filter((p) => p.state !== 'sleeping' && p.t <= sleptSeen.t);
      result.last_activity_before_sleep = awake.length ? awake[awake.length - 1].last_activity : sleptSeen.last_activity;
      result.slept_at = sleptSeen.slept_at ?? sleptSeen.at;
      result.sleep_seen_s_after_render = (Date.parse(sleptSeen.at) - rendered) / 1000;
      result.slept_s_after_render = (Date.parse(result.slept_at) - rendered) / 1000;
      result.slept_s_after_last_activity = (Date.parse(result.slept_at) - Date.parse(result.last_activity_before_sleep)) / 1000;
      log(`asleep ${result.slept_s_after_render} s after the render, ${result.slept_s_after_last_activity} s after the last activity; keeping the tab open ${asleepFor / 1000} s`);
      const asleepSince = Date.now();
      await sleep(asleepFor);
      const after = poller.polls.filter((p) => p.t >= sleptSeen.t);
      result.asleep_observed_s = (Date.now() - asleepSince) / 1000;
      result.states_after_sleep = [...new Set(after.map((p) => p.state))];
      result.stayed_asleep = result.states_after_sleep.every((s) => s === 'sleeping');
      result.page_still_open = !page.isClosed();
      result.tab_requests_after_sleep = requests.filter((r) => r.t >= sleptSeen.t - POLL_MS / 1000).slice(0, 60);
      await shot(page, 'idle-tab-after-sleep.png');
      if (opts['reload-after-sleep']) {
        result.reload_after_sleep = await throughWaitingPage(page, 'reload', 'idle-waiting-page.png', Number(opt('wake-timeout', 180)) * 1000);
      }
    }
    await poller.stop();
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = e.message;
    await shot(page, 'idle-error.png');
  } finally {
    await poller.stop();
    Object.assign(result, poller.summary());
    await close();
  }
  return result;
}

async function typing() {
  const typeFor = Number(opt('type-for', 240)) * 1000;
  const every = Number(opt('type-every', 20)) * 1000;
  const poller = new Poller();
  const { page, close, requests } = await launch();
  const result = { scenario: 'typing', file: FILE, bursts: [] };
  try {
    poller.start();
    const { start, rendered } = await openWorkbench(page);
    result.workbench_render_s = (rendered - start) / 1000;
    result.opened_with = await openFile(page);
    const ed = editor(page);
    await ed.click({ timeout: 10_000 });
    await page.keyboard.press('Control+End');
    // Letters and spaces only: nothing for auto-closing, suggestions or indentation to change.
    let typed = ' ';
    await page.keyboard.type(' ', { delay: 30 });
    // A burst at 0, every, 2*every, ... up to type-for inclusive: the user types for the whole window.
    const typingStart = Date.now();
    for (let i = 0; i * every <= typeFor; i++) {
      await sleep(Math.max(0, typingStart + i * every - Date.now()));
      const burstAt = Date.now();
      const word = `word${String.fromCharCode(97 + (i % 26))}${i} `;
      await ed.click({ timeout: 10_000 }).catch((e) => log(`editor click failed: ${e.message.split('\n')[0]}`));
      await page.keyboard.press('Control+End');
      await page.keyboard.type(word, { delay: 60 });
      await page.keyboard.press('Escape');
      typed += word;
      result.bursts.push({ t: since(burstAt), text: word });
      log(`typed "${word.trim()}" (state ${poller.last()?.state})`);
    }
    result.typing_s = (Date.now() - typingStart) / 1000;
    const lastKeystroke = Date.now();
    await page.keyboard.press('Control+S');
    // Saved when the tab is no longer dirty.
    const dirty = page.locator('.tabs-container .tab.dirty');
    await dirty.waitFor({ state: 'detached', timeout: 20_000 }).catch(() => log('tab still dirty 20 s after Ctrl+S'));
    result.saved_clean = (await dirty.count()) === 0;
    result.typed = typed;
    result.saved_path = FILE;
    result.last_keystroke_at = new Date(lastKeystroke).toISOString();
    await shot(page, 'typing-after-save.png');
    await poller.once();
    const typingPolls = [...poller.polls];
    result.states_while_typing = [...new Set(typingPolls.map((p) => p.state))];
    result.slept_while_typing = result.states_while_typing.some((s) => s === 'sleeping' || s === 'stopping');
    // Then leave the tab idle: how long from the last keystroke to the sleep?
    const thenIdle = Number(opt('then-idle', 0)) * 1000;
    if (thenIdle > 0) {
      log(`leaving the tab idle up to ${thenIdle / 1000} s after the last keystroke`);
      let slept = null;
      while (!slept && Date.now() - lastKeystroke < thenIdle) {
        await sleep(500);
        const p = poller.last();
        if (p && p.state === 'sleeping') slept = p;
      }
      result.slept_after_typing = !!slept;
      if (slept) {
        const sleptAt = Date.parse(slept.slept_at ?? slept.at);
        result.last_keystroke_to_sleep_s = (sleptAt - lastKeystroke) / 1000;
        const awake = poller.polls.filter((p) => p.state !== 'sleeping' && p.t <= slept.t);
        result.last_activity_before_sleep = awake.length ? awake[awake.length - 1].last_activity : null;
        log(`asleep ${result.last_keystroke_to_sleep_s} s after the last keystroke`);
        if (opts['reload-after-sleep']) {
          // The saved file must still be there after the wake.
          result.reload_after_sleep = await throughWaitingPage(page, 'reload', 'typing-waiting-page.png', Number(opt('wake-timeout', 180)) * 1000);
        }
      } else {
        log(`not asleep ${thenIdle / 1000} s after the last keystroke (state ${poller.last()?.state})`);
      }
    }
    await poller.stop();
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = e.message;
    await shot(page, 'typing-error.png');
  } finally {
    await poller.stop();
    Object.assign(result, poller.summary());
    await close();
  }
  return result;
}

async function reload() {
  const wakeTimeout = Number(opt('wake-timeout', 180)) * 1000;
  const poller = new Poller();
  const { page, close, requests } = await launch();
  const result = { scenario: 'reload', file: FILE };
  try {
    poller.start();
    let sleepCallT = 0;
    if (opts['open-first']) {
      const { start, rendered } = await openWorkbench(page);
      result.first_workbench_render_s = (rendered - start) / 1000;
      result.file_in_explorer_before = await explorerRow(page, FILE).waitFor({ state: 'visible', timeout: 30_000 }).then(() => true, () => false);
      log('putting the session to sleep through the API, tab open');
      sleepCallT = since();
      const r = await fetch(`${API}/session/${ID}/sleep`, { method: 'POST', headers: { 'X-API-Key': KEY }, signal: AbortSignal.timeout(60_000) });
      if (r.status !== 200) throw new Error(`POST /session/${ID}/sleep answered ${r.status}: ${await r.text()}`);
      // Let the open tab notice and try its automatic reconnects for a while.
      await sleep(8000);
    }
    const before = await poller.once();
    result.state_before_navigation = before?.state;
    if (opts['open-first']) result.tab_requests_while_asleep = requests.filter((r) => r.t >= sleepCallT).slice(0, 60);
    Object.assign(result, await throughWaitingPage(page, opts['open-first'] ? 'reload' : 'goto', 'waiting-page.png', wakeTimeout));
    await poller.once();
    await poller.stop();
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = e.message;
    await shot(page, 'reload-error.png');
  } finally {
    await poller.stop();
    Object.assign(result, poller.summary());
    await close();
  }
  return result;
}

const run = { idle, typing, reload }[scenario];
let result;
try {
  result = await run();
} catch (e) {
  result = { scenario, ok: false, error: `${e.message}` };
}
result.total_s = since();
emit(result);
process.exit(result.ok ? 0 : 1);
