// Verify and repair a mirror link from its detail: verify lists the blocks the test
// corrupted on the replica, per file; one block is repaired (before and after shown),
// then the rest of its file; verify again finds the replica identical.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const link = env('DOPPEL_LINK');
  const s = await launch();
  keep(s);
  const { page } = s;
  const differing = (sel) => page.$$eval(`${sel} tr[data-file]`, (rs) => rs.map((r) => [r.dataset.file,
    [...r.querySelectorAll('.blocks [data-repair-block], .blocks [data-block]')].map((b) => Number(b.dataset.repairBlock ?? b.dataset.block))]));
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.evaluate((id) => { location.hash = `#/links?id=${encodeURIComponent(id)}`; }, link);
  await page.waitForSelector('#detail:not([hidden]) #verify-run');
  await page.click('#verify-run');
  await page.waitForSelector('#verify-out #verify-report');
  const out = {
    identical: await page.getAttribute('#verify-report', 'data-identical'),
    count: await page.getAttribute('#verify-report [data-differing]', 'data-differing'),
    found: await differing('#verify-report'),
    repair_all_button: await page.$$eval('#verify-report button[data-repair-all]', (b) => b.length),
  };
  await page.evaluate(() => document.querySelector('#verify').scrollIntoView({ block: 'start' }));
  await page.evaluate(() => window.scrollBy(0, -70));
  await shot(page, 'verify');

  // One block: the last differing block of the first file.
  const [file, blocks] = out.found[0];
  const block = blocks[blocks.length - 1];
  out.repaired_one = [file, block];
  await page.click(`#verify-report button[data-repair-file="${file}"][data-repair-block="${block}"]`);
  await page.waitForSelector('#repair-result');
  out.one = {
    repaired: (await page.textContent('#repaired-blocks')).trim(),
    before: await differing('#repair-before'),
    after: await differing('#repair-after'),
    shown: await differing('#verify-report'),
  };
  await page.evaluate(() => document.querySelector('#verify').scrollIntoView({ block: 'start' }));
  await page.evaluate(() => window.scrollBy(0, -70));
  await shot(page, 'repair');

  // The rest of that file.
  await page.click(`#verify-report tr[data-file="${file}"] button[data-repair-file]:not([data-repair-block])`);
  await page.waitForSelector('#verify-report[data-identical=true]');
  out.file = {
    repaired: (await page.textContent('#repaired-blocks')).trim(),
    before: await differing('#repair-before'),
    after_identical: await page.getAttribute('#repair-after', 'data-identical'),
  };

  // Verify again.
  await page.click('#verify-run');
  await page.waitForSelector('#verify-out #verify-report');
  out.again = await page.getAttribute('#verify-report', 'data-identical');
  out.repair_result_cleared = await page.$$eval('#repair-result', (r) => r.length) === 0;
  return out;
});
