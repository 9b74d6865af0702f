// Links: the tenant's links with live state and figures; create a two-node link; pause,
// resume and delete; per link, charts of throughput and lag over the last minutes (from
// the live stream's history), its stages, verify and repair of a mirror (verify.js) and
// its dead letters (deadletters.js: edit, re-drive, drop).

import { api, t, enc } from './api.js';
import * as live from './live.js';
import { lineChart } from './charts.js';
import { deadLetters } from './deadletters.js';
import { verifyPanel } from './verify.js';
import * as names from './names.js';
import { $, $$, html, set, num, ago, pill, patchRows, showProblem, toast, formData } from './ui.js';

/**
 * A PostgreSQL connection string with `password` put in: after the user in the URL form
 * (`postgresql://user:password@host/db`, percent-encoded), as `password='…'` in the
 * key-value form. Throws when the string has a password already or names no user.
 */
export function withPassword(conn, password) {
  if (!password) return conn;
  const url = conn.match(/^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)(.*)$/i);
  if (url) {
    const [, scheme, authority, rest] = url;
    const at = authority.lastIndexOf('@');
    if (at < 0) throw new Error('name the user in the connection string (postgresql://user@host:5432/db) to give a password');
    const user = authority.slice(0, at);
    if (user.includes(':') || /[?&]password=/.test(rest)) throw new Error('the connection string has a password already: leave the password field empty, or take it out of the string');
    return `${scheme}${user}:${encodeURIComponent(password)}@${authority.slice(at + 1)}${rest}`;
  }
  if (/(^|\s)password\s*=/.test(conn)) throw new Error('the connection string has a password already: leave the password field empty, or take it out of the string');
  return `${conn} password='${password.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

function selected() {
  return new URLSearchParams(location.hash.split('?')[1] || '').get('id');
}

export default function links(root, session) {
  const base = `${t(session.tenant)}/links`;
  set(root, html`<h1 class="view-title">Links</h1>
    <section class="card"><h2>Links from this node</h2>
      <div class="scroll"><table id="links-table" class="cards"><thead><tr><th>Link</th><th>State</th><th class="n">Lag entries</th><th class="n">Lag ms</th><th class="n">Throughput /s</th><th>Mode</th><th class="n">Dead letters</th><th>Actions</th></tr></thead>
      <tbody id="link-rows"></tbody></table></div>
      <p id="no-links" class="muted" hidden>No links yet.</p>
      <div id="list-error"></div></section>
    <section class="card" id="detail" hidden></section>
    <section class="card" data-needs="operate"><h2>New link</h2>
      <form id="create-link" class="form-grid">
        <label>Source database <select name="database" required id="link-db"></select></label>
        <label>Target <select name="kind" id="link-kind"><option value="node">a Doppel node</option><option value="postgres">PostgreSQL</option></select></label>
        <label data-kind="node">Target node URL <input name="url" type="url" required placeholder="http://127.0.0.1:7071" id="link-url"></label>
        <label data-kind="node">Target database <input name="target_database" required placeholder="same name" id="link-target-db"></label>
        <label data-kind="postgres" class="wide" hidden>Connection string <input name="postgres" required disabled id="link-pg" autocomplete="off" spellcheck="false" placeholder="postgresql://doppel@10.0.0.5:5432/shop">
          <small class="muted">URL or key-value form; the password goes in the field beside it (or in the string). The server keeps it and never shows it again.</small></label>
        <label data-kind="postgres" hidden>Password <input name="pg_password" type="password" disabled id="link-pg-password" autocomplete="new-password"></label>
        <label data-kind="postgres" hidden>Schema <input name="schema" disabled id="link-pg-schema" placeholder="public" autocomplete="off"></label>
        <label data-kind="postgres" class="check" hidden><input type="checkbox" name="create_tables" disabled id="link-pg-create" checked> Create missing tables</label>
        <label data-kind="node">Mode <select name="mode" id="link-mode"><option value="async">async (loosely coupled)</option><option value="sync">sync (tightly coupled)</option></select></label>
        <label data-kind="node">Apply <select name="apply" id="link-apply"><option value="mirror">mirror (block-identical)</option><option value="logical">logical (through stages)</option></select></label>
        <label>On error <select name="on_error" id="link-on-error"><option value="stop">stop</option><option value="quarantine">quarantine (dead letters)</option></select></label>
        <label class="wide">Stages (JSON) <textarea name="stages" rows="3" spellcheck="false" id="link-stages">[]</textarea>
          <small class="muted" data-kind="node">[{"plugin": "name@version", "config": {…}}]; filters and transforms need apply "logical".</small>
          <small class="muted" data-kind="postgres" hidden>The last stage maps records to rows: the built-in json-columns@1.0.0 maps a file's top-level JSON fields to typed columns (docs/PLUGINS.md, "Row mapping"). A PostgreSQL link is async and logical.</small></label>
        <label class="wide" data-kind="node">Target token (optional) <input name="token" autocomplete="off" placeholder="an operator token of this tenant on the target; not needed when the nodes share a key"></label>
        <div class="wide" id="create-error"></div>
        <div class="wide"><button type="submit" class="primary" id="create-link-button">Create link</button></div>
      </form></section>`);

  const form = $('#create-link', root);
  /** Shows the fields of the chosen target; the others are disabled (not sent, not required). */
  function showKind() {
    const kind = $('#link-kind', root).value;
    for (const el of $$('[data-kind]', form)) {
      const on = el.dataset.kind === kind;
      el.hidden = !on;
      for (const input of $$('input, select', el)) input.disabled = !on;
    }
    const stages = $('#link-stages', root);
    if (kind === 'postgres' && !stages.value.trim().replace(/^\[\s*\]$/, '')) {
      stages.value = JSON.stringify([{ plugin: 'json-columns@1.0.0', config: { files: { orders: { table: 'orders', key: 'id', columns: { total: 'double', customer: 'text' }, rest: 'extra' } } } }], null, 1);
    }
  }
  if (form) {
    $('#link-kind', root).addEventListener('change', showKind);
    api('GET', `${t(session.tenant)}/databases`).then((dbs) => {
      set($('#link-db', root), dbs.map((db) => html`<option value="${db.name}">${db.name}</option>`));
      if (!$('#link-target-db', root).value && dbs[0]) $('#link-target-db', root).placeholder = dbs[0].name;
    }).catch((err) => showProblem($('#create-error', root), err));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const f = formData(form);
      const errBox = $('#create-error', root);
      let stages;
      try {
        stages = JSON.parse(f.stages || '[]');
      } catch (err) {
        showProblem(errBox, { title: 'Stages are not JSON', detail: err.message, code: 'client' });
        $('#link-stages', root).focus();
        return;
      }
      let body;
      if (f.kind === 'postgres') {
        let conn;
        try {
          conn = withPassword(f.postgres.trim(), f.pg_password || '');
        } catch (err) {
          showProblem(errBox, { title: 'The connection string', detail: err.message, code: 'client' });
          $('#link-pg', root).focus();
          return;
        }
        body = {
          database: f.database,
          target: { postgres: conn, schema: (f.schema || '').trim() || 'public' },
          mode: 'async', apply: 'logical', on_error: f.on_error, stages,
          create_tables: f.create_tables === 'on',
        };
      } else {
        body = {
          database: f.database,
          target: { url: f.url.trim(), database: (f.target_database || f.database).trim() },
          mode: f.mode, apply: f.apply, on_error: f.on_error, stages,
        };
        if (f.token.trim()) body.target.token = f.token.trim();
      }
      try {
        const link = await api('POST', base, body);
        showProblem(errBox, null);
        // The password is the server's now: nothing on the page keeps it.
        $('#link-pg-password', root).value = '';
        if (f.kind === 'postgres') $('#link-pg', root).value = '';
        toast(`Link ${link.id} created`);
        location.hash = `#/links?id=${enc(link.id)}`;
      } catch (err) {
        showProblem(errBox, err);
      }
    });
  }

  async function act(id, action) {
    try {
      if (action === 'delete') {
        const l = (live.latest?.links || []).find((x) => x.id === id);
        const what = l ? `${names.linkLabel(l)} (${id})` : id;
        const o = names.owner(id);
        const managed = o ? `\n\nIt belongs to topology ${o.topology}: the next Apply of ${o.topology} creates it again. To remove it for good, remove it from the topology instead.` : '';
        if (!confirm(`Delete link ${what}? The replica keeps its data and stays read-only until detached.${managed}`)) return;
        await api('DELETE', `${base}/${enc(id)}`);
        toast(`Link ${id} deleted`);
        if (selected() === id) location.hash = '#/links';
      } else {
        await api('POST', `${base}/${enc(id)}/${action}`);
        toast(`Link ${id}: ${action}d`);
      }
      showProblem($('#list-error', root), null);
    } catch (err) {
      showProblem($('#list-error', root), err);
    }
  }

  root.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-act]');
    if (b) act(b.dataset.link, b.dataset.act);
  });

  function state(l) {
    return l.paused && l.status.state !== 'paused' ? 'paused' : l.status.state;
  }

  const detail = $('#detail', root);
  let detailId = null;

  let loadDeadLetters = null;

  detail.addEventListener('click', (e) => {
    if (e.target.id === 'refresh-dl' && loadDeadLetters) loadDeadLetters();
  });

  function drawDetail(snap) {
    const id = selected();
    const link = id && snap.links.find((l) => l.id === id);
    detail.hidden = !link;
    if (!link) { detailId = null; return; }
    if (detailId !== id) {
      detailId = id;
      const o = names.owner(link.id);
      set(detail, html`<h2>Link ${names.linkLabel(link)} <code class="muted">${link.id}</code></h2>
        ${o ? html`<p class="notice" id="managed-by">Managed by topology <a href="#/topology?name=${enc(o.topology)}">${o.topology}</a> (<code>${o.label}</code>): change it there; deleting it here lasts only until that topology is applied again.</p>` : ''}
        <dl class="facts"><dt>Source</dt><dd>${names.selfName() || 'this node'} / ${link.database}</dd><dt>Target</dt><dd>${link.target.postgres ? html`PostgreSQL <code>${link.target.postgres}</code> / ${link.target.schema || 'public'}` : html`${names.nodeName(link.target.url)} <code>${link.target.url}</code> / ${link.target.database}`}</dd>
          <dt>Mode</dt><dd>${link.mode} · ${link.apply} · on error ${link.on_error}</dd><dt>Stages</dt><dd id="d-stages"></dd>
          <dt>State</dt><dd id="d-state"></dd><dt>Serials</dt><dd id="d-serials"></dd><dt>Last error</dt><dd id="d-error"></dd></dl>
        <div class="charts"><div id="chart-tput"></div><div id="chart-lag"></div><div id="chart-lagms"></div></div>
        ${link.apply === 'mirror' ? html`<section id="verify" data-needs="operate"><h3>Verify and repair</h3><div id="verify-panel"></div></section>` : ''}
        <h3>Dead letters <button class="ghost small" id="refresh-dl">Refresh</button></h3><div id="dead-letters"><p class="muted">Loading…</p></div>`);
      loadDeadLetters = deadLetters($('#dead-letters', detail), `${base}/${enc(id)}`);
      const verify = $('#verify-panel', detail);
      if (verify) verifyPanel(verify, `${base}/${enc(id)}`);
      loadDeadLetters();
    }
    const s = link.status;
    set($('#d-stages', detail), link.stages.length ? link.stages.map((st) => html`<code class="stage">${st.plugin}</code> `) : html`<span class="muted">none</span>`);
    set($('#d-state', detail), html`${pill(state(link))} <span class="muted">connections ${num(s.connections)} · bootstraps ${num(s.bootstraps)} · quarantined ${num(s.quarantined)}</span>`);
    set($('#d-serials', detail), html`source ${num(s.source_serial)} · sent ${num(s.sent_serial)} · acked ${num(s.acked_serial)}`);
    set($('#d-error', detail), s.last_error ? html`<span class="err">${s.last_error}</span> <span class="muted">${ago(s.last_error_ms)}</span>` : html`<span class="muted">none</span>`);
    const points = live.history.get(id) || [];
    set($('#chart-tput', detail), lineChart(points.map((p) => ({ at: p.at, value: p.throughput })), { label: 'Throughput', unit: 'entries/s' }));
    set($('#chart-lag', detail), lineChart(points.map((p) => ({ at: p.at, value: p.lag_entries })), { label: 'Lag', unit: 'entries' }));
    set($('#chart-lagms', detail), lineChart(points.map((p) => ({ at: p.at, value: p.lag_ms })), { label: 'Lag', unit: 'ms' }));
  }

  function draw(snap) {
    $('#no-links', root).hidden = snap.links.length > 0;
    names.explain(session, snap.links);
    patchRows($('#link-rows', root), snap.links, (l) => `${l.id}|${names.linkLabel(l)}|${names.owner(l.id)?.topology || ''}`,
      (l) => html`<tr data-link="${l.id}"><td data-col="link">${names.linkCell(l)}</td>
        <td data-f="state" data-label="State"></td><td class="n big" data-f="lag_entries" data-label="Lag entries"></td><td class="n big" data-f="lag_ms" data-label="Lag ms"></td><td class="n big" data-f="throughput" data-label="Throughput /s"></td><td data-col="mode" data-label="Mode">${l.mode} · ${l.apply}</td><td class="n" data-f="quarantined" data-label="Dead letters"></td>
        <td class="actions"><span data-needs="operate"><button class="small" data-act="pause" data-link="${l.id}">Pause</button><button class="small" data-act="resume" data-link="${l.id}">Resume</button><button class="small danger" data-act="delete" data-link="${l.id}">Delete</button></span></td></tr>`,
      (l) => ({ state: pill(state(l)), lag_entries: num(l.status.lag_entries), lag_ms: num(l.status.lag_ms), throughput: num(l.status.throughput), quarantined: num(l.status.quarantined) }));
    for (const tr of $$('#link-rows tr', root)) {
      const l = snap.links.find((x) => x.id === tr.dataset.link);
      if (!l) continue;
      const p = $('button[data-act=pause]', tr);
      const r = $('button[data-act=resume]', tr);
      const stopped = l.paused || l.status.state === 'stopped';
      if (p) p.hidden = stopped;
      if (r) r.hidden = !stopped;
    }
    drawDetail(snap);
  }

  const off = live.onSnapshot(draw);
  names.load(session);
  const offNames = names.onNames(() => { detailId = null; if (live.latest) draw(live.latest); });
  const onHash = () => { detailId = null; if (live.latest) draw(live.latest); };
  window.addEventListener('hashchange', onHash);
  return () => { off(); offNames(); window.removeEventListener('hashchange', onHash); };
}
