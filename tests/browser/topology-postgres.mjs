// A topology with a PostgreSQL target in the Topology view: the graph draws PostgreSQL as
// a box of its own with the schema, the link into it streaming; the editor shows the
// connection string masked, and a Preview of the document as shown keeps every link
// (the stored password is kept). The password is nowhere on the page.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const password = env('DOPPEL_PG_PASSWORD');
  const s = await launch();
  keep(s);
  const { page } = s;
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.evaluate(() => { location.hash = '#/topology?name=pg'; });
  await page.waitForSelector('.t-node.postgres');
  await page.waitForSelector('.t-link[data-link="1"].st-streaming');
  // The live table has both links (its rows are drawn apart from the graph).
  await page.waitForFunction(() => document.querySelectorAll('#topo-links tr[data-label]').length === 2);
  const out = {
    pg_box: await page.getAttribute('.t-node.postgres', 'aria-label'),
    pg_rows: await page.$$eval('.t-node.postgres .n-db', (els) => els.map((e) => e.textContent.trim())),
    pg_link: await page.getAttribute('.t-link[data-link="1"]', 'aria-label'),
    editor_conn: await page.inputValue('fieldset[data-link-index="1"] [data-k="to.postgres"]'),
    editor_schema: await page.inputValue('fieldset[data-link-index="1"] [data-k="to.schema"]'),
    failover_buttons: await page.$$eval('#topo-links button[data-failover-node]', (bs) => bs.length),
  };
  await page.locator('.topology-graph').scrollIntoViewIfNeeded();
  await shot(page, 'topology-postgres');
  await page.click('#preview');
  await page.waitForSelector('#plan tr[data-action]');
  out.plan = await page.$$eval('#plan tr[data-action]', (trs) => trs.map((tr) => tr.dataset.action));
  const html = await page.content();
  const values = await page.$$eval('input, textarea', (els) => els.map((e) => e.value).join('\n'));
  out.password_shown = html.includes(password) || values.includes(password);
  return out;
});
