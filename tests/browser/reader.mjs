// A reader sees the links and plugins but no button for what its role may not do (no
// verify or repair of its mirror link either).
import { env, launch, login, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const link = env('DOPPEL_LINK');
  const s = await launch();
  keep(s);
  const { page } = s;
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  const out = { role: (await page.textContent('#who .role')).trim() };
  await page.click('nav a[data-view=links]');
  await page.waitForSelector(`#link-rows tr[data-link="${link}"] [data-f=state] .pill`);
  await page.click(`#link-rows tr[data-link="${link}"] a`);
  await page.waitForSelector('#detail:not([hidden]) #dead-letters');
  out.link_rows = await page.$$eval('#link-rows tr', (rs) => rs.length);
  out.action_buttons = await page.$$eval('#link-rows button', (bs) => bs.map((b) => b.textContent));
  out.create_form = await page.$$eval('#create-link', (fs) => fs.length);
  out.dead_letters_text = await page.textContent('#dead-letters');
  out.verify = await page.$$eval('#verify, #verify-run, [data-repair-file], [data-repair-all]', (e) => e.length);
  await page.click('nav a[data-view=plugins]');
  await page.waitForSelector('#plugin-list table, #plugin-list p');
  out.upload_form = await page.$$eval('#upload', (fs) => fs.length);
  return out;
});
