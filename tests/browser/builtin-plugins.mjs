// The built-in plugins, as a newcomer finds them: listed on the Plugins page without an
// upload and marked "built-in"; one opened, configured, dry-run and put on a live logical
// link, all from the console.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const link = env('DOPPEL_LINK');
  const version = env('DOPPEL_VERSION');
  const s = await launch();
  keep(s);
  const { page } = s;
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.click('nav a[data-view=plugins]');
  await page.waitForSelector('#plugin-list tbody tr');
  const out = {
    builtin: await page.$$eval('#plugin-list tbody tr', (rs) => rs.filter((r) => r.querySelector('.s-builtin')).map((r) => r.dataset.plugin)),
    no_uploads: (await page.textContent('#no-uploads')).trim(),
  };
  await shot(page, 'plugins-builtin');
  await page.click(`#plugin-list a:text-is("prefix-filter@${version}")`);
  await page.waitForSelector('#plugin-detail:not([hidden]) #config-form [data-cfg=prefixes]');
  out.title = (await page.textContent('#plugin-detail h2')).trim();
  out.note = (await page.textContent('#builtin-note')).trim();
  await page.fill('#config-form [data-cfg=prefixes]', 'eu-');
  await page.click('#dry-run');
  await page.waitForSelector('#dry-output table.side');
  out.kept = await page.$$eval('#dry-output tbody tr', (rs) => rs.map((r) => r.className));
  out.summary = (await page.textContent('#dry-summary')).trim();
  await page.selectOption('#swap-link', link);
  await page.click('#swap');
  await page.waitForFunction(() => [...document.querySelectorAll('.toast')].some((t) => t.textContent.includes('now runs')));
  out.toast = await page.$$eval('.toast', (ts) => ts.map((t) => t.textContent).join(' | '));
  return out;
});
