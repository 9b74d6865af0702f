// Overview: this node and its peers, the tenant's databases (records, memory against
// quota), links (mode, state, lag, throughput), replicas and recent errors, all from
// the live stream: figures change in place every second, without reloads.

import { api } from './api.js';
import * as live from './live.js';
import * as names from './names.js';
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
      <div class="scroll"><table class="cards"><thead><tr><th>Link</th><th>State</th><th class="n">Lag entries</th><th class="n">Lag ms</th><th class="n">Throughput /s</th><th>Mode</th></tr></thead>
      <tbody id="links"></tbody></table></div>
      <p id="no-links" class="muted" hidden>No links start on this node. Create one under <a href="#/links">Links</a>.</p></section>
    <section class="card" id="usage-card"><h2>Usage <small class="muted">tenant ${session.tenant}, against its quotas</small></h2><div id="usage"><p class="muted">Loading…</p></div></section>
    <section class="card" id="cluster-card" hidden><h2>Cluster <small class="muted" id="cluster-name"></small></h2><div id="cluster"></div></section>
    <section class="card" id="replicas-card" hidden><h2>Replicas on this node</h2>
      <div class="scroll"><table><thead><tr><th>Link</th><th>Database</th><th>Source</th><th>Apply</th><th>Connected</th><th>Suspended</th></tr></thead>
      <tbody id="replicas"></tbody></table></div></section>`);

  // The tenant's usage (GET …/usage, every few seconds) beside the write rate the live
  // stream shows (updates per second: the databases' serials advancing).
  let usage = null;
  let rate = null;
  let prev = null;
  const limit = (v, fmt) => (v === null || v === undefined ? html`<span class="muted">no quota</span>` : html`of ${fmt(v)}`);
  function drawUsage() {
    const box = $('#usage', root);
    if (!usage) return;
    const u = usage;
    set(box, html`<dl class="usage">
      <div><dt>Writes</dt><dd><strong class="big" id="usage-ops">${rate === null ? '–' : num(rate)}</strong> updates/s <span class="muted">${u.operations.per_sec ? html`quota ${num(u.operations.per_sec)} operations/s` : 'no operation quota'}; ${num(u.operations.last_second)} client operations in the last second</span></dd></div>
      <div><dt>Memory</dt><dd><strong class="big" id="usage-memory">${bytes(u.memory_bytes.used)}</strong> ${limit(u.memory_bytes.limit, bytes)}</dd></div>
      <div><dt>CPU</dt><dd><strong class="big" id="usage-cpu">${(u.cpu_ms.last_second / 10).toFixed(1)}%</strong> of a core <span class="muted">writes and replica applies, last second</span></dd></div>
      <div><dt>Disk</dt><dd><strong class="big" id="usage-disk">${bytes(u.disk_bytes)}</strong> on disk <span class="muted">${bytes(u.storage_bytes.used)} of log and snapshots ${limit(u.storage_bytes.limit, bytes)}</span></dd></div>
      <div><dt>Log backlog</dt><dd><strong class="big" id="usage-backlog">${bytes(u.log_backlog_bytes)}</strong> <span class="muted">logged, not yet on disk</span></dd></div>
      <div><dt>Plugins</dt><dd><strong class="big">${num(u.plugins.used)}</strong> uploaded ${limit(u.plugins.limit, num)}</dd></div>
      <div><dt>Requests</dt><dd>${u.requests.per_sec ? html`<strong class="big">${num(u.requests.available)}</strong> available of ${num(u.requests.per_sec)}/s` : html`<span class="muted">no request quota</span>`}</dd></div>
      <div><dt>Writers waiting</dt><dd><strong class="big">${num(u.concurrent_writes.waiting)}</strong> ${limit(u.concurrent_writes.limit, num)}</dd></div></dl>`);
  }
  async function loadUsage() {
    try {
      usage = await api('GET', `/v1/tenants/${encodeURIComponent(session.tenant)}/usage`);
      drawUsage();
    } catch (err) {
      set($('#usage', root), problem(err));
    }
  }
  loadUsage();
  const usageTimer = setInterval(loadUsage, 2000);

  // The cluster this node is a member of (GET /v1/cluster): members, the primary of each
  // replicated database, failovers. A node without [cluster] answers 404: no card.
  let clusterTimer = null;
  async function loadCluster() {
    let c;
    try {
      c = await api('GET', '/v1/cluster');
    } catch (err) {
      if (err.code === 'not-clustered') clearInterval(clusterTimer);
      else set($('#cluster', root), problem(err));
      return;
    }
    $('#cluster-card', root).hidden = false;
    $('#cluster-name', root).textContent = c.name;
    const when = (ms) => new Date(ms).toISOString().replace('T', ' ').slice(0, 19);
    set($('#cluster', root), html`<div class="scroll"><table id="cluster-members"><thead><tr><th>Member</th><th>API</th><th>State</th></tr></thead><tbody>
        ${c.members.map((m) => html`<tr><td><strong class="node-name">${m.node}</strong></td><td><code>${m.url}</code></td><td>${pill(m.state === 'up' ? 'streaming' : 'error')} ${m.state}</td></tr>`)}</tbody></table></div>
      <div class="scroll"><table id="cluster-primaries"><thead><tr><th>Database</th><th>Primary</th><th class="n">Serial at takeover</th><th>Since</th></tr></thead><tbody>
        ${c.primaries.map((p) => html`<tr><td>${p.database}</td><td><strong class="node-name">${p.node}</strong> <code>${p.url}</code></td><td class="n">${num(p.serial)}</td><td>${when(p.since_ms)}</td></tr>`)}</tbody></table></div>
      ${c.failovers.length ? html`<div class="scroll"><table id="cluster-failovers"><thead><tr><th>When</th><th>Database</th><th>From → to</th><th class="n">Serial</th><th class="n">Lost entries</th><th class="n">Took ms</th></tr></thead><tbody>
        ${c.failovers.slice().reverse().map((f) => html`<tr><td>${when(f.at_ms)}</td><td>${f.database}</td><td>${f.from} → ${f.to}</td><td class="n">${num(f.serial)}</td><td class="n">${num(f.lost_entries)}</td><td class="n">${num(f.took_ms)}</td></tr>`)}</tbody></table></div>` : html`<p class="muted">No failover yet.</p>`}`);
  }
  loadCluster();
  clusterTimer = setInterval(loadCluster, 2000);

  let node = null;
  api('GET', '/v1/node').then((n) => { node = n; draw(live.latest); }).catch((err) => set($('#nodes', root), problem(err)));

  function draw(snap) {
    if (!snap) return;
    const records = (db) => db.files.reduce((s, f) => s + f.records, 0);
    const replicaDbs = new Set(snap.replicas.map((r) => r.database));
    const serials = snap.databases.reduce((sum, db) => sum + (db.last_serial || 0), 0);
    if (prev && snap.at_ms > prev.at) rate = Math.max(0, ((serials - prev.serials) * 1000) / (snap.at_ms - prev.at));
    if (!prev || snap.at_ms > prev.at) prev = { at: snap.at_ms, serials };
    drawUsage();
    $('#st-dbs', root).textContent = num(snap.databases.length);
    $('#st-records', root).textContent = num(snap.databases.reduce((s, db) => s + records(db), 0));
    $('#st-links', root).textContent = `${snap.links.filter((l) => l.status.state === 'streaming').length} / ${snap.links.length}`;
    $('#st-lag', root).textContent = num(snap.links.reduce((s, l) => s + (l.status.lag_entries || 0), 0));
    $('#st-tput', root).textContent = num(snap.links.reduce((s, l) => s + (l.status.throughput || 0), 0));

    if (node) {
      const peers = new Map();
      for (const l of snap.links) {
        if (l.target.postgres) {
          const p = peers.get(l.target.postgres) || { name: names.pgTarget(l.target), named: false, url: l.target.postgres, as: [] };
          p.as.push(`target of ${names.linkLabel(l)}`);
          peers.set(l.target.postgres, p);
          continue;
        }
        const p = peers.get(l.target.url) || { name: names.nodeName(l.target.url), named: names.named(l.target.url), url: l.target.url, as: [] };
        p.as.push(`target of ${names.linkLabel(l)}`);
        peers.set(l.target.url, p);
      }
      for (const r of snap.replicas) peers.set('node ' + r.source_node, { name: names.shortId(r.source_node), named: false, url: r.source_node, as: [`source of ${r.source_database} → ${r.database}`] });
      const me = names.selfName();
      set($('#nodes', root), html`<dl class="node"><dt>This node</dt><dd id="self-name">${me ? html`<strong class="node-name">${me}</strong> ` : ''}<code title="${node.id}">${node.id}</code> · v${node.version}</dd>
        <dt>Replication</dt><dd><code>${node.replication}</code> (protocol ${node.protocol_version})</dd>
        <dt>Peers</dt><dd>${peers.size ? html`<ul class="plain" id="peers">${[...peers.values()].map((p) => html`<li>${p.named ? html`<strong class="node-name">${p.name}</strong> ` : ''}<code title="${p.url}">${p.named ? p.url : p.name}</code> <span class="muted">${p.as.join(', ')}</span></li>`)}</ul>` : html`<span class="muted">none</span>`}</dd></dl>`);
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
    names.explain(session, snap.links);
    patchRows($('#links', root), snap.links, (l) => `${l.id}|${names.linkLabel(l)}|${names.owner(l.id)?.topology || ''}`,
      (l) => html`<tr data-link="${l.id}"><td data-col="link">${names.linkCell(l)}</td><td data-f="state" data-label="State"></td><td class="n big" data-f="lag_entries" data-label="Lag entries"></td><td class="n big" data-f="lag_ms" data-label="Lag ms"></td><td class="n big" data-f="throughput" data-label="Throughput /s"></td><td data-col="mode" data-label="Mode">${l.mode} · ${l.apply}</td></tr>`,
      (l) => ({ state: pill(l.paused && l.status.state !== 'paused' ? 'paused' : l.status.state), lag_entries: num(l.status.lag_entries), lag_ms: num(l.status.lag_ms), throughput: num(l.status.throughput) }));

    $('#replicas-card', root).hidden = snap.replicas.length === 0;
    patchRows($('#replicas', root), snap.replicas, (r) => `${r.link}|${names.owner(r.link)?.label || ''}|${names.selfName() || ''}`,
      (r) => html`<tr><td>${names.replicaCell(r)}</td><td>${r.database}</td><td><code title="${r.source_node}">${names.shortId(r.source_node)}</code> / ${r.source_database}</td><td>${r.apply}</td><td data-f="connected"></td><td data-f="suspended"></td></tr>`,
      (r) => ({ connected: r.connected ? 'yes' : 'no', suspended: r.suspended ? 'yes' : 'no' }));

    const errors = snap.links.filter((l) => l.status.last_error).sort((a, b) => (b.status.last_error_ms || 0) - (a.status.last_error_ms || 0));
    set($('#errors', root), errors.length
      ? html`<ul class="errors">${errors.map((l) => html`<li><strong>${names.linkLabel(l)}</strong> <code class="muted">${l.id}</code> <span class="muted">${ago(l.status.last_error_ms)}</span><br>${l.status.last_error}</li>`)}</ul>`
      : html`<p class="muted ok-text">No link reports an error.</p>`);
  }

  names.load(session);
  const offNames = names.onNames(() => draw(live.latest));
  const off = live.onSnapshot(draw);
  return () => { off(); offNames(); clearInterval(usageTimer); clearInterval(clusterTimer); };
}

