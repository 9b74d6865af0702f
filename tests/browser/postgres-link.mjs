// A link into PostgreSQL built in the Links view: the PostgreSQL target choice (connection
// string, password, schema, create tables, on error), the json-columns stage it offers,
// the new link streaming with its target shown masked; the password is nowhere on the page.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const password = env('DOPPEL_PG_PASSWORD');
  const s = await launch();
  keep(s);
  const { page } = s;
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.click('nav a[data-view=links]');
  await page.waitForSelector('#link-db option[value=shop]', { state: 'attached' });
  await page.selectOption('#link-db', 'shop');
  await page.selectOption('#link-kind', 'postgres');
  await page.waitForSelector('#link-pg:visible');
  const nodeFieldsHidden = await page.isHidden('#link-url');
  // The stage the form offers for PostgreSQL: the built-in row mapping.
  const offered = JSON.parse(await page.inputValue('#link-stages'));
  await page.fill('#link-pg', env('DOPPEL_PG_URL'));
  await page.fill('#link-pg-password', password);
  await page.fill('#link-pg-schema', 'public');
  await page.selectOption('#link-on-error', 'quarantine');
  await page.fill('#link-stages', JSON.stringify([{ plugin: 'json-columns@1.0.0', config: { files: { orders: { table: 'orders', key: 'id', columns: { total: 'bigint' } } } } }]));
  await page.locator('#create-link').scrollIntoViewIfNeeded();
  await shot(page, 'postgres-link-form');
  await page.click('#create-link-button');
  await page.waitForSelector('#detail:not([hidden]) h2 code');
  const id = await page.textContent('#detail h2 code');
  await page.waitForSelector(`#link-rows tr[data-link="${id}"] .s-streaming`);
  const out = {
    id,
    node_fields_hidden: nodeFieldsHidden,
    offered: offered[0]?.plugin,
    state: await page.textContent(`#link-rows tr[data-link="${id}"] [data-f=state]`),
    row: await page.textContent(`#link-rows tr[data-link="${id}"] [data-col=link]`),
    target: await page.textContent('#detail dl.facts dd:nth-of-type(2)'),
    fields_left: [await page.inputValue('#link-pg'), await page.inputValue('#link-pg-password')],
    hash: await page.evaluate(() => location.hash),
  };
  await shot(page, 'postgres-link');
  // Nowhere on the page, nor in any field, once the link exists.
  const html = await page.content();
  const values = await page.$$eval('input, textarea', (els) => els.map((e) => e.value).join('\n'));
  out.password_shown = html.includes(password) || values.includes(password);
  return out;
});
