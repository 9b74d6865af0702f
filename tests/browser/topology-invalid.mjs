// A document the server refuses: a cycle and a link to a node the document no longer
// declares. Preview shows each of the server's messages on the link it names (the link's
// editor row and its arrow), not only as one block, and offers no Apply.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const target = env('DOPPEL_TARGET');
  const s = await launch();
  keep(s);
  const { page } = s;
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.click('nav a[data-view=topology]');
  await page.click('#new-topology');
  await page.fill('#topo-name', 'bad');
  for (const [name, url] of [['a', base], ['b', target], ['gone', 'http://127.0.0.1:9']]) {
    await page.fill('#node-name', name);
    await page.fill('#node-url', url);
    await page.click('#add-node');
    await page.waitForSelector(`tr[data-node-row="${name}"]`);
  }
  const links = [['a', 'b'], ['b', 'a'], ['a', 'gone']];
  for (const [i, [from, to]] of links.entries()) {
    await page.click('#add-link');
    const row = `fieldset[data-link-index="${i}"]`;
    await page.selectOption(`${row} [data-k="from.node"]`, from);
    await page.fill(`${row} [data-k="from.database"]`, 'shop');
    await page.selectOption(`${row} [data-k="to.node"]`, to);
    await page.fill(`${row} [data-k="to.database"]`, 'shop');
  }
  // Removing the node leaves its link naming it.
  await page.click('tr[data-node-row="gone"] button[data-rm-node]');
  await page.waitForSelector('svg.topology-graph g.t-node.unknown[data-node="gone"]');
  await page.click('#preview');
  await page.waitForSelector('#topo-problem .problem');
  await page.waitForSelector('fieldset[data-link-index="1"].invalid [data-link-err] p');
  const messages = (i) => page.$$eval(`fieldset[data-link-index="${i}"] [data-link-err] p`, (ps) => ps.map((p) => [p.dataset.path, p.textContent]));
  const out = {
    code: await page.textContent('#topo-problem .problem code'),
    summary: await page.$$eval('#topo-problem ul.where li', (lis) => lis.map((li) => li.querySelector('code').textContent)),
    row0: await messages(0),
    row1: await messages(1),
    row2: await messages(2),
    invalid_rows: await page.$$eval('fieldset.link-edit.invalid', (fs) => fs.map((f) => f.dataset.linkIndex)),
    invalid_fields: await page.$$eval('fieldset.link-edit [aria-invalid="true"]', (els) => els.map((e) => `${e.closest('fieldset').dataset.linkIndex}:${e.dataset.k}`)),
    invalid_arrows: await page.$$eval('svg.topology-graph g.t-link.invalid', (gs) => gs.map((g) => g.dataset.link)),
    arrow_titles: await page.$$eval('svg.topology-graph g.t-link.invalid title', (ts) => ts.map((t) => t.textContent)),
    unknown_nodes: await page.$$eval('svg.topology-graph g.t-node.unknown', (gs) => gs.map((g) => g.dataset.node)),
    apply_visible: await page.isVisible('#apply'),
  };
  // A taller window for the screenshot: the graph and the refused links together.
  await page.setViewportSize({ width: 1280, height: 1400 });
  await page.evaluate(() => window.scrollTo(0, document.querySelector('#topo-card').offsetTop - 70));
  await shot(page, 'topology-invalid');
  return out;
});
