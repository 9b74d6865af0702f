// Login: a malformed token and an expired one are refused with the server's own problem;
// a good one opens the overview with the tenant and role. Then the data browser: a scan,
// a lookup by alternate key, and a record's log.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const s = await launch();
  keep(s);
  const { page } = s;
  const out = {};

  await login(page, base, 'not-a-jwt');
  await page.waitForSelector('#login-error .problem');
  out.bad_code = await page.textContent('#login-error .problem code');
  out.bad_visible_login = await page.isVisible('#token-input');

  await page.fill('#token-input', env('DOPPEL_EXPIRED_TOKEN'));
  await page.click('#login-form button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#login-error code')?.textContent === 'token-expired');
  out.expired_code = await page.textContent('#login-error .problem code');
  out.expired_title = await page.textContent('#login-error .problem strong');
  await shot(page, 'login');

  await page.fill('#token-input', env('DOPPEL_TOKEN'));
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#view[data-view=overview]');
  await page.waitForFunction(() => document.querySelector('#st-dbs')?.textContent !== '–');
  out.role = (await page.textContent('#who .role')).trim();
  out.tenants = await page.$$eval('#tenant option', (os) => os.map((o) => o.value));
  out.databases = await page.textContent('#st-dbs');
  out.live = await page.getAttribute('#live', 'data-state');

  // Data browser.
  await page.click('nav a[data-view=data]');
  await page.waitForSelector('#db option', { state: 'attached' });
  await page.fill('#range-from', 'o-');
  await page.click('#by-range button');
  await page.waitForSelector('#results table.records');
  out.scanned = await page.$$eval('#results tbody tr', (rs) => rs.map((r) => r.dataset.key));
  await page.selectOption('#alt-name', 'customer');
  await page.fill('#alt-value', 'ann');
  await page.click('#by-alt button');
  await page.waitForFunction(() => document.querySelector('#result-note')?.textContent.includes('customer = ann'));
  out.by_alt = await page.$$eval('#results tbody tr', (rs) => rs.map((r) => r.dataset.key));
  await page.click('#results button[data-history]');
  await page.waitForSelector('#history table.log');
  out.history_kinds = await page.$$eval('#history tbody tr td:nth-child(3)', (cs) => cs.map((c) => c.textContent));
  // Every date the same way: year first, 24 hours, milliseconds.
  out.history_when = await page.$$eval('#history tbody tr td:nth-child(4)', (cs) => cs.map((c) => c.textContent));
  await shot(page, 'data');
  // A key that is not there: the refusal, under a heading that names that key (not the
  // previous query).
  await page.fill('#key-input', 'o-404');
  await page.click('#by-key button');
  await page.waitForSelector('#results .problem');
  out.missing_note = (await page.textContent('#result-note')).trim();
  out.missing_code = (await page.textContent('#results .problem code')).trim();
  return out;
});
