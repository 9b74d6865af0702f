// Small DOM helpers shared by the views: escaping templates, problems, toasts, number
// formats, role gating and in-place row updates (so live figures change without
// re-rendering what the user is focused on).

const RAW = Symbol('raw');

/** Marks trusted markup (built by html``) for inclusion without escaping. */
export function raw(s) {
  return { [RAW]: String(s) };
}

export function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function part(v) {
  if (v && v[RAW] !== undefined) return v[RAW];
  if (Array.isArray(v)) return v.map(part).join('');
  return esc(v);
}

/** A template whose interpolations are escaped (arrays are joined, raw() passes). */
export function html(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => { out += part(v) + strings[i + 1]; });
  return raw(out);
}

export function set(el, markup) {
  el.innerHTML = part(markup);
  gate(el);
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** What the current token may do ({read, write, operate, manage, node_admin}). */
export const session = { may: {}, who: null };

/** Removes every [data-needs=perm] element the role may not use. */
export function gate(root) {
  for (const el of root.querySelectorAll('[data-needs]')) {
    if (!session.may[el.dataset.needs]) el.remove();
  }
}

export function num(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString('en-US', { maximumFractionDigits: 1 });
}

export function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toLocaleString('en-US', { maximumFractionDigits: i ? 1 : 0 })} ${units[i]}`;
}

/** A time (ms since the epoch) as the console writes every date: local, `2026-12-06
 * 04:46:01.999` (year first, 24 hours, milliseconds), the same on every page. */
export function when(ms) {
  if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return '–';
  const d = new Date(Math.floor(ms));
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

export function ago(ms) {
  if (!ms) return '';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return when(ms);
}

/** A problem+json error as a block. */
export function problem(err) {
  return html`<div class="problem" role="alert"><strong>${err.title || 'Error'}</strong>
    ${err.detail ? html`<span>${err.detail}</span>` : ''}
    ${err.code ? html`<code>${err.code}</code>` : ''}</div>`;
}

export function showProblem(el, err) {
  set(el, err ? problem(err) : '');
}

export function toast(text, kind = 'ok') {
  const box = document.getElementById('toasts');
  const item = document.createElement('div');
  item.className = 'toast ' + kind;
  item.textContent = text;
  box.append(item);
  setTimeout(() => item.remove(), 5000);
}

export function pill(state) {
  return html`<span class="pill s-${state}">${state}</span>`;
}

/**
 * Keeps the rows of `tbody` in step with `items` (keyed by key(item)): rows are rebuilt
 * only when the set of keys changes; otherwise each [data-f] cell gets fresh text from
 * fields(item) and the row keeps its buttons and focus.
 */
export function patchRows(tbody, items, key, row, fields) {
  const keys = items.map(key).join('\u0000');
  if (tbody.dataset.keys !== keys) {
    tbody.dataset.keys = keys;
    set(tbody, items.map(row));
  }
  const rows = [...tbody.children];
  items.forEach((item, i) => {
    const tr = rows[i];
    if (!tr) return;
    const values = fields(item);
    for (const cell of tr.querySelectorAll('[data-f]')) {
      const v = values[cell.dataset.f];
      if (v === undefined) continue;
      const markup = part(v);
      if (cell.innerHTML !== markup) cell.innerHTML = markup;
    }
  });
}

/** Reads a form's named fields into an object. */
export function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}
