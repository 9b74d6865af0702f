// An Apply that replaces a link, followed without a reload: the topology's "Links, live"
// table shows the new link (its id, mode and state), not the one it replaced; the Links
// page then follows another Apply (made through the API) the same way.
import { env, launch, login, flow, call } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const token = env('DOPPEL_TOKEN');
  const target = env('DOPPEL_TARGET');
  const s = await launch();
  keep(s);
  const { page } = s;
  page.on('dialog', (d) => d.accept());
  await login(page, base, token);
  await page.waitForSelector('#view[data-view=overview]');
  // A mark on the page: a reload would wipe it (hash changes between views keep it).
  await page.evaluate(() => { window.doppelMark = 'kept'; });
  await page.evaluate(() => { location.hash = '#/topology?name=pair'; });
  const row = '#topo-links tr[data-label="a/shop -> b/shop"]';
  await page.waitForSelector(`${row} [data-f=state] .s-streaming`);
  const out = { first_id: await page.getAttribute(row, 'data-id') };
  out.first_mode = (await page.textContent(`${row} td[data-col=mode]`)).trim();

  // async -> sync in the editor: Preview says replace, Apply carries it out.
  await page.selectOption('fieldset[data-link-index="0"] [data-k="mode"]', 'sync');
  await page.click('#preview');
  await page.waitForSelector('#plan tr[data-action]');
  out.plan = await page.$$eval('#plan tr[data-action]', (trs) => trs.map((tr) => tr.dataset.action));
  await page.click('#apply');
  await page.waitForFunction(([sel, old]) => {
    const tr = document.querySelector(sel);
    return tr && tr.dataset.id && tr.dataset.id !== old && tr.querySelector('[data-f=state] .s-streaming');
  }, [row, out.first_id]);
  out.second_id = await page.getAttribute(row, 'data-id');
  out.second_mode = (await page.textContent(`${row} td[data-col=mode]`)).trim();
  out.second_id_cell = (await page.textContent(`${row} td[data-col=id]`)).trim();
  out.topology_rows = await page.$$eval('#topo-links tr', (trs) => trs.length);

  // The Links page, then an Apply from elsewhere (the API): its rows follow.
  await page.click('nav a[data-view=links]');
  await page.waitForSelector(`#link-rows tr[data-link="${out.second_id}"]`);
  out.links_before = await page.$$eval('#link-rows tr', (trs) => trs.map((tr) => tr.dataset.link));
  const applied = await call(base, token, 'POST', '/v1/tenants/default/topologies', {
    name: 'pair',
    nodes: { a: { url: base }, b: { url: target } },
    links: [{ from: { node: 'a', database: 'shop' }, to: { node: 'b', database: 'shop' }, mode: 'async' }],
  });
  out.api_plan = applied.plan.map((p) => p.action);
  await page.waitForFunction((old) => {
    const rows = [...document.querySelectorAll('#link-rows tr')];
    return rows.length === 1 && rows[0].dataset.link !== old && rows[0].querySelector('.s-streaming');
  }, out.second_id);
  out.links_after = await page.$$eval('#link-rows tr', (trs) => trs.map((tr) => tr.dataset.link));
  out.links_after_mode = (await page.textContent('#link-rows tr td[data-col=mode]')).trim();
  out.reloads = (await page.evaluate(() => window.doppelMark)) === 'kept' ? 0 : 1;
  return out;
});
