// Shared by the console's browser flows: headless Debian Chromium through playwright-core,
// login, bounded waits and screenshots. Each flow prints one JSON line (its findings) on
// stdout and exits 0, or prints the error and exits 1. tests/console.rs runs the flows
// against real doppel nodes and asserts on that JSON and on the server's state.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

export const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is not set`);
  return v;
};

/** Every wait in the flows is a condition with this deadline. */
export const WAIT_MS = 20000;

export async function launch({ width = 1280, height = 800 } = {}) {
  // playwright gives every launch a fresh, empty profile of its own (it refuses
  // --user-data-dir in args).
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width, height } });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));
  // Failed requests (the 401 of a bad token, say) are the flows' business, not page errors.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(m.text()); });
  const close = async () => {
    await browser.close();
  };
  return { browser, context, page, problems, close };
}

export async function login(page, base, token) {
  await page.goto(base + '/');
  await page.fill('#token-input', token);
  await page.click('#login-form button[type=submit]');
}

/** Saves a screenshot when DOPPEL_SCREENSHOTS names a folder (docs/console). */
export async function shot(page, name) {
  const dir = process.env.DOPPEL_SCREENSHOTS;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, name + '.png'), fullPage: false });
}

/** The API, from the flow itself: the status and the JSON answer, whatever the status. */
export async function request(base, token, method, path, body) {
  const r = await fetch(base + path, {
    method,
    headers: { authorization: 'Bearer ' + token, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = text; }
  return { status: r.status, json, text };
}

/** The API, from the flow itself (to change server state while the page watches). */
export async function call(base, token, method, path, body) {
  const r = await request(base, token, method, path, body);
  if (r.status < 200 || r.status > 299) throw new Error(`${method} ${path}: ${r.status} ${r.text}`);
  return r.json;
}

/** Polls `cond` (async, truthy when met) until it holds or WAIT_MS pass; answers its value. */
export async function until(what, cond, { timeout = WAIT_MS, every = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await cond();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Runs a flow: prints its result as one JSON line; any failure exits 1. */
export async function flow(fn) {
  let session;
  try {
    const result = await fn((s) => { session = s; });
    if (session && session.problems.length) result.page_errors = session.problems;
    console.log(JSON.stringify(result));
    if (session) await session.close();
    process.exit(0);
  } catch (e) {
    console.error(e && e.stack ? e.stack : String(e));
    if (session) {
      console.error('page errors:', JSON.stringify(session.problems));
      await session.close().catch(() => {});
    }
    process.exit(1);
  }
}
