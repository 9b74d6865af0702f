// Plugins: upload a .wasm, see its exports and schema, fill the generated config form,
// dry-run a batch (input and output side by side), and swap it onto a logical link; then a
// resolver: local, remote and base versions in, each record's decision and merge out.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const link = env('DOPPEL_LINK');
  const s = await launch();
  keep(s);
  const { page } = s;
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.click('nav a[data-view=plugins]');
  await page.setInputFiles('#upload-file', env('DOPPEL_WASM'));
  await page.fill('#upload-name', 'eu-only');
  await page.fill('#upload-version', '1.0.0');
  await page.selectOption('#upload-role', 'filter');
  await page.click('#upload-button');
  await page.waitForSelector('#plugin-detail:not([hidden]) #config-form');
  const out = {
    title: (await page.textContent('#plugin-detail h2')).trim(),
    exports: await page.$$eval('#plugin-detail dl.facts dd:nth-of-type(2) code', (cs) => cs.map((c) => c.textContent)),
    fields: await page.$$eval('#config-form [data-cfg]', (es) => es.map((e) => `${e.dataset.cfg}:${e.dataset.kind}`)),
    listed: await page.$$eval('#plugin-list tbody tr a', (as) => as.map((a) => a.textContent)),
  };
  await page.fill('#config-form [data-cfg=prefixes]', 'eu-');
  out.config = await page.textContent('#config-preview');
  // A batch sampled from the shop database, then the pasted one back.
  const pasted = await page.inputValue('#dry-input');
  await page.selectOption('#sample-db', 'shop');
  await page.click('#sample');
  await page.waitForFunction(() => document.querySelector('#dry-input').value.includes('"o-1"'));
  out.sampled = JSON.parse(await page.inputValue('#dry-input')).map((r) => r.key);
  await page.fill('#dry-input', pasted);
  await page.click('#dry-run');
  await page.waitForSelector('#dry-output table.side');
  out.kept = await page.$$eval('#dry-output tbody tr', (rs) => rs.map((r) => r.className));
  out.summary = await page.textContent('#dry-summary');
  await shot(page, 'plugins');

  await page.selectOption('#swap-link', link);
  out.swap_preview = await page.textContent('#swap-preview');
  await page.click('#swap');
  await page.waitForFunction(() => [...document.querySelectorAll('.toast')].some((t) => t.textContent.includes('now runs')));
  out.toast = await page.$$eval('.toast', (ts) => ts.map((t) => t.textContent).join(' | '));

  await page.setInputFiles('#upload-file', env('DOPPEL_RESOLVER_WASM'));
  await page.fill('#upload-name', 'lww');
  await page.fill('#upload-version', '1');
  await page.selectOption('#upload-role', 'resolver');
  await page.click('#upload-button');
  await page.waitForFunction(() => (document.querySelector('#plugin-detail h2')?.textContent || '').startsWith('lww@1'));
  await page.waitForSelector('#dry-remote');
  await page.selectOption('#config-form [data-cfg=strategy]', '"merge"');
  await page.click('#dry-run');
  await page.waitForSelector('#dry-output tbody tr.decision-merged');
  out.resolved = await page.$$eval('#dry-output tbody tr', (rs) => rs.map((r) => [r.className, r.querySelector('td:nth-child(2) pre').textContent]));
  out.resolved_summary = await page.textContent('#dry-summary');
  out.resolver_swap = (await page.$('#swap-link')) !== null;
  await shot(page, 'plugins-resolver');
  return out;
});
