// Overview: this node and its peers, the tenant's databases (records, memory against
// quota), links (mode, state, lag, throughput), replicas and recent errors, all from
// the live stream: figures change in place every second, without reloads.

import { api } from './api.js';
import * as live from './live.js';
import { $, html, set, num, bytes, ago, pill, patchRows, problem } from './ui.js';

export default function overview(root, session) {
  set(root, html`<h1 class="view-title">Overview <small class="muted">tenant ${session.tenant}</small></h1>
    <section class="stats" aria-label="Key figures">
      <div class="stat"><span>Databases</span><strong id="st-dbs">–</strong></div>
      <div class="stat"><span>Records</span><strong id="st-records">–</strong></div>
      <div class="stat"><span>Links streaming</span><strong id="st-links">–</strong></div>
      <div class="stat"><span>Total lag (entries)</span><strong id="st-lag">–</strong></div>
      <div class="stat"><span>Throughput (entries/s)</span><strong id="st-tput">–</strong></div>
    </section>
    <div class="grid2">
      <section class="card"><h2>Nodes</h2><div id="nodes"><p class="muted">Loading…</p></div></section>
      <section class="card"><h2>Recent errors</h2><div id="errors"><p class="muted">Waiting for figures…</p></div></section>
    </div>
    <section class="card"><h2>Databases</h2>
      <div class="scroll"><table><thead><tr><th>Database</th><th class="n">Records</th><th>Memory used / quota</th><th class="n">Last serial</th><th>Role</th></tr></thead>
      <tbody id="dbs"></tbody></table></div></section>
    <section class="card"><h2>Links</h2>
      <div class="scroll"><table><thead><tr><th>Link</th><th>Source → target</th><th>Mode</th><th>State</th><th class="n">Lag entries</th><th class="n">Lag ms</th><th class="n">Throughput /s</th></tr></thead>
      <tbody id="links"></tbody></table></div>
      <p id="no-links" class="muted" hidden>No links start on this node. Create one under <a href="#/links">Links</a>.</p></section>
    <section class="card" id="replicas-card" hidden><h2>Replicas on this node</h2>
      <div class="scroll"><table><thead><tr><th>Link</th><th>Database</th><th>Source</th><th>Apply</th><th>Connected</th><th>Suspended</th></tr></thead>
      <tbody id="replicas"></tbody></table></div></section>`);

  let node = null;
  api('GET', '/v1/node').then((n) => { node = n; draw(live.latest); }).catch((err) => set($('#nodes', root), problem(err)));

  function draw(snap) {
    if (!snap) return;
    const records = (db) => db.files.reduce((s, f) => s + f.records, 0);
    const replicaDbs = new Set(snap.replicas.map((r) => r.database));
    $('#st-dbs', root).textContent = num(snap.databases.length);
    $('#st-records', root).textContent = num(snap.databases.reduce((s, db) => s + records(db), 0));
    $('#st-links', root).textContent = `${snap.links.filter((l) => l.status.state === 'streaming').length} / ${snap.links.length}`;
    $('#st-lag', root).textContent = num(snap.links.reduce((s, l) => s + (l.status.lag_entries || 0), 0));
    $('#st-tput', root).textContent = num(snap.links.reduce((s, l) => s + (l.status.throughput || 0), 0));

    if (node) {
      const peers = new Map();
      for (const l of snap.links) peers.set(l.target.url, { url: l.target.url, as: 'target of ' + l.id });
      for (const r of snap.replicas) peers.set('node ' + r.source_node, { url: 'node ' + r.source_node, as: 'source of ' + r.link });
      set($('#nodes', root), html`<dl class="node"><dt>This node</dt><dd><code>${node.id}</code> · v${node.version}</dd>
        <dt>Replication</dt><dd><code>${node.replication}</code> (protocol ${node.protocol_version})</dd>
        <dt>Peers</dt><dd>${peers.size ? html`<ul class="plain">${[...peers.values()].map((p) => html`<li><code>${p.url}</code> <span class="muted">${p.as}</span></li>`)}</ul>` : html`<span class="muted">none</span>`}</dd></dl>`);
    }

    patchRows($('#dbs', root), snap.databases, (db) => db.name,
      (db) => html`<tr data-db="${db.name}"><td><a href="#/data?db=${encodeURIComponent(db.name)}">${db.name}</a></td><td class="n big" data-f="records"></td><td data-f="memory"></td><td class="n" data-f="serial"></td><td data-f="role"></td></tr>`,
      (db) => {
        const pct = db.memory_quota_bytes ? Math.min(100, (100 * db.memory_bytes) / db.memory_quota_bytes) : 0;
        return {
          records: num(records(db)),
          memory: html`<div class="meter" role="meter" aria-valuemin="0" aria-valuemax="${db.memory_quota_bytes}" aria-valuenow="${db.memory_bytes}" aria-label="memory of ${db.name}"><div class="fill w${Math.round(pct / 5) * 5}"></div></div><span class="muted">${bytes(db.memory_bytes)} of ${bytes(db.memory_quota_bytes)}</span>`,
          serial: num(db.last_serial),
          role: replicaDbs.has(db.name) ? html`<span class="pill s-replica">replica</span>` : html`<span class="pill s-primary">primary</span>`,
        };
      });

    $('#no-links', root).hidden = snap.links.length > 0;
    patchRows($('#links', root), snap.links, (l) => l.id,
      (l) => html`<tr data-link="${l.id}"><td><a href="#/links?id=${encodeURIComponent(l.id)}"><code>${l.id}</code></a></td><td>${l.database} → <code>${l.target.url}</code> / ${l.target.database}</td><td>${l.mode} · ${l.apply}</td><td data-f="state"></td><td class="n big" data-f="lag_entries"></td><td class="n big" data-f="lag_ms"></td><td class="n big" data-f="throughput"></td></tr>`,
      (l) => ({ state: pill(l.paused && l.status.state !== 'paused' ? 'paused' : l.status.state), lag_entries: num(l.status.lag_entries), lag_ms: num(l.status.lag_ms), throughput: num(l.status.throughput) }));

    $('#replicas-card', root).hidden = snap.replicas.length === 0;
    patchRows($('#replicas', root), snap.replicas, (r) => r.link,
      (r) => html`<tr><td><code>${r.link}</code></td><td>${r.database}</td><td><code>${r.source_node}</code> / ${r.source_database}</td><td>${r.apply}</td><td data-f="connected"></td><td data-f="suspended"></td></tr>`,
      (r) => ({ connected: r.connected ? 'yes' : 'no', suspended: r.suspended ? 'yes' : 'no' }));

    const errors = snap.links.filter((l) => l.status.last_error).sort((a, b) => (b.status.last_error_ms || 0) - (a.status.last_error_ms || 0));
    set($('#errors', root), errors.length
      ? html`<ul class="errors">${errors.map((l) => html`<li><code>${l.id}</code> <span class="muted">${ago(l.status.last_error_ms)}</span><br>${l.status.last_error}</li>`)}</ul>`
      : html`<p class="muted ok-text">No link reports an error.</p>`);
  }

  return live.onSnapshot(draw);
}
