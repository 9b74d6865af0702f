// The API reference: from the console's link to /docs, Swagger UI over the node's own
// OpenAPI document (served by the node, nothing from elsewhere): the operations are
// listed, and one opens with its typed request body.
import { env, launch, login, shot, flow } from './lib.mjs';

flow(async (keep) => {
  const base = env('DOPPEL_BASE');
  const s = await launch();
  keep(s);
  const { page, context } = s;
  const out = { outside: [] };
  // Every request the page makes, to see that all of them stay on the node.
  page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) out.outside.push(r.url()); });

  await login(page, base, env('DOPPEL_TOKEN'));
  await page.waitForSelector('#view[data-view=overview]');
  out.link = await page.getAttribute('#nav a[href="/docs"]', 'href');
  const [docs] = await Promise.all([
    context.waitForEvent('page'),
    page.click('#nav a[href="/docs"]'),
  ]);
  docs.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) out.outside.push(r.url()); });
  await docs.waitForSelector('.swagger-ui .info .title');
  out.title = (await docs.textContent('.swagger-ui .info .title')).trim();
  await docs.waitForSelector('.opblock');
  out.operations = await docs.$$eval('.opblock', (os) => os.length);
  // Open "Create a database" and read its request body's schema.
  const create = docs.locator('#operations-default-create_database');
  await create.locator('.opblock-summary').click();
  await create.locator('.opblock-section-request-body').waitFor();
  await create.locator('.tab [data-name=model], .tablinks[data-name=model]').first().click().catch(() => {});
  out.body_schema = (await create.locator('.opblock-section-request-body').innerText()).slice(0, 2000);
  await shot(docs, 'api-reference');
  return out;
});
