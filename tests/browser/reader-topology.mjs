// A reader sees the topology graph and its live links, the dead letters and the
// databases, but none of the buttons its role may not use: no Preview / Apply or editor,
// no Fail over, no re-drive, edit or drop, no snapshot, promote or restore.
import { env, launch, login, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const link = env('DOPPEL_LINK');
  const s = await launch();
  keep(s);
  const { page } = s;
  const go = (hash) => page.evaluate((h) => { location.hash = h; }, hash);
  const count = (sel) => page.$$eval(sel, (els) => els.length);
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  const out = { role: (await page.textContent('#who .role')).trim() };

  await go('#/topology?name=q');
  await page.waitForSelector('#topo-list tr[data-topology="q"]');
  await page.waitForSelector('svg.topology-graph g.t-link[data-link="0"].st-streaming');
  await page.waitForSelector('#topo-links tr[data-label] [data-f=state] .pill');
  out.graph_links = await count('svg.topology-graph g.t-link');
  out.live_rows = await count('#topo-links tr[data-label]');
  out.topology_buttons = {};
  for (const sel of ['#new-topology', '#topo-editor', '#preview', '#apply', '#add-link', '#add-node', 'button[data-failover-node]', 'button[data-delete]', '#failover-force']) {
    out.topology_buttons[sel] = await count(sel);
  }

  await go(`#/links?id=${encodeURIComponent(link)}`);
  await page.waitForSelector('#dead-letters tr[data-dl]');
  out.dead_letters = await count('#dead-letters tr[data-dl]');
  out.dead_letter_buttons = await count('#dead-letters button');

  await go('#/ops');
  await page.waitForSelector('#ops-dbs tr[data-db="shop"]');
  out.ops_buttons = await page.$$eval('#ops-dbs button, #ops-replicas button', (bs) => bs.map((b) => b.textContent));
  out.restore = await count('#restore-card, #restore-form, #restore-go, button[data-restore]');
  return out;
});
