// Topology: the tenant's topology documents; one drawn as an SVG graph (graph.js) with
// its links coloured by live state and lag (GET …/topologies/{name}, refreshed, and the
// live stream for the links that start on this node); an editor for the document
// (nodes by API URL, links with mode, apply, error policy, B log and stages); Preview
// (?dry_run=true: the plan) before Apply; the server's validation errors shown on the
// link or node they name; delete; and fail over to a replica.

import { api, t, enc } from './api.js';
import * as live from './live.js';
import { graph, legend, linkLabel, isPostgres, pgBox } from './graph.js';
import { $, $$, html, set, num, ago, pill, patchRows, problem, showProblem, toast } from './ui.js';

/** How often the stored topology's live state is asked for (it spans other nodes). */
const REFRESH_MS = 2000;

function param(name) {
  return new URLSearchParams(location.hash.split('?')[1] || '').get(name);
}

const clone = (v) => JSON.parse(JSON.stringify(v));

function blankLink(names) {
  return {
    from: { node: names[0] || '', database: '' },
    to: { node: names[1] || names[0] || '', database: '' },
    mode: 'async', apply: 'mirror', stages: [], on_error: 'stop', b_log: true,
  };
}

/** Sorts the server's errors[] by the part they concern. */
function place(errors) {
  const at = { links: new Map(), nodes: new Map(), name: [], other: [] };
  const push = (map, k, v) => map.set(k, [...(map.get(k) || []), v]);
  for (const e of errors || []) {
    let m;
    if ((m = /^links\[(\d+)\](?:\.(.+))?$/.exec(e.path))) push(at.links, Number(m[1]), { field: m[2] || '', message: e.message, path: e.path });
    else if ((m = /^nodes\.([^.]+)(?:\.(.+))?$/.exec(e.path))) push(at.nodes, m[1], { field: m[2] || '', message: e.message, path: e.path });
    else if (e.path === 'name') at.name.push(e);
    else at.other.push(e);
  }
  return at;
}

const noMarks = () => ({ links: new Map(), nodes: new Map(), name: [], other: [] });

export function planTable(plan) {
  if (!plan || !plan.length) return html`<p class="muted">Nothing to change.</p>`;
  return html`<div class="scroll"><table class="plan"><thead><tr><th>Action</th><th>Link</th><th>On node</th><th>Why</th></tr></thead><tbody>
    ${plan.map((s) => html`<tr data-action="${s.action}"><td><span class="pill a-${s.action}">${s.action}</span></td><td><code>${s.link}</code></td><td>${s.node}</td>
      <td>${s.reason || ''}${s.id ? html` <span class="muted">(link <code>${s.id}</code>)</span>` : ''}</td></tr>`)}</tbody></table></div>`;
}

function options(values, current, labels = {}) {
  const list = values.includes(current) || current === undefined ? values : [...values, current];
  return list.map((v) => html`<option value="${v}" ${v === current ? 'selected' : ''}>${labels[v] || (values.includes(v) ? v : `${v} (not declared)`)}</option>`);
}

