// A link's dead letters: the records its stages rejected under `quarantine`, with the
// error; re-drive one as stored, or edit it first (a JSON editor checked as you type),
// or drop it. A re-drive runs the link's stages again: the outcome (applied / filtered)
// is shown, or the stage's refusal (422 redrive-rejected) on the dead letter's row, which
// stays.

import { api, enc } from './api.js';
import { $, html, set, ago, problem, toast } from './ui.js';

const OPS = ['insert', 'update', 'delete'];

/** What is wrong with an edited record (the server checks the same), or null. */
export function recordProblem(text) {
  let v;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return `not JSON: ${e.message}`;
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) return 'the record is a JSON object {op, file, key, alt, data}';
  if (!OPS.includes(v.op)) return `"op" is ${OPS.join(', ')}`;
  for (const k of ['file', 'key']) if (typeof v[k] !== 'string' || !v[k]) return `"${k}" is a non-empty string`;
  if (v.alt !== undefined && v.alt !== null) {
    if (typeof v.alt !== 'object' || Array.isArray(v.alt)) return '"alt" is an object of strings';
    for (const [k, a] of Object.entries(v.alt)) if (typeof a !== 'string') return `alternate key "${k}" is not a string`;
  }
  if (v.op !== 'delete' && (v.data === undefined || v.data === null)) return 'the record needs "data"';
  return null;
}

/**
 * Shows link `base` (…/links/{id})'s dead letters in `box`; returns load(). The
 * buttons are for roles that may operate (data-needs), and the server checks anyway.
 */
export function deadLetters(box, base) {
  let list = [];

  async function load() {
    try {
      list = await api('GET', `${base}/dead-letters`);
    } catch (err) {
      set(box, problem(err));
      return;
    }
    const outcome = $('#dl-outcome', box)?.innerHTML || '';
    set(box, html`<div id="dl-outcome" role="status" aria-live="polite"></div>${list.length ? html`<div class="scroll"><table class="dead-letters"><thead><tr><th>#</th><th>Record</th><th>Plugin</th><th>Error</th><th>Outcome</th><th>When</th><th>Actions</th></tr></thead><tbody>
      ${list.map((d) => html`<tr data-dl="${d.id}"><td>${d.id}</td><td><code>${d.record.op} ${d.record.file}/${d.record.key}</code><pre class="json small">${JSON.stringify(d.record.data)}</pre></td><td>${d.plugin}</td><td class="err">${d.error}</td><td>${d.outcome}</td><td>${ago(d.at_ms)}</td>
        <td class="actions"><span data-needs="operate"><button class="small" data-redrive="${d.id}" title="Run it through the link's stages again, as stored">Re-drive</button><button class="small" data-edit="${d.id}">Edit…</button><button class="danger small" data-drop="${d.id}">Drop</button></span>
          <div class="dl-result" data-result="${d.id}"></div></td></tr>
        <tr class="dl-editor" data-editor="${d.id}" hidden><td colspan="7"></td></tr>`)}
      </tbody></table></div>` : html`<p class="muted">No dead letters.</p>`}`);
    $('#dl-outcome', box).innerHTML = outcome;
  }

  function openEditor(id) {
    const d = list.find((x) => String(x.id) === String(id));
    const row = $(`tr[data-editor="${id}"]`, box);
    if (!d || !row) return;
    row.hidden = false;
    set(row.firstElementChild, html`<div class="dl-edit">
      <label>Record to re-drive (JSON: op, file, key, alt, data) <textarea id="dl-text-${d.id}" data-dl-text="${d.id}" rows="8" spellcheck="false">${JSON.stringify(d.record, null, 2)}</textarea></label>
      <p class="dl-valid ok-text" data-valid="${d.id}" aria-live="polite">valid record</p>
      <div class="form-row"><button class="primary small" data-send="${d.id}">Re-drive edited</button><button class="ghost small" data-close="${d.id}">Cancel</button></div></div>`);
    $('textarea', row).focus();
  }

  function check(id) {
    const text = $(`[data-dl-text="${id}"]`, box);
    const line = $(`[data-valid="${id}"]`, box);
    const send = $(`[data-send="${id}"]`, box);
    const wrong = recordProblem(text.value);
    text.setAttribute('aria-invalid', wrong ? 'true' : 'false');
    line.className = 'dl-valid ' + (wrong ? 'err' : 'ok-text');
    line.textContent = wrong ? `Not re-drivable: ${wrong}` : 'valid record';
    send.disabled = Boolean(wrong);
    return wrong ? null : JSON.parse(text.value);
  }

  async function redrive(id, record) {
    const result = $(`[data-result="${id}"]`, box);
    set(result, html`<span class="muted">re-driving…</span>`);
    try {
      const out = await api('POST', `${base}/dead-letters/${enc(id)}/redrive`, record ? { record } : {});
      const r = out.record || {};
      const said = out.outcome === 'applied'
        ? html`<p class="result-line ok-text" data-outcome="applied">Dead letter ${id} re-driven: <strong>applied</strong> — <code>${r.op} ${r.file}/${r.key}</code> is on the replica.</p>`
        : html`<p class="result-line" data-outcome="${out.outcome}">Dead letter ${id} re-driven: <strong>${out.outcome}</strong> — a stage filtered it out, nothing was applied.</p>`;
      toast(`Dead letter ${id}: ${out.outcome}`);
      await load();
      set($('#dl-outcome', box), said);
    } catch (err) {
      set(result, problem(err));
    }
  }

  box.addEventListener('input', (e) => {
    if (e.target.dataset.dlText) check(e.target.dataset.dlText);
  });
  box.addEventListener('click', async (e) => {
    const b = e.target.closest('button');
    if (!b) return;
    if (b.dataset.redrive) redrive(b.dataset.redrive, null);
    if (b.dataset.edit) openEditor(b.dataset.edit);
    if (b.dataset.close) { const row = $(`tr[data-editor="${b.dataset.close}"]`, box); if (row) row.hidden = true; }
    if (b.dataset.send) {
      const record = check(b.dataset.send);
      if (record) redrive(b.dataset.send, record);
    }
    if (b.dataset.drop) {
      try {
        await api('DELETE', `${base}/dead-letters/${enc(b.dataset.drop)}`);
        toast(`Dead letter ${b.dataset.drop} dropped`);
      } catch (err) {
        toast(err.message, 'bad');
      }
      load();
    }
  });

  return load;
}
