// Plugins: the tenant's registry (the server's built-in plugins, marked "built-in", then
// the tenant's uploads); upload a .wasm (name, version, role); a version's
// exports, size, SHA-256 and config schema; a config form generated from that schema; a
// dry-run tester on a pasted batch or one sampled from a database (input and output side
// by side, errors, the plugin's log lines); and
// swapping the version onto a live logical link (PUT …/links/{id}/stages).

import { api, t, enc } from './api.js';
import * as live from './live.js';
import { $, html, set, bytes, num, problem, showProblem, toast } from './ui.js';

const SAMPLE = [
  { op: 'insert', file: 'orders', key: 'eu-1', alt: { customer: 'ann' }, data: { total: 3 } },
  { op: 'insert', file: 'orders', key: 'us-1', alt: { customer: 'bob' }, data: { total: 5 } },
  { op: 'update', file: 'lines', key: 'eu-1/1', data: { sku: 'A-1', qty: 2 } },
];

// A resolver's sample: records[i] (local), remote[i] and base[i] are one record's versions.
const RESOLVER_SAMPLE = {
  local: [
    { op: 'update', file: 'users', key: 'u1', timestamp: 10, origin: 1, data: { name: 'Anna', city: 'Oslo' } },
    { op: 'update', file: 'users', key: 'u2', timestamp: 30, origin: 1, data: { tier: 1 } },
  ],
  remote: [
    { op: 'update', file: 'users', key: 'u1', timestamp: 20, origin: 2, data: { name: 'Ann', city: 'Bergen' } },
    { op: 'update', file: 'users', key: 'u2', timestamp: 20, origin: 2, data: { tier: 2 } },
  ],
  base: [{ op: 'update', file: 'users', key: 'u1', timestamp: 5, origin: 3, data: { name: 'Ann', city: 'Oslo' } }, null],
};

function param(name) {
  return new URLSearchParams(location.hash.split('?')[1] || '').get(name);
}

/** Form fields for a JSON schema's properties (object schemas; other shapes get JSON). */
function schemaForm(schema) {
  const props = schema && schema.type === 'object' && schema.properties;
  if (!props || !Object.keys(props).length) {
    return html`<label class="wide">Config (JSON) <textarea data-cfg-json rows="4" spellcheck="false">{}</textarea></label>`;
  }
  const required = new Set(schema.required || []);
  return Object.entries(props).map(([name, p]) => {
    const label = html`${name}${required.has(name) ? ' *' : ''}${p.description ? html` <small class="muted">${p.description}</small>` : ''}`;
    if (Array.isArray(p.enum)) {
      return html`<label>${label}<select data-cfg="${name}" data-kind="enum">${required.has(name) ? '' : html`<option value="">(unset)</option>`}${p.enum.map((v) => html`<option value="${JSON.stringify(v)}">${String(v)}</option>`)}</select></label>`;
    }
    switch (p.type) {
      case 'boolean':
        return html`<label class="check"><input type="checkbox" data-cfg="${name}" data-kind="boolean"> ${label}</label>`;
      case 'integer':
      case 'number':
        return html`<label>${label}<input type="number" data-cfg="${name}" data-kind="${p.type}" ${p.minimum !== undefined ? html`min="${p.minimum}"` : ''} ${p.maximum !== undefined ? html`max="${p.maximum}"` : ''}></label>`;
      case 'string':
        return html`<label>${label}<input data-cfg="${name}" data-kind="string"></label>`;
      case 'array':
        if (p.items && ['string', 'integer', 'number'].includes(p.items.type)) {
          return html`<label>${label} <small class="muted">one per line</small><textarea rows="3" data-cfg="${name}" data-kind="array-${p.items.type}" spellcheck="false"></textarea></label>`;
        }
      // falls through: other arrays as JSON
      default:
        return html`<label>${label} <small class="muted">JSON</small><textarea rows="2" data-cfg="${name}" data-kind="json" spellcheck="false"></textarea></label>`;
    }
  });
}

