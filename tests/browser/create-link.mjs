// Building a two-node link from the Links view: the form, then the new link streaming in
// the table and its detail (charts drawn from the live stream).
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const s = await launch();
  keep(s);
  const { page } = s;
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.click('nav a[data-view=links]');
  await page.waitForSelector('#link-db option[value=shop]', { state: 'attached' });
  await page.selectOption('#link-db', 'shop');
  await page.fill('#link-url', env('DOPPEL_TARGET'));
  await page.fill('#link-target-db', 'shop-copy');
  await page.selectOption('#link-mode', 'async');
  await page.selectOption('#link-apply', 'mirror');
  await page.click('#create-link-button');
  await page.waitForSelector('#detail:not([hidden]) h2 code');
  const id = await page.textContent('#detail h2 code');
  await page.waitForSelector(`#link-rows tr[data-link="${id}"] .s-streaming`);
  // A chart line once two snapshots arrived.
  await page.waitForSelector('#chart-tput svg path.line');
  const out = {
    id,
    state: await page.textContent(`#link-rows tr[data-link="${id}"] [data-f=state]`),
    charts: await page.$$eval('#detail svg', (svgs) => svgs.length),
    hash: await page.evaluate(() => location.hash),
  };
  await shot(page, 'links');

  return out;
});
