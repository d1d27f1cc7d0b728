#!/usr/bin/env node
// Loads a workspace over HTTPS through wakeway in Debian's Chromium, trusting only the CA in the NSS
// database under $HOME/.pki/nssdb (no certificate-error flags), then echoes a message over wss://.
// Run by tests/e2e/tls.rs.  Usage: node tests/browser/https.mjs <https URL> <host-resolver rule>
// Prints one JSON line: {"ok", "status", "title", "protocol", "echo"} or {"ok": false, "error"}.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, resolverRule] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), 'wakeway-chromium-https-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage', `--host-resolver-rules=${resolverRule}`,
    ],
    timeout: 60_000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const response = await page.goto(url, { waitUntil: 'load', timeout: 60_000 });
  const title = await page.title();
  const result = await page.evaluate(async () => {
    const ws = new WebSocket(`wss://${location.host}/ws`);
    // Ends on what the socket does: the echo, an error, or a close before the echo (a socket
    // closed after it opened fires no error event: code 1006 is a tunnel torn down). The timer
    // only guards against a hang, as the other steps' 60 s.
    return await new Promise((resolve) => {
      let opened = false;
      const done = (result) => { clearTimeout(timer); resolve(result); };
      const timer = setTimeout(() => resolve({ echo: null, error: `no echo within 60 s (opened: ${opened})` }), 60_000);
      ws.onopen = () => { opened = true; ws.send('hello over wss'); };
      ws.onmessage = (m) => { done({ echo: m.data }); ws.close(); };
      ws.onerror = () => done({ echo: null, error: 'websocket error' });
      ws.onclose = (e) => done({ echo: null, error: `closed before the echo (code ${e.code}, opened: ${opened})` });
    });
  });
  const protocol = await page.evaluate(() => location.protocol);
  console.log(JSON.stringify({ ok: true, status: response?.status() ?? 0, title, protocol, ...result }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e?.message ?? e).slice(0, 500) }));
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