/** The config object the generated form describes. Throws on a field that does not parse. */
function readConfig(box) {
  const json = box.querySelector('[data-cfg-json]');
  if (json) return JSON.parse(json.value || '{}');
  const cfg = {};
  for (const el of box.querySelectorAll('[data-cfg]')) {
    const name = el.dataset.cfg;
    const kind = el.dataset.kind;
    if (kind === 'boolean') { if (el.checked) cfg[name] = true; continue; }
    const v = el.value.trim();
    if (!v) continue;
    if (kind === 'enum') cfg[name] = JSON.parse(v);
    else if (kind === 'integer' || kind === 'number') cfg[name] = Number(v);
    else if (kind === 'string') cfg[name] = v;
    else if (kind.startsWith('array-')) {
      const items = v.split('\n').map((s) => s.trim()).filter(Boolean);
      cfg[name] = kind === 'array-string' ? items : items.map(Number);
    } else {
      try { cfg[name] = JSON.parse(v); } catch (e) { throw new Error(`${name}: ${e.message}`); }
    }
  }
  return cfg;
}

export default function plugins(root, session) {
  const base = `${t(session.tenant)}/plugins`;
  set(root, html`<h1 class="view-title">Plugins</h1>
    <div class="grid2">
      <section class="card"><h2>Registry</h2><div id="plugin-list"><p class="muted">Loading…</p></div></section>
      <section class="card" data-needs="operate"><h2>Upload a plugin</h2>
        <form id="upload" class="stack">
          <label>WebAssembly component (.wasm) <input type="file" name="file" accept=".wasm,application/wasm" required id="upload-file"></label>
          <div class="form-row"><label>Name <input name="name" required pattern="[A-Za-z0-9._\\-]+" id="upload-name" placeholder="eu-only"></label>
          <label>Version <input name="version" required id="upload-version" placeholder="1.0.0"></label>
          <label>Role <select name="role" id="upload-role"><option>filter</option><option>transform</option><option>rule</option><option>resolver</option></select></label></div>
          <div id="upload-error"></div>
          <button class="primary" id="upload-button">Upload</button></form></section>
    </div>
    <section class="card" id="plugin-detail" hidden></section>`);

  async function loadList() {
    try {
      const list = await api('GET', base);
      const own = list.filter((p) => !p.builtin).length;
      set($('#plugin-list', root), html`<div class="scroll"><table><thead><tr><th>Plugin</th><th>Role</th><th>What it does</th><th class="n">Size</th></tr></thead><tbody>
        ${list.map((p) => html`<tr data-plugin="${p.name}@${p.version}" class="${p.builtin ? 'builtin' : ''}"><td><a href="#/plugins?p=${enc(p.name + '@' + p.version)}">${p.name}@${p.version}</a>${p.builtin ? html` <span class="pill s-builtin" title="comes with the server: every tenant has it, nothing to upload">built-in</span>` : ''}</td><td>${p.role}</td><td class="muted">${p.description || ''}</td><td class="n">${bytes(p.size)}</td></tr>`)}
        </tbody></table></div>${own ? '' : html`<p class="muted" id="no-uploads">No plugins of your own yet: the built-in ones above are ready to use as stages; open one to dry-run it.</p>`}`);
    } catch (err) {
      set($('#plugin-list', root), problem(err));
    }
  }

  const upload = $('#upload', root);
  if (upload) {
    $('#upload-file', root).addEventListener('change', (e) => {
      const f = e.target.files[0];
      if (f && !upload.name.value) upload.name.value = f.name.replace(/\.wasm$/, '').replace(/[^A-Za-z0-9._-]/g, '-');
    });
    upload.addEventListener('submit', async (e) => {
      e.preventDefault();
      const file = upload.file.files[0];
      try {
        const bytesOf = await file.arrayBuffer();
        const info = await api('PUT', `${base}/${enc(upload.name.value)}/${enc(upload.version.value)}?role=${enc(upload.role.value)}`, { raw: bytesOf, type: 'application/wasm' });
        showProblem($('#upload-error', root), null);
        toast(`Uploaded ${info.name}@${info.version}`);
        location.hash = `#/plugins?p=${enc(info.name + '@' + info.version)}`;
      } catch (err) {
        showProblem($('#upload-error', root), err);
      }
    });
  }

  async function showDetail(spec) {
    const box = $('#plugin-detail', root);
    const at = spec.lastIndexOf('@');
    const name = spec.slice(0, at);
    const version = spec.slice(at + 1);
    box.hidden = false;
    let p;
    try {
      p = await api('GET', `${base}/${enc(name)}/${enc(version)}`);
    } catch (err) {
      set(box, problem(err));
      return;
    }
    const schema = p.config_schema;
    const resolver = p.role === 'resolver';
    set(box, html`<h2>${p.name}@${p.version} <span class="pill s-primary">${p.role}</span>${p.builtin ? html` <span class="pill s-builtin">built-in</span>` : ''}</h2>
      ${p.builtin ? html`<p class="muted" id="builtin-note">${p.description ? html`${p.description}. ` : ''}Comes with the server (version ${p.version}): every tenant has it without an upload; it cannot be deleted, and its name is reserved.</p>` : ''}
      <dl class="facts"><dt>Size</dt><dd class="big">${bytes(p.size)}</dd><dt>Exports</dt><dd>${(p.exports || []).map((x) => html`<code>${x}</code> `)}</dd>
        <dt>SHA-256</dt><dd><code class="wrap">${p.sha256}</code></dd><dt>Compile</dt><dd>${p.builtin && !p.compile_ms ? html`<span class="muted">on first use</span>` : html`${num(p.compile_ms)} ms`}</dd></dl>
      <details><summary>Config schema</summary><pre class="json" id="schema">${JSON.stringify(schema, null, 2)}</pre></details>
      <h3>Configuration</h3>
      <div class="form-grid" id="config-form">${schemaForm(schema)}</div>
      <p class="muted">Config sent: <code id="config-preview">{}</code></p>
      <div id="config-error"></div>
      <section data-needs="operate">
        <h3>Dry run</h3>
        <div class="tester">
          <div>${resolver ? html`<label>Local versions (JSON array of records)<textarea id="dry-input" rows="8" spellcheck="false">${JSON.stringify(RESOLVER_SAMPLE.local, null, 2)}</textarea></label>
            <label>Remote versions (remote[i] conflicts with local[i])<textarea id="dry-remote" rows="8" spellcheck="false">${JSON.stringify(RESOLVER_SAMPLE.remote, null, 2)}</textarea></label>
            <label>Base versions (base[i] is what both overwrote; null for none; leave empty for no base at all)<textarea id="dry-base" rows="6" spellcheck="false">${JSON.stringify(RESOLVER_SAMPLE.base, null, 2)}</textarea></label>`
            : html`<label>Input batch (JSON array of records)<textarea id="dry-input" rows="12" spellcheck="false">${JSON.stringify(SAMPLE, null, 2)}</textarea></label>`}
            <div class="form-row"><label>Sample from <select id="sample-db"></select></label>
              <label>file <input id="sample-file" value="orders" size="10"></label>
              <button id="sample" type="button">Sample 10 records</button></div>
            <div id="sample-error"></div></div>
          <div><span class="label">Output</span><div id="dry-output" class="output"><p class="muted">Run the batch to see what the plugin makes of it.</p></div></div>
        </div>
        <button class="primary" id="dry-run">Run dry-run</button>
        ${resolver ? html`<p class="muted">A resolver decides conflicts of mutual topologies; it is not a stage of a link's chain.</p>` : html`<h3>Use on a live link</h3>
        <div class="form-row"><label>Logical link <select id="swap-link"></select></label>
          <button id="swap" class="primary">Swap onto link</button></div>
        <p class="muted" id="swap-preview"></p>
        <div id="swap-error"></div>`}
      </section>`);

    const form = $('#config-form', box);
    const preview = () => {
      try {
        $('#config-preview', box).textContent = JSON.stringify(readConfig(form));
        showProblem($('#config-error', box), null);
        return readConfig(form);
      } catch (err) {
        showProblem($('#config-error', box), { title: 'The config does not parse', detail: err.message, code: 'client' });
        return null;
      }
    };
    form.addEventListener('input', preview);
    form.addEventListener('change', preview);
    preview();

    const runBtn = $('#dry-run', box);
    if (runBtn) {
      runBtn.addEventListener('click', async () => {
        const out = $('#dry-output', box);
        const body = {};
        try {
          const list = (id, what) => {
            const v = JSON.parse($(id, box).value);
            if (!Array.isArray(v)) throw new Error(`${what} must be a JSON array of records`);
            return v;
          };
          body.records = list('#dry-input', resolver ? 'the local versions' : 'the batch');
          if (resolver) {
            body.remote = list('#dry-remote', 'the remote versions');
            if ($('#dry-base', box).value.trim()) body.base = list('#dry-base', 'the base versions');
          }
        } catch (err) {
          set(out, problem({ title: 'The batch is not valid', detail: err.message, code: 'client' }));
          return;
        }
        const config = preview();
        if (config === null) return;
        body.config = config;
        try {
          const r = await api('POST', `${base}/${enc(p.name)}/${enc(p.version)}/dry-run`, body);
          drawResult(out, p.role, body.records, r, body.remote);
        } catch (err) {
          set(out, problem(err));
        }
      });
      // A sampled batch: the first records of a database's file, as the tester takes them.
      const dbs = (live.latest?.databases || []).map((d) => d.name);
      set($('#sample-db', box), dbs.length ? dbs.map((n) => html`<option value="${n}">${n}</option>`) : html`<option value="">(no database)</option>`);
      $('#sample', box).addEventListener('click', async () => {
        const db = $('#sample-db', box).value;
        const file = $('#sample-file', box).value.trim();
        showProblem($('#sample-error', box), null);
        if (!db || !file) return;
        try {
          const r = await api('GET', `${t(session.tenant)}/databases/${enc(db)}/files/${enc(file)}/records?limit=10`);
          const batch = (r.records || []).map((rec) => ({ op: 'insert', file, key: rec.key, alt: rec.alt || {}, data: rec.data }));
          $('#dry-input', box).value = JSON.stringify(batch, null, 2);
        } catch (err) {
          showProblem($('#sample-error', box), err);
        }
      });
      const linkSel = $('#swap-link', box);
      if (!linkSel) return;
      const logical = (live.latest?.links || []).filter((l) => l.apply === 'logical');
      set(linkSel, logical.length ? logical.map((l) => html`<option value="${l.id}">${l.id} (${l.database} → ${l.target.database})</option>`) : html`<option value="">(no logical link)</option>`);
      const stagesFor = (link, config) => {
        const stage = { plugin: `${p.name}@${p.version}`, config };
        const stages = link.stages.map((s) => ({ plugin: s.plugin, config: s.config }));
        const i = stages.findIndex((s) => s.plugin.split('@')[0] === p.name);
        if (i >= 0) stages[i] = stage; else stages.push(stage);
        return stages;
      };
      const showSwap = () => {
        const link = logical.find((l) => l.id === linkSel.value);
        $('#swap-preview', box).textContent = link ? `Stages after the swap: ${stagesFor(link, preview() || {}).map((s) => s.plugin).join(' → ')}` : '';
      };
      linkSel.addEventListener('change', showSwap);
      form.addEventListener('input', showSwap);
      showSwap();
      $('#swap', box).addEventListener('click', async () => {
        const link = logical.find((l) => l.id === linkSel.value);
        const config = preview();
        if (!link || config === null) {
          showProblem($('#swap-error', box), { title: 'Nothing to swap onto', detail: 'choose a logical link', code: 'client' });
          return;
        }
        try {
          const updated = await api('PUT', `${t(session.tenant)}/links/${enc(link.id)}/stages`, stagesFor(link, config));
          showProblem($('#swap-error', box), null);
          toast(`Link ${link.id} now runs ${updated.stages.map((s) => s.plugin).join(' → ')}`);
          link.stages = updated.stages;
          showSwap();
        } catch (err) {
          showProblem($('#swap-error', box), err);
        }
      });
    }
  }

  function drawResult(out, role, input, r, remote) {
    const errs = new Map((r.errors || []).map((e) => [e.index, e.message]));
    const rec = (x) => html`<code>${x.op} ${x.file}/${x.key}</code><pre class="json small">${JSON.stringify(x.data)}</pre>`;
    let rows;
    if (role === 'filter') {
      rows = input.map((x, i) => html`<tr class="${r.kept[i] ? 'kept' : 'dropped'}"><td>${rec(x)}</td><td>${r.kept[i] ? html`<span class="pill s-streaming">kept</span>` : html`<span class="pill s-stopped">dropped</span>`}${errs.has(i) ? html`<div class="err">${errs.get(i)}</div>` : ''}</td></tr>`);
    } else if (role === 'transform') {
      const n = Math.max(input.length, r.records.length);
      rows = Array.from({ length: n }, (_, i) => html`<tr><td>${input[i] ? rec(input[i]) : ''}</td><td>${r.records[i] ? (r.records[i].error ? html`<span class="err">${r.records[i].error}</span>` : rec(r.records[i])) : html`<span class="muted">–</span>`}${errs.has(i) ? html`<div class="err">${errs.get(i)}</div>` : ''}</td></tr>`);
    } else if (role === 'rule') {
      rows = input.map((x, i) => html`<tr><td>${rec(x)}</td><td>${r.depends.filter((d) => d.index === i).map((d) => html`<code>depends on ${d.file}/${d.key}</code><br>`)}${errs.has(i) ? html`<div class="err">${errs.get(i)}</div>` : ''}</td></tr>`);
    } else {
      // A resolver: local and remote side by side, then what the site ends with.
      const pill = { local: 's-streaming', remote: 's-primary', merged: 's-replica' };
      rows = input.map((x, i) => {
        const d = r.decisions[i] || {};
        return html`<tr class="decision-${d.decision}"><td>${rec(x)}<div class="muted">remote:</div>${remote[i] ? rec(remote[i]) : ''}</td><td><span class="pill ${pill[d.decision] || ''}">${d.decision}</span><pre class="json small">${JSON.stringify(d.data)}</pre>${errs.has(i) ? html`<div class="err">${errs.get(i)}</div>` : ''}</td></tr>`;
      });
    }
    const summary = role === 'filter' ? `${r.kept.filter(Boolean).length} of ${input.length} kept`
      : role === 'resolver' ? `${input.length} conflicts, ${r.decisions.filter((d) => d.decision === 'merged').length} merged`
        : `${input.length} in`;
    set(out, html`<table class="side"><thead><tr><th>Input</th><th>Output</th></tr></thead><tbody>${rows}</tbody></table>
      <p class="muted" id="dry-summary">${summary} · ${(r.errors || []).length} errors</p>
      <h4>Plugin log</h4>${(r.log || []).length ? html`<pre class="log-lines" id="dry-log">${r.log.join('\n')}</pre>` : html`<p class="muted" id="dry-log">No log lines.</p>`}`);
  }

  loadList();
  const spec = param('p');
  if (spec) showDetail(spec);
}
