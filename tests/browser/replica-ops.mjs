// Operations on the replica's node: suspend the replica (the server says suspended; a
// write to the source is stored, not applied), release it (it applies what it stored),
// then promote it to a primary.
import { env, launch, login, shot, flow, call, request, until } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE'); // the replica's node
  const source = env('DOPPEL_SOURCE');
  const link = env('DOPPEL_LINK');
  const token = env('DOPPEL_TOKEN'); // an operator's
  const writer = env('DOPPEL_WRITE_TOKEN'); // a role that may write records
  const s = await launch();
  keep(s);
  const { page } = s;
  page.on('dialog', (d) => d.accept());
  const row = `#ops-replicas tr[data-replica="${link}"]`;
  const replica = async () => (await call(base, token, 'GET', '/v1/tenants/default/replicas')).find((r) => r.link === link);
  const record = '/v1/tenants/default/databases/shop/files/orders/records/while-suspended';
  await login(page, base, token);
  await page.waitForSelector('#view[data-view=overview]');
  await page.click('nav a[data-view=ops]');
  await page.waitForSelector(`${row} [data-f=state] .s-following`);
  const out = {
    release_visible_before: await page.isVisible(`${row} button[data-replica=release]`),
    // Read as source/db → this node/db, the source's id shortened (its full id in a title).
    label: (await page.textContent(`${row} .link-name`)).trim(),
  };

  await page.click(`${row} button[data-replica=suspend]`);
  await page.waitForSelector('#ops-result [data-done=suspend]');
  await page.waitForSelector(`${row} [data-f=state] .s-suspended`);
  out.suspended_text = (await page.textContent('#ops-result [data-done=suspend]')).trim();
  out.server_suspended = (await replica()).suspended;
  out.release_visible = await page.isVisible(`${row} button[data-replica=release]`);
  out.suspend_visible = await page.isVisible(`${row} button[data-replica=suspend]`);
  // A write to the source arrives and is stored, not applied.
  await call(source, writer, 'PUT', record, { alt: { customer: 'sue' }, data: { total: 5 } });
  await page.waitForFunction((sel) => Number(document.querySelector(`${sel} [data-f=spooled]`).textContent.replace(/,/g, '')) >= 1, row);
  out.spooled = (await page.textContent(`${row} [data-f=spooled]`)).trim();
  out.frozen_status = (await request(base, token, 'GET', record)).status;
  await shot(page, 'replica-suspended');

  await page.click(`${row} button[data-replica=release]`);
  await page.waitForSelector('#ops-result [data-done=release]');
  await page.waitForSelector(`${row} [data-f=state] .s-following`);
  out.released_text = (await page.textContent('#ops-result [data-done=release]')).trim();
  out.server_suspended_after = (await replica()).suspended;
  out.applied_status = await until('the stored write applied on the replica', async () => {
    const r = await request(base, token, 'GET', record);
    return r.status === 200 && r.status;
  });
  await page.waitForFunction((sel) => document.querySelector(`${sel} [data-f=spooled]`).textContent.trim() === '0', row);
  // Caught up: the source saw everything acknowledged, so the promotion is not refused.
  await until('the link caught up', async () => {
    const l = await call(source, token, 'GET', `/v1/tenants/default/links/${encodeURIComponent(link)}`);
    return l.status.acked_serial === l.status.source_serial;
  });

  await page.click(`${row} button[data-promote]`);
  await page.waitForSelector('#promote-done');
  out.promoted = (await page.textContent('#promote-done')).trim();
  await page.waitForSelector('#no-replicas:not([hidden])');
  await page.waitForSelector('#ops-dbs tr[data-db="shop"] .s-primary');
  out.role_after = (await page.textContent('#ops-dbs tr[data-db="shop"] .pill')).trim();
  out.promote_buttons_after = await page.$$eval('#ops-dbs button[data-promote]', (b) => b.length);
  return out;
});
