// Building a two-node link in the topology view: two nodes and a link entered in the
// editor and drawn as a graph, Preview (the dry run's plan: create), Apply; the link then
// streams (its arrow turns green from the live state). Then a snapshot from Operations.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const target = env('DOPPEL_TARGET');
  const s = await launch();
  keep(s);
  const { page } = s;
  page.on('dialog', (d) => d.accept());
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.click('nav a[data-view=topology]');
  await page.waitForSelector('#topo-list p, #topo-list table');
  await page.click('#new-topology');
  await page.fill('#topo-name', 'pair');
  for (const [name, url] of [['a', base], ['b', target]]) {
    await page.fill('#node-name', name);
    await page.fill('#node-url', url);
    await page.click('#add-node');
    await page.waitForSelector(`tr[data-node-row="${name}"]`);
  }
  await page.click('#add-link');
  const row = 'fieldset[data-link-index="0"]';
  await page.selectOption(`${row} [data-k="from.node"]`, 'a');
  await page.fill(`${row} [data-k="from.database"]`, 'shop');
  await page.selectOption(`${row} [data-k="to.node"]`, 'b');
  await page.fill(`${row} [data-k="to.database"]`, 'shop');
  await page.selectOption(`${row} [data-k="mode"]`, 'async');
  await page.selectOption(`${row} [data-k="apply"]`, 'mirror');
  await page.waitForSelector('svg.topology-graph g.t-link[data-link="0"].tone-draft');
  const out = {
    nodes: await page.$$eval('svg.topology-graph g.t-node', (gs) => gs.map((g) => g.dataset.node)),
    legend: await page.textContent(`${row} legend code`),
    apply_before_preview: await page.isVisible('#apply'),
  };
  await page.click('#preview');
  await page.waitForSelector('#plan tr[data-action]');
  const plan = () => page.$$eval('#plan tr[data-action]', (trs) => trs.map((tr) => [tr.dataset.action, tr.querySelector('code').textContent]));
  out.plan = await plan();
  out.apply_after_preview = await page.isVisible('#apply');
  await page.click('#apply');
  await page.waitForSelector('#topo-live:not([hidden]) #topo-links tr[data-label]');
  await page.waitForSelector('svg.topology-graph g.t-link[data-link="0"].st-streaming');
  await page.waitForSelector('#topo-links tr[data-label] [data-f=state] .s-streaming');
  out.applied = await plan();
  out.title = (await page.textContent('#topo-title')).trim();
  out.hash = await page.evaluate(() => location.hash);
  out.link_class = await page.getAttribute('svg.topology-graph g.t-link[data-link="0"]', 'class');
  out.live_state = (await page.textContent('#topo-links tr[data-label] [data-f=state]')).trim();
  out.failover_buttons = await page.$$eval('#topo-links button[data-failover-node]', (bs) => bs.map((b) => b.textContent));
  await page.evaluate(() => window.scrollTo(0, document.querySelector('#topo-card').offsetTop - 70));
  await shot(page, 'topology');

  await page.click('nav a[data-view=ops]');
  await page.waitForSelector('#ops-dbs tr[data-db="shop"] button[data-snapshot]');
  await page.click('#ops-dbs tr[data-db="shop"] button[data-snapshot]');
  await page.waitForSelector('#snapshot-serial');
  out.snapshot_serial = (await page.textContent('#snapshot-serial')).trim();
  await shot(page, 'operations');

  // Fail over to the replica: the answer (promoted serial, time taken, the new plan),
  // then the graph shows the old primary following the new one.
  await page.evaluate(() => { location.hash = '#/topology?name=pair'; });
  await page.waitForSelector('#topo-links button[data-failover-node="b"]');
  await page.click('#topo-links button[data-failover-node="b"]');
  await page.waitForSelector('#failover-done');
  out.failover_serial = (await page.textContent('#fo-serial')).trim();
  out.failover_took = (await page.textContent('#fo-took')).trim();
  out.failover_plan = await page.$$eval('#failover-done tr[data-action]', (trs) => trs.map((tr) => [tr.dataset.action, tr.querySelector('code').textContent]));
  await page.waitForSelector('#topo-links tr[data-label="b/shop -> a/shop"] [data-f=state] .pill');
  out.after_failover = await page.$$eval('svg.topology-graph g.t-link', (gs) => gs.map((g) => g.getAttribute('aria-label')));
  // The failover record: where the promoted log begins, and what the old primary did.
  await page.waitForSelector('#failover-record tr[data-follower="a"]');
  out.record_serial = (await page.textContent('#fr-serial')).trim();
  out.record_discarded = (await page.textContent('#failover-record tr[data-follower="a"] .fr-discarded')).trim();
  return out;
});
