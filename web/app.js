// The console's shell: login with a token, the session (who, tenant, what the role may
// do), the tenant chooser, the live stream's indicator and hash routing between views.

import { api, setToken, token, ApiError } from './api.js';
import * as live from './live.js';
import { $, $$, html, set, session, problem } from './ui.js';
import overview from './overview.js';
import links from './links.js';
import data from './data.js';
import plugins from './plugins.js';
import topology from './topology.js';
import ops from './ops.js';

const VIEWS = { overview, topology, links, data, plugins, ops };
const view = $('#view');
let cleanup = null;

function loginView(reason) {
  live.stop();
  $('#nav').hidden = true;
  $('#session').hidden = true;
  $('#menu').hidden = true;
  set(view, html`<section class="login card">
    <h1>Sign in to Doppel</h1>
    <p class="muted">Paste a token (a JWT). On its first start the node prints an admin token
      after its listening line (<code>doppel admin token: eyJ…</code>); <code>serve --demo</code>
      prints one for all three demo nodes (<code>doppel demo token: eyJ…</code>);
      <code>doppel token --tenant T --role R</code> mints others.</p>
    <form id="login-form">
      <label for="token-input">Token</label>
      <textarea id="token-input" name="token" rows="4" required spellcheck="false" autocomplete="off" placeholder="eyJhbGciOi…"></textarea>
      <div id="login-error">${reason ? problem(reason) : ''}</div>
      <button type="submit" class="primary">Sign in</button>
    </form></section>`);
  const form = $('#login-form');
  $('#token-input').focus();
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const value = form.token.value.trim();
    if (!value) return;
    setToken(value);
    try {
      await begin();
    } catch (err) {
      setToken(null);
      set($('#login-error'), problem(err));
    }
  });
}

/** Checks the token with the server and opens the console. */
async function begin() {
  const who = await api('GET', '/v1/whoami', undefined, { silent401: true });
  session.who = who;
  session.may = who.may;
  if (!who.tenants.length) {
    throw new ApiError(404, { title: 'No tenant', detail: `the token's tenant '${who.tenant}' does not exist on this node`, code: 'not-found' });
  }
  const saved = sessionStorage.getItem('doppel.tenant');
  session.tenant = who.tenants.includes(saved) ? saved : who.tenants.includes('default') ? 'default' : who.tenants[0];
  const select = $('#tenant');
  set(select, who.tenants.map((name) => html`<option value="${name}">${name}</option>`));
  select.value = session.tenant;
  select.disabled = who.tenants.length < 2;
  const scope = who.tenant === '*' ? 'all tenants' : `tenant ${who.tenant}`;
  set($('#who'), html`<span class="role r-${who.role}">${who.role}</span> <span class="muted">${who.sub} · ${scope}</span>`);
  $('#nav').hidden = false;
  $('#session').hidden = false;
  $('#menu').hidden = false;
  live.start(session.tenant);
  if (!location.hash || location.hash === '#/') location.hash = '#/overview';
  route();
}

function route() {
  if (!token() || !session.who) return;
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1] || 'overview';
  const chosen = VIEWS[name] ? name : 'overview';
  for (const a of $$('#nav a')) a.setAttribute('aria-current', a.dataset.view === chosen ? 'page' : 'false');
  if (cleanup) cleanup();
  cleanup = null;
  // Each view gets a fresh element: the listeners it adds go with it, rather than piling
  // up on #view each time the user comes back.
  const box = document.createElement('div');
  box.className = 'view-root';
  view.replaceChildren(box);
  cleanup = VIEWS[chosen](box, session) || null;
  view.dataset.view = chosen;
}

window.addEventListener('hashchange', route);
// At phone width the header folds: the views and the session open from "Menu", and close
// again once a view is chosen.
function fold(open) {
  $('header.top').classList.toggle('open', open);
  $('#menu').setAttribute('aria-expanded', String(open));
}
$('#menu').addEventListener('click', () => fold(!$('header.top').classList.contains('open')));
window.addEventListener('hashchange', () => fold(false));
window.addEventListener('doppel:unauthorized', (e) => {
  setToken(null);
  session.who = null;
  const err = e.detail instanceof ApiError ? e.detail : new ApiError(401, e.detail || {});
  if (cleanup) cleanup();
  cleanup = null;
  loginView(err);
});
$('#logout').addEventListener('click', () => {
  setToken(null);
  session.who = null;
  if (cleanup) cleanup();
  cleanup = null;
  loginView(null);
});
$('#tenant').addEventListener('change', (e) => {
  session.tenant = e.target.value;
  sessionStorage.setItem('doppel.tenant', session.tenant);
  live.start(session.tenant);
  route();
});
live.onState((state) => {
  const dot = $('#live');
  dot.className = 'live ' + state;
  dot.title = { live: 'Live: figures update every second', retrying: 'Reconnecting to the live stream…', off: 'Not connected' }[state] || state;
  dot.dataset.state = state;
});

if (token()) {
  begin().catch((err) => { setToken(null); loginView(err); });
} else {
  loginView(null);
}
