// Operations on this node's databases and replicas, for roles that may operate: take a
// snapshot (and list the stored ones), promote a replica to a primary (refused while it
// has not applied what its source announced, unless forced), suspend / release /
// detach a replica; point-in-time restore (restore.js). Destructive ones ask first;
// every answer is shown as a result.

import { api, t, enc } from './api.js';
import * as live from './live.js';
import { restorePanel } from './restore.js';
import * as names from './names.js';
import { $, html, set, num, bytes, ago, pill, patchRows, problem, toast } from './ui.js';

export default function ops(root, session) {
  const dbs = `${t(session.tenant)}/databases`;
  const reps = `${t(session.tenant)}/replicas`;
  set(root, html`<h1 class="view-title">Operations <small class="muted">tenant ${session.tenant}, this node</small></h1>
    <div id="ops-result" aria-live="polite"></div>
    <section class="card"><h2>Databases</h2>
      <div class="scroll"><table><thead><tr><th>Database</th><th class="n">Records</th><th class="n">Last serial</th><th class="n">Snapshot serial</th><th>Role</th><th>Actions</th></tr></thead>
      <tbody id="ops-dbs"></tbody></table></div></section>
    <section class="card" id="ops-replicas-card"><h2>Replicas on this node</h2>
      <div class="scroll"><table><thead><tr><th>Link</th><th>Database</th><th>Source</th><th>Apply</th><th>Connected</th><th>State</th><th class="n">Spooled</th><th>Actions</th></tr></thead>
      <tbody id="ops-replicas"></tbody></table></div>
      <p class="muted" id="no-replicas" hidden>No database on this node is a replica.</p></section>
    <section class="card" id="snapshots" hidden></section>
    <section class="card" id="restore-card" data-needs="operate"></section>`);
  const restoreCard = $('#restore-card', root);
  const restore = restoreCard ? restorePanel(restoreCard, session, dbs) : null;

  const result = $('#ops-result', root);
  const say = (markup) => { set(result, html`<div class="result card" role="status">${markup}</div>`); result.scrollIntoView({ block: 'nearest' }); };
  const fail = (what, err) => set(result, html`<div class="card"><h3>${what}</h3>${problem(err)}</div>`);

  async function snapshot(db) {
    try {
      const s = await api('POST', `${dbs}/${enc(db)}/snapshots`);
      say(html`<h3 id="snapshot-done">Snapshot of ${db} taken</h3><dl class="facts"><dt>Serial</dt><dd class="big" id="snapshot-serial">${num(s.serial)}</dd><dt>Size</dt><dd>${bytes(s.size_bytes)} in ${num(s.blocks)} blocks</dd></dl>`);
      toast(`Snapshot of ${db} at serial ${num(s.serial)}`);
      if (!$('#snapshots', root).hidden) listSnapshots(db);
    } catch (err) {
      fail(`Snapshot of ${db}`, err);
    }
  }

  async function listSnapshots(db) {
    const box = $('#snapshots', root);
    box.hidden = false;
    try {
      const list = await api('GET', `${dbs}/${enc(db)}/snapshots`);
      set(box, html`<h2>Snapshots of ${db}</h2>${list.length ? html`<div class="scroll"><table><thead><tr><th class="n">Serial</th><th class="n">Size</th><th class="n">Blocks</th><th>Taken</th></tr></thead><tbody>
        ${list.map((s) => html`<tr><td class="n">${num(s.serial)}</td><td class="n">${bytes(s.size_bytes)}</td><td class="n">${num(s.blocks)}</td><td>${ago(s.created_ms)}</td></tr>`)}</tbody></table></div>`
        : html`<p class="muted">No snapshots stored.</p>`}`);
    } catch (err) {
      set(box, problem(err));
    }
  }

  async function promote(db, link, force = false) {
    if (!force && !confirm(`Promote ${db} to a primary?\n\nIt stops following link ${link} for good and takes client writes. The source keeps its link until you delete it (a topology's "Fail over" re-points the other links too).`)) return;
    try {
      const p = await api('POST', `${dbs}/${enc(db)}/promote`, { force });
      say(html`<h3 id="promote-done">${db} is a primary</h3><dl class="facts"><dt>Serial</dt><dd class="big">${num(p.serial)}</dd><dt>Took</dt><dd class="big">${num(p.took_us)} µs</dd>
        <dt>Was following</dt><dd>link <code>${p.promoted_from_link}</code>: applied ${num(p.source_serial_applied)} of ${num(p.source_serial_announced)} announced</dd></dl>`);
      toast(`${db} promoted`);
    } catch (err) {
      set(result, html`<div class="card"><h3>Promote ${db}</h3>${problem(err)}
        ${err.code === 'not-caught-up' ? html`<p>It has not applied everything its source announced. <button class="danger small" data-force-promote="${db}" data-link="${link}">Promote anyway (lose the difference)</button></p>` : ''}</div>`);
    }
  }

  async function replica(action, link, db) {
    const verbs = { suspend: 'suspended', release: 'released', detach: 'detached' };
    if (action === 'detach' && !confirm(`Detach ${db} from link ${link}?\n\nThe connection ends, the registration goes and ${db} takes client writes again; the source's link stops with an error until it is deleted.`)) return;
    try {
      const out = action === 'detach'
        ? await api('DELETE', `${reps}/${enc(link)}`)
        : await api('POST', `${reps}/${enc(link)}/${action}`);
      say(html`<h3 data-done="${action}">Replica ${db} ${verbs[action]}</h3>${action === 'suspend' ? html`<p>It stores what arrives and applies nothing: readers see a frozen state until it is released.</p>`
        : action === 'release' ? html`<p>It applies what it stored, in order, and follows its source again${out && out.spooled !== undefined ? html` (${num(out.spooled)} spooled)` : ''}.</p>`
          : html`<p>${db} takes client writes again.</p>`}`);
      toast(`Replica ${db} ${verbs[action]}`);
    } catch (err) {
      fail(`${action} ${db}`, err);
    }
  }

  root.addEventListener('click', (e) => {
    const b = e.target.closest('button');
    if (!b) return;
    if (b.dataset.snapshot) snapshot(b.dataset.snapshot);
    if (b.dataset.snapshots) listSnapshots(b.dataset.snapshots);
    if (b.dataset.restore && restore) restore.choose(b.dataset.restore);
    if (b.dataset.promote) promote(b.dataset.promote, b.dataset.link);
    if (b.dataset.forcePromote) promote(b.dataset.forcePromote, b.dataset.link, true);
    if (b.dataset.replica) replica(b.dataset.replica, b.dataset.link, b.dataset.db);
  });

  function draw(snap) {
    const replicaOf = new Map(snap.replicas.map((r) => [r.database, r]));
    patchRows($('#ops-dbs', root), snap.databases, (db) => `${db.name}:${replicaOf.has(db.name)}`,
      (db) => {
        const r = replicaOf.get(db.name);
        return html`<tr data-db="${db.name}"><td>${db.name}</td><td class="n big" data-f="records"></td><td class="n" data-f="serial"></td><td class="n" data-f="snapshot"></td>
          <td>${r ? html`<span class="pill s-replica">replica</span> <span class="muted">of ${r.source_database}</span>` : html`<span class="pill s-primary">primary</span>`}</td>
          <td class="actions"><button class="small" data-needs="operate" data-snapshot="${db.name}">Take snapshot</button><button class="small ghost" data-snapshots="${db.name}">Snapshots</button><button class="small" data-needs="operate" data-restore="${db.name}">Restore…</button>${r ? html`<button class="small danger" data-needs="operate" data-promote="${db.name}" data-link="${r.link}">Promote…</button>` : ''}</td></tr>`;
      },
      (db) => ({ records: num(db.files.reduce((s, f) => s + f.records, 0)), serial: num(db.last_serial), snapshot: num(db.snapshot_serial) }));
    $('#no-replicas', root).hidden = snap.replicas.length > 0;
    patchRows($('#ops-replicas', root), snap.replicas, (r) => `${r.link}|${names.owner(r.link)?.label || ''}|${names.selfName() || ''}`,
      (r) => html`<tr data-replica="${r.link}"><td>${names.replicaCell(r)}</td><td>${r.database}</td><td><code title="${r.source_node}">${names.shortId(r.source_node)}</code> / ${r.source_database}</td><td>${r.apply}</td><td data-f="connected"></td><td data-f="state"></td><td class="n" data-f="spooled"></td>
        <td class="actions"><span data-needs="operate"><button class="small" data-replica="suspend" data-link="${r.link}" data-db="${r.database}">Suspend</button><button class="small" data-replica="release" data-link="${r.link}" data-db="${r.database}">Release</button><button class="small danger" data-replica="detach" data-link="${r.link}" data-db="${r.database}">Detach…</button><button class="small danger" data-promote="${r.database}" data-link="${r.link}">Promote…</button></span></td></tr>`,
      (r) => ({ connected: r.connected ? 'yes' : 'no', state: r.suspended ? pill('suspended') : pill('following'), spooled: num(r.spooled) }));
    for (const tr of root.querySelectorAll('#ops-replicas tr')) {
      const r = snap.replicas.find((x) => x.link === tr.dataset.replica);
      if (!r) continue;
      const s = tr.querySelector('[data-replica=suspend]');
      const rel = tr.querySelector('[data-replica=release]');
      if (s) s.hidden = r.suspended;
      if (rel) rel.hidden = !r.suspended;
    }
  }

  const off = live.onSnapshot(draw);
  names.load(session);
  const offNames = names.onNames(() => { if (live.latest) draw(live.latest); });
  return () => { off(); offNames(); if (restore) restore.stop(); };
}