export default function topology(root, session) {
  const base = `${t(session.tenant)}/topologies`;
  set(root, html`<h1 class="view-title">Topology <small class="muted">tenant ${session.tenant}</small></h1>
    <section class="card"><h2>Topologies</h2>
      <div id="topo-list"><p class="muted">Loading…</p></div>
      <div class="form-row"><button id="new-topology" class="primary" data-needs="operate">New topology</button></div></section>
    <section class="card" id="topo-card" hidden>
      <div class="topo-head"><h2 id="topo-title"></h2><span id="topo-applied" class="muted"></span></div>
      <div class="graph-box" id="topo-graph"></div>
      ${legend()}
      <div id="topo-live" hidden>
        <h3>Links, live</h3>
        <div class="scroll"><table class="cards"><thead><tr><th>Link</th><th>State</th><th class="n">Lag entries</th><th class="n">Lag ms</th><th class="n">Throughput /s</th><th>Mode</th><th>Id</th><th>Actions</th></tr></thead>
          <tbody id="topo-links"></tbody></table></div>
        <div id="topo-stale"></div>
        <div id="topo-failover"></div>
        <div class="form-row" data-needs="operate"><label class="check"><input type="checkbox" id="failover-force"> Force a fail over to a replica that has not applied everything its source announced (the difference is lost)</label></div>
        <div id="failover-result" aria-live="polite"></div>
      </div>
      <div id="topo-editor" data-needs="operate">
        <h3>Document</h3>
        <div class="form-row"><label>Name <input id="topo-name" required placeholder="eu" autocomplete="off"></label></div>
        <div class="field-error" data-err="name"></div>
        <h4>Nodes</h4>
        <div class="scroll"><table class="nodes-edit"><thead><tr><th>Node</th><th>API URL</th><th></th></tr></thead><tbody id="topo-nodes"></tbody></table></div>
        <form id="add-node-form" class="form-row">
          <label>Node name <input id="node-name" placeholder="a" autocomplete="off" pattern="[A-Za-z0-9._\\-]+"></label>
          <label class="grow">API URL <input id="node-url" placeholder="http://10.0.0.2:7070" autocomplete="off"></label>
          <button id="add-node" type="submit">Add node</button></form>
        <div id="node-form-error"></div>
        <h4>Links</h4>
        <div id="topo-link-rows"></div>
        <div class="form-row"><button id="add-link" type="button">Add link</button></div>
        <datalist id="plugin-names"></datalist><datalist id="db-names"></datalist>
        <div class="form-row topo-actions">
          <button id="preview" class="primary" type="button">Preview</button>
          <button id="apply" class="primary" type="button" hidden>Apply</button>
          <button id="discard" class="ghost" type="button">Discard changes</button></div>
        <div id="topo-problem" role="alert"></div>
        <div id="plan" aria-live="polite"></div>
      </div>
    </section>`);

  const card = $('#topo-card', root);
  const editor = $('#topo-editor', root);
  let draft = null; // the document being edited
  let shown = null; // GET …/topologies/{name} of the stored topology open (null: a new one)
  let entries = new Map(); // link label → {id, status, error}
  let marks = noMarks();
  let previewed = null; // the draft as previewed (JSON), which Apply sends
  const localBad = new Set(); // fields whose text does not parse yet
  let timer = null;
  let closed = false;

  async function loadList() {
    try {
      const list = await api('GET', base);
      set($('#topo-list', root), list.length ? html`<div class="scroll"><table class="cards"><thead><tr><th>Name</th><th class="n">Nodes</th><th class="n">Links</th><th>Applied</th><th>Actions</th></tr></thead><tbody>
        ${list.map((x) => html`<tr data-topology="${x.name}"><td data-col="link"><a href="#/topology?name=${enc(x.name)}" class="link-name">${x.name}</a></td><td class="n" data-label="Nodes">${num(x.nodes)}</td><td class="n" data-label="Links">${num(x.links)}</td><td data-col="wide" data-label="Applied">${ago(x.applied_ms)}</td>
          <td class="actions"><a class="button small" href="#/topology?name=${enc(x.name)}">Open</a><button class="small danger" data-needs="operate" data-delete="${x.name}">Delete</button></td></tr>`)}
        </tbody></table></div>` : html`<p class="muted">No topologies yet.${session.may.operate ? ' Start one with “New topology”.' : ''}</p>`);
    } catch (err) {
      set($('#topo-list', root), problem(err));
    }
  }

  // Suggestions for the editor's fields: the registry's plugins, this node's databases.
  api('GET', `${t(session.tenant)}/plugins`).then((list) => {
    const dl = $('#plugin-names', root);
    if (dl) set(dl, list.map((p) => html`<option value="${p.name}@${p.version}">${p.role}</option>`));
  }).catch(() => {});
  api('GET', `${t(session.tenant)}/databases`).then((list) => {
    const dl = $('#db-names', root);
    if (dl) set(dl, list.map((d) => html`<option value="${d.name}"></option>`));
  }).catch(() => {});

  // ---- drawing ---------------------------------------------------------------------

  function drawGraph() {
    set($('#topo-graph', root), graph(draft, entries, marks));
  }

  function drawLive() {
    const box = $('#topo-live', root);
    box.hidden = !shown;
    if (!shown) return;
    // Keyed by link id (and what the row shows of the definition): an Apply that
    // replaces a link (a new id), creates or deletes one redraws its row.
    patchRows($('#topo-links', root), shown.links, (l) => [l.link, l.id || '', l.mode, l.apply].join('\u0001'),
      (l) => html`<tr data-label="${l.link}" data-id="${l.id || ''}"><td data-col="link"><strong class="link-name">${l.link.replace(' -> ', ' → ')}</strong></td>
        <td data-f="state" data-label="State"></td><td class="n big" data-f="lag_entries" data-label="Lag entries"></td><td class="n big" data-f="lag_ms" data-label="Lag ms"></td><td class="n big" data-f="throughput" data-label="Throughput /s"></td>
        <td data-col="mode" data-label="Mode">${l.mode} · ${l.apply}</td><td data-col="id" data-label="Id">${l.id ? html`<code>${l.id}</code>` : html`<span class="muted">–</span>`}</td>
        <td class="actions">${isPostgres(l.to) ? '' : html`<button class="small" data-needs="operate" data-failover-node="${l.to.node}" data-failover-db="${l.to.database}" title="Promote ${l.to.node}/${l.to.database} and re-point the links of ${l.from.node}/${l.from.database}">Fail over to ${l.to.node}/${l.to.database}</button>`}</td></tr>`,
      (l) => {
        const e = entries.get(l.link) || l;
        const s = e.status;
        return {
          state: s ? pill(s.state) : html`<span class="err">${e.error || 'no status'}</span>`,
          lag_entries: s ? num(s.lag_entries) : '–',
          lag_ms: s ? num(s.lag_ms) : '–',
          throughput: s ? num(s.throughput) : '–',
        };
      });
    set($('#topo-stale', root), shown.stale && shown.stale.length
      ? html`<div class="notice" id="stale-links"><strong>Stale links</strong> — left on nodes that did not answer (an old primary that is down); the next Apply deletes them:
        <ul class="plain">${shown.stale.map((s) => html`<li><code>${s.link}</code> on node ${s.node} (link <code>${s.id}</code>)</li>`)}</ul></div>`
      : '');
    // The last failover: where the promoted log begins and what each follower did.
    const f = shown.failover;
    set($('#topo-failover', root), f
      ? html`<div class="notice" id="failover-record"><strong>Last failover</strong> — <code>${f.old_primary.node}/${f.old_primary.database}</code> → <code>${f.promoted.node}/${f.promoted.database}</code> at serial <span id="fr-serial">${num(f.serial)}</span>, epoch <code>${String(f.epoch)}</code>, took ${num(f.took_ms)} ms
        <div class="scroll"><table><thead><tr><th>follower</th><th>state</th><th>continued from serial</th><th>entries discarded</th><th>snapshots</th><th>bytes sent</th></tr></thead>
        <tbody>${(f.followers || []).map((x) => html`<tr data-follower="${isPostgres(x.to) ? pgBox(x.to) : x.to.node}"><td><code>${isPostgres(x.to) ? `${pgBox(x.to)}.${x.to.schema || 'public'}` : `${x.to.node}/${x.to.database}`}</code></td><td>${x.state ? pill(x.state) : html`<span class="err">${x.error || 'no status'}</span>`}</td>
          <td>${x.started_at == null ? '–' : num(x.started_at)}</td><td class="fr-discarded">${x.discarded_entries == null ? '–' : num(x.discarded_entries)}</td><td>${x.bootstraps == null ? '–' : num(x.bootstraps)}</td><td>${x.bytes_sent == null ? '–' : num(x.bytes_sent)}</td></tr>`)}</tbody></table></div></div>`
      : '');
  }

  function nodeNames() {
    return Object.keys(draft.nodes);
  }

  function drawEditor() {
    if (!editor || !draft) return;
    $('#topo-name', root).value = draft.name || '';
    const names = nodeNames();
    set($('#topo-nodes', root), names.length ? names.map((n) => html`<tr data-node-row="${n}"><td><code>${n}</code></td>
        <td><input data-k="url" data-node="${n}" value="${draft.nodes[n].url}" aria-label="API URL of node ${n}" autocomplete="off"><div class="field-error"></div></td>
        <td><button type="button" class="small danger" data-rm-node="${n}">Remove</button></td></tr>`)
      : html`<tr><td colspan="3" class="muted">No nodes yet: add each node by a name and its API URL.</td></tr>`);
    const urlInput = $('#node-url', root);
    if (!names.length && !urlInput.value) urlInput.value = location.origin;
    set($('#topo-link-rows', root), draft.links.length ? draft.links.map((l, i) => html`<fieldset class="link-edit" data-link-index="${i}">
        <legend>links[${i}] <code>${linkLabel(l)}</code></legend>
        <div class="link-grid">
          <label>From node <select data-k="from.node">${options(names, l.from.node)}</select></label>
          <label>From database <input data-k="from.database" value="${l.from.database}" list="db-names" placeholder="shop" autocomplete="off"></label>
          ${isPostgres(l.to) ? html`<label>To PostgreSQL <input data-k="to.postgres" value="${l.to.postgres}" placeholder="postgresql://user:password@host:5432/db" autocomplete="off" spellcheck="false" title="shown with its password masked; kept as stored unless you type a new one"></label>
          <label>Schema <input data-k="to.schema" value="${l.to.schema || ''}" placeholder="public" autocomplete="off"></label>
          <label class="check"><input type="checkbox" data-k="create_tables" ${l.create_tables ? 'checked' : ''}> Create tables</label>`
    : html`<label>To node <select data-k="to.node">${options(names, l.to.node)}</select></label>
          <label>To database <input data-k="to.database" value="${l.to.database}" list="db-names" placeholder="shop" autocomplete="off"></label>`}
          <label title="async: loosely coupled; sync: commits wait for the quorum">Mode <select data-k="mode">${options(['async', 'sync'], l.mode || 'async')}</select></label>
          <label title="mirror: block-identical; logical: through stages">Apply <select data-k="apply">${options(['mirror', 'logical'], l.apply || 'mirror')}</select></label>
          <label title="quarantine keeps rejected records as dead letters">On stage error <select data-k="on_error">${options(['stop', 'quarantine'], l.on_error || 'stop')}</select></label>
          <label class="check"><input type="checkbox" data-k="b_log" ${l.b_log === false ? '' : 'checked'}> B log</label>
        </div>
        ${(l.stages || []).length ? html`<div class="stages">${l.stages.map((s, j) => html`<div class="stage-edit" data-stage="${j}">
            <label>Stage ${j + 1} plugin <input data-s="plugin" list="plugin-names" value="${s.plugin}" placeholder="name@version" autocomplete="off"></label>
            <label class="grow">Config (JSON) <textarea data-s="config" rows="1" spellcheck="false">${JSON.stringify(s.config === undefined ? {} : s.config)}</textarea></label>
            <button type="button" class="small danger" data-rm-stage="${j}">Remove stage</button>
            <div class="field-error" data-stage-err></div></div>`)}</div>` : ''}
        <div class="field-error" data-link-err></div>
        <div class="form-row link-tools"><button type="button" class="small" data-add-stage>Add stage</button><button type="button" class="small danger" data-rm-link>Remove link</button>
          <small class="muted">Stages: filters and transforms need apply “logical”; interrelation rules fit either.</small></div>
      </fieldset>`) : html`<p class="muted">No links yet.</p>`);
    markParts();
  }

  /** Puts each of the server's messages on the part it names. */
  function markParts() {
    if (!editor) return;
    set($('[data-err=name]', root), marks.name.map((e) => html`<p class="err">⚠ ${e.message}</p>`));
    $('#topo-name', root).setAttribute('aria-invalid', marks.name.length ? 'true' : 'false');
    for (const fs of $$('fieldset.link-edit', root)) {
      const list = marks.links.get(Number(fs.dataset.linkIndex)) || [];
      fs.classList.toggle('invalid', list.length > 0);
      set($('[data-link-err]', fs), list.map((e) => html`<p class="err" data-path="${e.path}">⚠ <code>${e.path}</code> ${e.message}</p>`));
      for (const el of $$('[data-k]', fs)) {
        const bad = list.some((e) => e.field && (el.dataset.k === e.field || el.dataset.k.startsWith(e.field + '.')));
        el.setAttribute('aria-invalid', bad ? 'true' : 'false');
      }
    }
    for (const tr of $$('tr[data-node-row]', root)) {
      const list = marks.nodes.get(tr.dataset.nodeRow) || [];
      tr.classList.toggle('invalid', list.length > 0);
      set($('.field-error', tr), list.map((e) => html`<p class="err" data-path="${e.path}">⚠ ${e.message}</p>`));
      $('input[data-k=url]', tr).setAttribute('aria-invalid', list.length ? 'true' : 'false');
    }
  }

  function drawTitle() {
    set($('#topo-title', root), shown ? html`Topology <code>${shown.name}</code>` : html`New topology`);
    set($('#topo-applied', root), shown ? html`applied ${ago(shown.applied_ms)}` : html`not applied yet`);
  }

  function drawAll() {
    card.hidden = false;
    drawTitle();
    drawGraph();
    drawLive();
    drawEditor();
  }

  /** The document changed: a preview no longer stands. */
  function changed({ structure = false } = {}) {
    if (structure) marks = noMarks();
    previewed = null;
    if (!editor) return;
    $('#apply', root).hidden = true;
    if ($('#plan table, #plan p', root)) set($('#plan', root), html`<p class="muted">The document changed: preview it again before applying.</p>`);
  }

  // ---- opening -----------------------------------------------------------------------

  function stopTimer() {
    clearInterval(timer);
    timer = null;
  }

  function take(answer) {
    shown = answer;
    entries = new Map(answer.links.map((l) => [l.link, { id: l.id, status: l.status, error: l.error }]));
  }

  async function open(name, { keep = false } = {}) {
    stopTimer();
    try {
      const answer = await api('GET', `${base}/${enc(name)}`);
      if (closed) return;
      take(answer);
      draft = clone(answer.document);
      if (!keep) {
        marks = noMarks();
        previewed = null;
        if (editor) { set($('#plan', root), ''); set($('#topo-problem', root), ''); $('#apply', root).hidden = true; }
        set($('#failover-result', root), '');
      }
      drawAll();
      timer = setInterval(refresh, REFRESH_MS);
    } catch (err) {
      card.hidden = false;
      shown = null;
      set($('#topo-graph', root), problem(err));
    }
  }

  let refreshing = false;
  async function refresh() {
    if (!shown || refreshing) return;
    refreshing = true;
    const name = shown.name;
    try {
      const answer = await api('GET', `${base}/${enc(name)}`);
      if (closed || !shown || shown.name !== name) return;
      take(answer);
      drawTitle();
      drawGraph();
      drawLive();
    } catch (err) {
      if (err.status === 404) { stopTimer(); set($('#topo-graph', root), problem(err)); }
    } finally {
      refreshing = false;
    }
  }

  // The links that start on this node update from the live stream in between.
  const off = live.onSnapshot((snap) => {
    if (!shown) return;
    let any = false;
    for (const l of snap.links) {
      for (const e of entries.values()) {
        if (e.id === l.id) { e.status = l.status; e.error = undefined; any = true; }
      }
    }
    if (any) { drawGraph(); drawLive(); }
  });

  function startNew() {
    stopTimer();
    shown = null;
    entries = new Map();
    marks = noMarks();
    previewed = null;
    draft = { name: '', nodes: {}, links: [] };
    history.replaceState(null, '', '#/topology');
    set($('#plan', root), '');
    set($('#topo-problem', root), '');
    $('#apply', root).hidden = true;
    drawAll();
    $('#topo-name', root).focus();
  }

  // ---- editing -----------------------------------------------------------------------

  function setPath(obj, path, value) {
    const keys = path.split('.');
    let at = obj;
    for (const k of keys.slice(0, -1)) at = at[k] ||= {};
    at[keys[keys.length - 1]] = value;
  }

  function onField(e) {
    const el = e.target;
    if (el.id === 'topo-name') {
      draft.name = el.value.trim();
      changed();
      return;
    }
    if (el.dataset.node && el.dataset.k === 'url') {
      draft.nodes[el.dataset.node].url = el.value.trim();
      drawGraph();
      changed();
      return;
    }
    const fs = el.closest('fieldset.link-edit');
    if (!fs) return;
    const l = draft.links[Number(fs.dataset.linkIndex)];
    if (el.dataset.k) {
      setPath(l, el.dataset.k, el.type === 'checkbox' ? el.checked : el.value.trim());
      if (el.dataset.k === 'to.schema' && !l.to.schema) delete l.to.schema;
      $('legend code', fs).textContent = linkLabel(l);
    } else if (el.dataset.s) {
      const box = el.closest('.stage-edit');
      const j = Number(box.dataset.stage);
      const key = `${fs.dataset.linkIndex}/${j}`;
      const msg = $('[data-stage-err]', box);
      if (el.dataset.s === 'plugin') {
        l.stages[j].plugin = el.value.trim();
      } else {
        try {
          const v = el.value.trim() ? JSON.parse(el.value) : {};
          l.stages[j].config = v;
          localBad.delete(key);
          set(msg, '');
          el.setAttribute('aria-invalid', 'false');
        } catch (err) {
          localBad.add(key);
          set(msg, html`<p class="err">Config is not JSON: ${err.message}</p>`);
          el.setAttribute('aria-invalid', 'true');
        }
      }
    } else {
      return;
    }
    drawGraph();
    changed();
  }

  function structural() {
    localBad.clear();
    changed({ structure: true });
    drawEditor();
    drawGraph();
  }

  if (editor) {
    editor.addEventListener('input', onField);
    editor.addEventListener('change', onField);
    $('#add-node-form', root).addEventListener('submit', (e) => {
      e.preventDefault();
      const name = $('#node-name', root).value.trim();
      const url = $('#node-url', root).value.trim();
      const box = $('#node-form-error', root);
      if (!name || !url) return showProblem(box, { title: 'A node needs a name and its API URL', detail: 'e.g. a and http://10.0.0.1:7070', code: 'client' });
      if (draft.nodes[name]) return showProblem(box, { title: `Node ${name} is declared already`, detail: 'change its URL in its row', code: 'client' });
      showProblem(box, null);
      draft.nodes[name] = { url };
      $('#node-name', root).value = '';
      $('#node-url', root).value = '';
      structural();
      $('#node-name', root).focus();
    });
    editor.addEventListener('click', (e) => {
      const b = e.target.closest('button');
      if (!b) return;
      const fs = b.closest('fieldset.link-edit');
      const l = fs && draft.links[Number(fs.dataset.linkIndex)];
      if (b.dataset.rmNode !== undefined) {
        // Its links stay, naming a node the document no longer declares: the preview says so.
        delete draft.nodes[b.dataset.rmNode];
        structural();
      } else if (b.id === 'add-link') {
        draft.links.push(blankLink(nodeNames()));
        structural();
        const last = $$('fieldset.link-edit', root).pop();
        if (last) $('[data-k="from.database"]', last).focus();
      } else if (b.dataset.rmLink !== undefined && l) {
        draft.links.splice(Number(fs.dataset.linkIndex), 1);
        structural();
      } else if (b.dataset.addStage !== undefined && l) {
        (l.stages ||= []).push({ plugin: '', config: {} });
        structural();
      } else if (b.dataset.rmStage !== undefined && l) {
        l.stages.splice(Number(b.dataset.rmStage), 1);
        structural();
      } else if (b.id === 'preview') {
        preview();
      } else if (b.id === 'apply') {
        applyDoc();
      } else if (b.id === 'discard') {
        if (shown) { draft = clone(shown.document); structural(); } else startNew();
      }
    });
  }

  function refused(err) {
    const box = $('#topo-problem', root);
    if (err.code === 'topology-invalid' && Array.isArray(err.problem.errors)) {
      marks = place(err.problem.errors);
      drawEditor();
      drawGraph();
      set(box, html`${problem(err)}<ul class="where">${err.problem.errors.map((e) => html`<li><code>${e.path}</code> ${e.message}</li>`)}</ul>`);
      const first = $('fieldset.link-edit.invalid, tr.invalid', root);
      if (first) first.scrollIntoView({ block: 'nearest' });
    } else {
      set(box, html`${problem(err)}${err.problem && Array.isArray(err.problem.done) && err.problem.done.length
        ? html`<p>Carried out before the failure (applying again finishes the rest):</p>${planTable(err.problem.done)}` : ''}`);
    }
  }

  async function preview() {
    const box = $('#topo-problem', root);
    if (localBad.size) {
      showProblem(box, { title: 'Fix the highlighted fields first', detail: 'a stage config is not JSON', code: 'client' });
      return;
    }
    const sent = JSON.stringify(draft);
    const button = $('#preview', root);
    button.disabled = true;
    set($('#plan', root), html`<p class="muted">Checking with the nodes…</p>`);
    try {
      const answer = await api('POST', `${base}?dry_run=true`, draft);
      if (JSON.stringify(draft) !== sent) return; // edited meanwhile
      marks = noMarks();
      markParts();
      drawGraph();
      set(box, '');
      previewed = sent;
      set($('#plan', root), html`<h4>Plan <small class="muted">preview: nothing is changed until Apply</small></h4>${planTable(answer.plan)}`);
      $('#apply', root).hidden = false;
      $('#apply', root).focus();
    } catch (err) {
      set($('#plan', root), '');
      refused(err);
    } finally {
      button.disabled = false;
    }
  }

  async function applyDoc() {
    if (!previewed || previewed !== JSON.stringify(draft)) {
      changed();
      return;
    }
    const button = $('#apply', root);
    button.disabled = true;
    set($('#plan', root), html`<p class="muted">Applying…</p>`);
    try {
      const answer = await api('POST', base, JSON.parse(previewed));
      toast(`Topology ${answer.name} applied`);
      set($('#topo-problem', root), '');
      previewed = null;
      button.hidden = true;
      set($('#plan', root), html`<h4>Applied <small class="muted">${answer.plan.length} steps</small></h4>${planTable(answer.plan)}`);
      history.replaceState(null, '', `#/topology?name=${enc(answer.name)}`);
      loadList();
      await open(answer.name, { keep: true });
    } catch (err) {
      set($('#plan', root), '');
      refused(err);
    } finally {
      button.disabled = false;
    }
  }

  // ---- list and live actions ---------------------------------------------------------

  root.addEventListener('click', async (e) => {
    const b = e.target.closest('button');
    if (!b) return;
    if (b.id === 'new-topology') startNew();
    if (b.dataset.delete) {
      const name = b.dataset.delete;
      if (!confirm(`Delete topology ${name} and every link it created? The replicas keep their data and stay read-only until detached.`)) return;
      try {
        await api('DELETE', `${base}/${enc(name)}`);
        toast(`Topology ${name} deleted`);
        if (shown && shown.name === name) { stopTimer(); shown = null; card.hidden = true; history.replaceState(null, '', '#/topology'); }
      } catch (err) {
        set($('#topo-list', root), problem(err));
        return;
      }
      loadList();
    }
    if (b.dataset.failoverNode && shown) failover(b.dataset.failoverNode, b.dataset.failoverDb);
  });

  async function failover(node, database) {
    const name = shown.name;
    const force = $('#failover-force', root)?.checked || false;
    if (!confirm(`Fail over topology ${name} to ${node}/${database}?\n\nIt is promoted to a primary and takes writes; the old primary's other links come from it; the old primary rejoins as an async replica; followers keep what they hold of the new primary's history.${force ? '\n\nForced: updates it has not applied are lost.' : ''}`)) return;
    const box = $('#failover-result', root);
    set(box, html`<p class="muted">Failing over to ${node}/${database}…</p>`);
    try {
      const out = await api('POST', `${base}/${enc(name)}/failover`, { node, database, force });
      const p = out.promoted || {};
      set(box, html`<div class="result" role="status" id="failover-done"><h4>Failed over to <code>${node}/${database}</code></h4>
        <dl class="facts"><dt>Promoted</dt><dd><span class="big" id="fo-serial">serial ${num(p.serial)}</span> <span class="muted">(${p.database}, was following link <code>${p.promoted_from_link}</code>; applied ${num(p.source_serial_applied)} of ${num(p.source_serial_announced)} announced)</span></dd>
          <dt>Took</dt><dd class="big" id="fo-took">${num(p.took_us)} µs</dd>
          <dt>Old primary</dt><dd>${out.old_primary ? html`<code>${out.old_primary.node}/${out.old_primary.database}</code> rejoins as an async replica of the new primary, continued by serial (dropping entries the new primary never had) or from a snapshot when its log does not allow` : ''}</dd>
          <dt>Epoch</dt><dd><code>${String(p.epoch)}</code>; quorum ${p.quorum ? html`k = ${num(p.quorum.k)}, ${num(p.quorum.timeout_ms)} ms` : 'unchanged'}</dd></dl>
        <h4>New plan</h4>${planTable(out.applied && out.applied.plan)}</div>`);
      toast(`Failed over to ${node}/${database}`);
      await open(name, { keep: true });
    } catch (err) {
      set(box, html`${problem(err)}${err.problem && Array.isArray(err.problem.errors) ? html`<ul class="where">${err.problem.errors.map((x) => html`<li><code>${x.path}</code> ${x.message}</li>`)}</ul>` : ''}
        ${err.code === 'topology-apply-failed' && /not-caught-up|announced/.test(err.detail) ? html`<p class="muted">Tick “Force” above to promote it anyway.</p>` : ''}`);
    }
  }

  loadList();
  const want = param('name');
  if (want) open(want);

  return () => { closed = true; stopTimer(); off(); };
}

