// Data browser: a database's files, lookup by unique key or alternate key, key-range
// scans with paging, and a record's recent A/B/T log entries.

import { api, t, enc } from './api.js';
import { $, html, set, num, problem, when } from './ui.js';

/** How many of the newest log entries are searched for a record's history. */
const LOG_WINDOW = 1000;

function param(name) {
  return new URLSearchParams(location.hash.split('?')[1] || '').get(name);
}

export default function data(root, session) {
  const dbs = `${t(session.tenant)}/databases`;
  set(root, html`<h1 class="view-title">Data</h1>
    <section class="card"><div class="form-row">
      <label>Database <select id="db"></select></label>
      <label>File <select id="file"></select></label>
      <span id="db-facts" class="muted"></span></div>
      <div id="files"></div></section>
    <div class="grid3">
      <section class="card"><h2>By unique key</h2><form id="by-key" class="stack">
        <label>Key <input name="key" required id="key-input"></label><button class="primary">Look up</button></form></section>
      <section class="card"><h2>By alternate key</h2><form id="by-alt" class="stack">
        <label>Alternate key <select name="alt" id="alt-name"></select></label>
        <label>Value <input name="value" required id="alt-value"></label><button class="primary">Look up</button></form></section>
      <section class="card"><h2>Key range</h2><form id="by-range" class="stack">
        <div class="form-row"><label>From <input name="from" id="range-from"></label><label>To <input name="to" id="range-to"></label></div>
        <label>Limit <input name="limit" type="number" min="1" max="10000" value="50"></label><button class="primary">Scan</button></form></section>
    </div>
    <section class="card"><h2>Records <small class="muted" id="result-note"></small></h2><div id="results"><p class="muted">Look up a key or scan a range.</p></div></section>
    <section class="card" id="history" hidden></section>`);

  let infos = [];
  let next = null;
  let lastScan = null;
  const dbSel = $('#db', root);
  const fileSel = $('#file', root);

  const info = () => infos.find((d) => d.name === dbSel.value);
  const file = () => info()?.files.find((f) => f.name === fileSel.value);
  const fpath = () => `${dbs}/${enc(dbSel.value)}/files/${enc(fileSel.value)}`;

  function drawFiles() {
    const db = info();
    if (!db) { set($('#files', root), html`<p class="muted">This tenant has no databases.</p>`); return; }
    set(fileSel, db.files.map((f) => html`<option value="${f.name}">${f.name}</option>`));
    const want = param('file');
    if (want && db.files.some((f) => f.name === want)) fileSel.value = want;
    set($('#db-facts', root), html`block size ${num(db.block_size)} B · durability ${db.durability} · last serial ${num(db.last_serial)}`);
    set($('#files', root), html`<div class="scroll"><table><thead><tr><th>File</th><th class="n">Records</th><th>Alternate keys</th></tr></thead><tbody>
      ${db.files.map((f) => html`<tr><td>${f.name}</td><td class="n big">${num(f.records)}</td><td>${f.alt_keys.length ? f.alt_keys.join(', ') : html`<span class="muted">none</span>`}</td></tr>`)}</tbody></table></div>`);
    drawAlt();
  }

  function drawAlt() {
    const f = file();
    const alts = f ? f.alt_keys : [];
    set($('#alt-name', root), alts.length ? alts.map((a) => html`<option value="${a}">${a}</option>`) : html`<option value="">(this file has none)</option>`);
  }

  function showRecords(records, note) {
    set($('#result-note', root), note || '');
    set($('#results', root), records.length ? html`<div class="scroll"><table class="records"><thead><tr><th>Key</th><th>Alternate keys</th><th>Data</th><th class="n">Block</th><th></th></tr></thead><tbody>
      ${records.map((r) => html`<tr data-key="${r.key}"><td><code>${r.key}</code></td><td>${Object.entries(r.alt || {}).map(([k, v]) => html`<code>${k}=${v}</code> `)}</td>
        <td><pre class="json small">${JSON.stringify(r.data)}</pre></td><td class="n">${r.block}</td><td><button class="small" data-history="${r.key}">Log</button></td></tr>`)}</tbody></table></div>
      ${next !== null ? html`<button id="more" class="ghost">Next page (from ${next})</button>` : ''}` : html`<p class="muted">No records.</p>`);
  }

  // `what` names the query: on a refusal (a missing key) the heading names it too, not the
  // previous query's.
  async function run(fn, what) {
    try {
      await fn();
    } catch (err) {
      if (what) set($('#result-note', root), what);
      set($('#results', root), problem(err));
    }
  }

  $('#by-key', root).addEventListener('submit', (e) => {
    e.preventDefault();
    next = null;
    const key = e.target.key.value;
    run(async () => showRecords([await api('GET', `${fpath()}/records/${enc(key)}`)], `key ${key}`), `key ${key}`);
  });
  $('#by-alt', root).addEventListener('submit', (e) => {
    e.preventDefault();
    next = null;
    const name = e.target.alt.value;
    run(async () => {
      if (!name) throw { title: 'No alternate key', detail: `file '${fileSel.value}' has no alternate keys`, code: 'client' };
      const r = await api('GET', `${fpath()}/alt/${enc(name)}/${enc(e.target.value.value)}`);
      showRecords(r.records, `${name} = ${e.target.value.value}`);
    }, `${name} = ${e.target.value.value}`);
  });
  async function scan(from) {
    const q = new URLSearchParams();
    if (from) q.set('from', from);
    if (lastScan.to) q.set('to', lastScan.to);
    q.set('limit', lastScan.limit || '50');
    const r = await api('GET', `${fpath()}/records?${q}`);
    next = r.next;
    showRecords(r.records, `${lastScan.from || 'start'} … ${lastScan.to || 'end'}`);
  }
  $('#by-range', root).addEventListener('submit', (e) => {
    e.preventDefault();
    lastScan = { from: e.target.from.value, to: e.target.to.value, limit: e.target.limit.value };
    run(() => scan(lastScan.from));
  });
  root.addEventListener('click', (e) => {
    if (e.target.id === 'more' && next !== null) run(() => scan(next));
    const h = e.target.closest('button[data-history]');
    if (h) history(h.dataset.history);
    const older = e.target.closest('button[data-older]');
    if (older) history(older.dataset.key, Number(older.dataset.older), true);
  });

  // A record's log, a window of LOG_WINDOW entries at a time, newest first; "Older
  // entries" reads the window before the oldest one shown, back to serial 1.
  let shownLog = [];
  let logNewest = 0;
  async function history(key, upto, more = false) {
    const box = $('#history', root);
    box.hidden = false;
    if (!more) set(box, html`<h2>Log of <code>${fileSel.value}/${key}</code></h2><p class="muted">Loading…</p>`);
    try {
      if (!more) {
        upto = (await api('GET', `${dbs}/${enc(dbSel.value)}`)).last_serial;
        shownLog = [];
        logNewest = upto;
      }
      const from = Math.max(1, upto - LOG_WINDOW + 1);
      const log = await api('GET', `${dbs}/${enc(dbSel.value)}/log?from=${from}&limit=${LOG_WINDOW}`);
      const mine = log.entries.filter((en) => en.serial <= upto && en.file === fileSel.value && [en.a, en.b, en.t].some((img) => img && img.key === key)).reverse();
      shownLog.push(...mine);
      const img = (v) => (v ? html`<pre class="json small">${JSON.stringify(v)}</pre>` : html`<span class="muted">–</span>`);
      const range = `serials ${num(from)}–${num(logNewest)}`;
      set(box, html`<h2>Log of <code>${fileSel.value}/${key}</code> <small class="muted" id="log-window">${range}${from > 1 ? '' : ' (back to the oldest retained)'}</small></h2>
        ${shownLog.length ? html`<div class="scroll"><table class="log"><thead><tr><th class="n">Serial</th><th class="n">Txn</th><th>Kind</th><th>When</th><th>A (after)</th><th>B (before)</th><th>T (operation)</th></tr></thead><tbody>
        ${shownLog.map((en) => html`<tr data-serial="${en.serial}"><td class="n">${en.serial}</td><td class="n">${en.txn}</td><td>${en.kind}${en.undo ? ' (undo)' : ''}</td><td>${when(en.timestamp_us / 1000)}</td><td>${img(en.a)}</td><td>${img(en.b)}</td><td>${img(en.t)}</td></tr>`)}
        </tbody></table></div>` : html`<p class="muted">No entries for this record in ${range}.</p>`}
        ${from > 1 ? html`<button class="ghost" id="older-log" data-older="${from - 1}" data-key="${key}">Older entries (serials ${num(Math.max(1, from - LOG_WINDOW))}–${num(from - 1)})</button>` : ''}`);
      if (!more) box.scrollIntoView({ block: 'nearest' });
    } catch (err) {
      set(box, problem(err));
    }
  }

  dbSel.addEventListener('change', drawFiles);
  fileSel.addEventListener('change', drawAlt);
  api('GET', dbs).then((list) => {
    infos = list;
    set(dbSel, list.map((d) => html`<option value="${d.name}">${d.name}</option>`));
    const want = param('db');
    if (want && list.some((d) => d.name === want)) dbSel.value = want;
    drawFiles();
  }).catch((err) => set($('#files', root), problem(err)));
}
