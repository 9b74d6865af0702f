// Re-driving a dead letter: as stored the link's stage rejects it again (the refusal is
// shown on its row, which stays); the JSON editor flags a broken edit; edited, it is
// re-driven, the outcome "applied" is shown and the dead letter is gone.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const link = env('DOPPEL_LINK');
  const s = await launch();
  keep(s);
  const { page } = s;
  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  await page.evaluate((id) => { location.hash = `#/links?id=${encodeURIComponent(id)}`; }, link);
  await page.waitForSelector('#dead-letters tr[data-dl]');
  const id = await page.getAttribute('#dead-letters tr[data-dl]', 'data-dl');
  const out = { id, error: (await page.textContent(`tr[data-dl="${id}"] td.err`)).trim() };

  await page.click(`button[data-redrive="${id}"]`);
  await page.waitForSelector(`[data-result="${id}"] .problem code`);
  out.rejected_code = await page.textContent(`[data-result="${id}"] .problem code`);
  out.rejected_detail = await page.textContent(`[data-result="${id}"] .problem span`);
  out.rows_after_rejection = await page.$$eval('#dead-letters tr[data-dl]', (rs) => rs.length);

  await page.click(`button[data-edit="${id}"]`);
  const text = `[data-dl-text="${id}"]`;
  await page.waitForSelector(text);
  const original = JSON.parse(await page.inputValue(text));
  await page.fill(text, '{"op": "insert", "file": "orders"');
  await page.waitForSelector(`[data-valid="${id}"].err`);
  out.broken_message = await page.textContent(`[data-valid="${id}"]`);
  out.broken_send_disabled = await page.isDisabled(`[data-send="${id}"]`);
  await page.fill(text, JSON.stringify({ ...original, op: 'rename' }));
  await page.waitForSelector(`[data-valid="${id}"].err`);
  out.bad_op_message = await page.textContent(`[data-valid="${id}"]`);
  await page.fill(text, JSON.stringify({ ...original, data: { a: 7 } }, null, 2));
  await page.waitForSelector(`[data-valid="${id}"].ok-text`);
  out.edited_send_disabled = await page.isDisabled(`[data-send="${id}"]`);
  await shot(page, 'dead-letter-edit');
  await page.click(`[data-send="${id}"]`);
  await page.waitForSelector('#dl-outcome [data-outcome]');
  out.outcome = await page.getAttribute('#dl-outcome [data-outcome]', 'data-outcome');
  out.outcome_text = await page.textContent('#dl-outcome [data-outcome]');
  await page.waitForFunction(() => !document.querySelector('#dead-letters tr[data-dl]') && /No dead letters/.test(document.querySelector('#dead-letters').textContent));
  out.rows_after = await page.$$eval('#dead-letters tr[data-dl]', (rs) => rs.length);
  return out;
});
