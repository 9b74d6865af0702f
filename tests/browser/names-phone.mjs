// Names instead of ids, then the same console at phone width (390 px). On a laptop: the
// overview names this node and its peers as the topology does, shows each link as
// `a/shop → b/shop` with the topology that manages it, and deleting a managed link warns
// that it belongs to that topology. At 390 px: the header folds into one line, the links
// become cards with state and lag in view, the topology graph fits the screen (every
// node inside it), and no page scrolls sideways. The overview also shows the tenant's usage.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const link = env('DOPPEL_LINK');
  const s = await launch();
  keep(s);
  const { page } = s;
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  const row = `#links tr[data-link="${link}"]`;
  await page.waitForFunction((sel) => (document.querySelector(`${sel} .managed`)?.textContent || '').includes('pair'), row);
  await page.waitForFunction(() => (document.querySelector('#self-name .node-name')?.textContent || '') === 'a');
  const out = {
    self: (await page.textContent('#self-name .node-name')).trim(),
    peers: await page.$$eval('#peers li .node-name', (es) => es.map((e) => e.textContent).sort()),
    label: (await page.textContent(`${row} .link-name`)).trim(),
    managed: (await page.textContent(`${row} .managed`)).trim(),
  };
  // The tenant's usage: writes per second from the live stream, memory and disk used.
  await page.waitForFunction(() => /\d/.test(document.querySelector('#usage-ops')?.textContent || ''));
  out.usage = {
    ops: (await page.textContent('#usage-ops')).trim(),
    memory: (await page.textContent('#usage-memory')).trim(),
    disk: (await page.textContent('#usage-disk')).trim(),
    cpu: (await page.textContent('#usage-cpu')).trim(),
    backlog: (await page.textContent('#usage-backlog')).trim(),
  };
  await page.evaluate(() => document.querySelector('#nodes').scrollIntoView());
  await shot(page, 'overview-names');

  // Deleting a managed link from the Links page warns whose it is (dismissed: kept).
  await page.click('nav a[data-view=links]');
  await page.waitForSelector(`#link-rows tr[data-link="${link}"] .managed`);
  await page.click(`#link-rows tr[data-link="${link}"] button[data-act=delete]`);
  out.delete_warning = dialogs.join(' | ');
  await page.click(`#link-rows tr[data-link="${link}"] a.link-name`);
  await page.waitForSelector('#managed-by');
  out.detail_managed = (await page.textContent('#managed-by')).trim();
  out.detail_title = (await page.textContent('#detail h2')).trim();

  // Phone width.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => { location.hash = '#/overview'; });
  await page.waitForSelector(`${row} [data-f=state] .pill`);
  const inView = (sel) => page.$$eval(sel, (es) => es.map((e) => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.left >= -1 && r.right <= window.innerWidth + 1;
  }));
  out.phone = {
    header_px: await page.evaluate(() => Math.round(document.querySelector('header.top').getBoundingClientRect().height)),
    nav_visible: await page.isVisible('#nav'),
    state_lag_in_view: await inView(`${row} [data-f=state], ${row} [data-f=lag_entries], ${row} [data-f=lag_ms]`),
    overflow: await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1),
  };
  await shot(page, 'overview-phone');
  // The folded menu opens, and a choice closes it.
  await page.click('#menu');
  await page.waitForSelector('#nav a[data-view=topology]', { state: 'visible' });
  out.phone.menu_opens = true;
  await page.click('#nav a[data-view=topology]');
  await page.waitForSelector('#nav', { state: 'hidden' });
  await page.waitForSelector('#topo-list tr[data-topology="pair"]');
  out.phone.delete_in_view = (await inView('#topo-list tr[data-topology="pair"] button[data-delete]'))[0] === true;
  await page.click('#topo-list tr[data-topology="pair"] a');
  await page.waitForSelector('svg.topology-graph g.t-node');
  await page.waitForSelector('#topo-links tr[data-label] [data-f=state] .pill');
  out.phone.graph_nodes = await page.$$eval('svg.topology-graph g.t-node', (gs) => gs.map((g) => g.dataset.node));
  out.phone.graph_nodes_in_view = await inView('svg.topology-graph g.t-node');
  out.phone.live_state_in_view = await inView('#topo-links tr[data-label] [data-f=state]');
  out.phone.topology_overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  await page.evaluate(() => window.scrollTo(0, document.querySelector('#topo-card').offsetTop - 10));
  await shot(page, 'topology-phone');
  return out;
});
