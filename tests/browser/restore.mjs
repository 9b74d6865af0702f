// A point-in-time restore from Operations: the newest update picked from the recent list
// (by serial, then by its time: nothing would change); a serial older than the retained
// log is refused naming the oldest reachable point, which the page offers; its preview
// shows the method and how many records change; confirmed, the restore's progress is
// followed until it is done.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const early = env('DOPPEL_EARLY');
  const s = await launch();
  keep(s);
  const { page } = s;
  const text = async (sel) => (await page.textContent(sel)).trim();
  const numbers = (sel) => page.$$eval(`${sel} [data-n]`, (dds) => Object.fromEntries(dds.map((d) => [d.dataset.n, d.textContent.trim()])));
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.click('nav a[data-view=ops]');
  await page.waitForSelector('#ops-dbs tr[data-db="shop"] button[data-restore]');
  await page.click('#ops-dbs tr[data-db="shop"] button[data-restore]');
  await page.waitForSelector('#restore-recent-table tr[data-serial] button[data-pick]');
  const out = {
    focused: await page.evaluate(() => document.activeElement && document.activeElement.id),
    recent: await page.$$eval('#restore-recent-table tr[data-serial]', (rs) => rs.map((r) => Number(r.dataset.serial))),
  };

  // The newest update, by serial and by its time: a restore that changes nothing.
  await page.click('#restore-recent-table tr[data-serial] button[data-pick]');
  out.picked_serial = await page.inputValue('#restore-serial');
  out.picked_time = await page.inputValue('#restore-time');
  await page.click('#restore-preview');
  await page.waitForSelector('#restore-preview-result');
  out.newest_preview = { serial: await text('#plan-serial'), updates: await text('#plan-updates'), records: await numbers('#restore-preview-result') };
  await page.check('#restore-by-time');
  out.preview_gone_on_change = await page.$$eval('#restore-preview-result', (e) => e.length) === 0;
  out.time_visible = await page.isVisible('#restore-time');
  await page.click('#restore-preview');
  await page.waitForSelector('#restore-preview-result');
  out.time_preview_serial = await text('#plan-serial');

  // Too far back: refused, naming the oldest reachable point, which the page offers.
  await page.check('#restore-by-serial');
  await page.fill('#restore-serial', early);
  await page.click('#restore-preview');
  await page.waitForSelector('#restore-outside');
  out.outside_code = await text('#restore-outside .problem code');
  out.oldest = await text('#oldest-serial');
  out.use_oldest = await text('#use-oldest');
  await shot(page, 'restore-outside-retention');
  await page.click('#use-oldest');
  out.serial_after_use = await page.inputValue('#restore-serial');
  out.outside_gone = await page.$$eval('#restore-outside', (e) => e.length) === 0;

  // The preview, then the explicit confirmation.
  await page.click('#restore-preview');
  await page.waitForSelector('#restore-preview-result');
  out.preview = {
    serial: await text('#plan-serial'),
    method: await text('#plan-method'),
    updates: await text('#plan-updates'),
    records: await numbers('#restore-preview-result'),
  };
  out.restore_disabled_before_confirm = await page.isDisabled('#restore-go');
  await page.check('#restore-confirm');
  out.restore_disabled_after_confirm = await page.isDisabled('#restore-go');
  await page.evaluate(() => document.querySelector('#restore-card').scrollIntoView({ block: 'start' }));
  await page.evaluate(() => window.scrollBy(0, -70));
  await shot(page, 'restore-preview');
  await page.click('#restore-go');
  await page.waitForSelector('#restore-op');
  await page.waitForSelector('#restore-op:not([data-state=running])');
  out.state = await page.getAttribute('#restore-op', 'data-state');
  out.phase = await text('#op-phase');
  out.done = await text('#op-done');
  out.total = await text('#op-total');
  out.written = await text('#op-serials');
  out.changed = await numbers('#restore-op');
  await page.waitForSelector('#restore-history tr[data-restore]');
  out.history = await page.$$eval('#restore-history tr[data-restore]', (rs) => rs.map((r) => r.querySelector('.pill').textContent));
  await page.evaluate(() => document.querySelector('#restore-progress').scrollIntoView({ block: 'start' }));
  await page.evaluate(() => window.scrollBy(0, -70));
  await shot(page, 'restore-done');
  return out;
});
