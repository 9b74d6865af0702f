// The overview updates live: the flow pauses the link and writes to the source through
// the API, and the page's lag figures rise without a reload: entries, and the lag in time
// (the age of the oldest entry the replica has not applied), which keeps growing while the
// link stays paused, the same in the API and the metrics; after resume both fall to 0.
import { env, launch, login, shot, flow, call, request } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const token = env('DOPPEL_TOKEN');
  const link = env('DOPPEL_LINK');
  const s = await launch();
  keep(s);
  const { page } = s;
  let navigations = 0;
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations++; });
  await login(page, base, token);
  await page.waitForSelector(`#links tr[data-link="${link}"] [data-f=state] .s-streaming`);
  const lag = () => page.textContent(`#links tr[data-link="${link}"] [data-f=lag_entries]`);
  const out = { lag_before: await lag() };
  const loaded = navigations;

  await call(base, token, 'POST', `/v1/tenants/default/links/${link}/pause`);
  await page.waitForSelector(`#links tr[data-link="${link}"] .s-paused`);
  const ops = Array.from({ length: 25 }, (_, i) => ({ op: 'upsert', file: 'orders', key: `p-${i}`, alt: { customer: 'zoe' }, data: { i } }));
  await call(base, token, 'POST', '/v1/tenants/default/databases/shop/transactions', { ops });
  await page.waitForFunction((id) => {
    const cell = document.querySelector(`#links tr[data-link="${id}"] [data-f=lag_entries]`);
    return cell && Number(cell.textContent.replace(/,/g, '')) >= 25;
  }, link);
  out.lag_paused = await lag();
  out.total_lag = await page.textContent('#st-lag');
  // The lag in time grows while nothing is applied: past 1,000 ms, then further.
  const lagMs = async () => Number((await page.textContent(`#links tr[data-link="${link}"] [data-f=lag_ms]`)).replace(/,/g, ''));
  await page.waitForFunction((id) => {
    const cell = document.querySelector(`#links tr[data-link="${id}"] [data-f=lag_ms]`);
    return cell && Number(cell.textContent.replace(/,/g, '')) >= 1000;
  }, link);
  out.lag_ms_paused = await lagMs();
  await page.waitForFunction(([id, before]) => {
    const cell = document.querySelector(`#links tr[data-link="${id}"] [data-f=lag_ms]`);
    return cell && Number(cell.textContent.replace(/,/g, '')) > before;
  }, [link, out.lag_ms_paused]);
  out.lag_ms_later = await lagMs();
  const api = await call(base, token, 'GET', `/v1/tenants/default/links/${link}`);
  out.api_lag_ms = api.status.lag_ms;
  const metrics = await request(base, token, 'GET', '/metrics');
  const line = metrics.text.split('\n').find((l) => l.startsWith('doppel_link_lag_ms{') && l.includes(link));
  out.metrics_lag_ms = line ? Number(line.split(' ').pop()) : null;
  await shot(page, 'overview');

  await call(base, token, 'POST', `/v1/tenants/default/links/${link}/resume`);
  await page.waitForFunction((id) => {
    const row = document.querySelector(`#links tr[data-link="${id}"]`);
    return row && row.querySelector('[data-f=lag_entries]').textContent === '0' && row.querySelector('.s-streaming');
  }, link);
  out.lag_resumed = await lag();
  await page.waitForFunction((id) => document.querySelector(`#links tr[data-link="${id}"] [data-f=lag_ms]`).textContent === '0', link);
  out.lag_ms_resumed = await lagMs();
  out.reloads = navigations - loaded;

  // The same page at phone width.
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, 'overview-phone');
  out.phone_overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  return out;
});
