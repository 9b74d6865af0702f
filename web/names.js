// Names a person reads instead of ids: a node's name (from the tenant's topologies, which
// name each node by its API URL, or the node's own configured `name`), a link as
// `a/shop → c/shop`, and which topology manages a link. Loaded once per session and again
// when a link appears that no topology explains yet; views redraw on `onNames`.

import { api, t, enc } from './api.js';
import { html } from './ui.js';

const byUrl = new Map(); // API URL (no trailing slash) -> node name
const owners = new Map(); // link id -> {topology, label}
const listeners = new Set();
let self = null; // this node: {id, name}
let tenant = null;
let loading = null;
let asked = ''; // the unexplained link ids the last load was asked about

const norm = (url) => String(url || '').replace(/\/+$/, '');

/** Calls fn whenever names were (re)loaded; answers the function that stops it. */
export function onNames(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Loads the tenant's topologies (their node names and managed links) and this node. */
export function load(session, { force = false } = {}) {
  if (loading && !force && tenant === session.tenant) return loading;
  tenant = session.tenant;
  loading = (async () => {
    try {
      const [node, list] = await Promise.all([
        api('GET', '/v1/node').catch(() => null),
        api('GET', `${t(session.tenant)}/topologies`).catch(() => []),
      ]);
      if (node) self = node;
      const docs = await Promise.all(list.map((x) => api('GET', `${t(session.tenant)}/topologies/${enc(x.name)}`).catch(() => null)));
      byUrl.clear();
      owners.clear();
      for (const doc of docs.filter(Boolean)) {
        for (const [name, n] of Object.entries(doc.document?.nodes || {})) byUrl.set(norm(n.url), name);
        for (const l of doc.links || []) if (l.id) owners.set(l.id, { topology: doc.name, label: l.link });
      }
    } finally {
      for (const fn of listeners) fn();
    }
  })();
  return loading;
}

/** Asks again when the live stream shows links no topology explains (at most once per set). */
export function explain(session, links) {
  const unknown = links.filter((l) => !owners.has(l.id)).map((l) => l.id).sort().join(',');
  if (unknown && unknown !== asked) {
    asked = unknown;
    load(session, { force: true });
  }
}

/** This node's name: its configured name, else the name a topology gives its URL. */
export function selfName() {
  return self?.name || byUrl.get(norm(location.origin)) || null;
}

/** The name a topology gives the node at `url`, else its host:port. */
export function nodeName(url) {
  const n = byUrl.get(norm(url));
  if (n) return n;
  try { return new URL(url).host; } catch { return String(url || ''); }
}

/** Whether `url` has a name from a topology. */
export function named(url) {
  return byUrl.has(norm(url));
}

/** A PostgreSQL target as a person reads it (the API masks its password): `PostgreSQL 10.0.0.5:5432/shop.public`. */
export function pgTarget(t) {
  let where = String(t.postgres || '');
  try { const u = new URL(where); where = `${u.host}${u.pathname}`; } catch { /* key-value form: shown as given */ }
  return `PostgreSQL ${where}.${t.schema || 'public'}`;
}

/** A link from this node as a person reads it: `a/shop → c/shop`. */
export function linkLabel(l) {
  if (l.target.postgres) return `${selfName() || 'this node'}/${l.database} → ${pgTarget(l.target)}`;
  return `${selfName() || 'this node'}/${l.database} → ${nodeName(l.target.url)}/${l.target.database}`;
}

/** The topology that manages link `id`, if any: {topology, label}. */
export function owner(id) {
  return owners.get(id) || null;
}

/** A node id shortened for reading (the full id stays in a title). */
export function shortId(id) {
  const s = String(id || '');
  return s.length > 12 ? s.slice(0, 10) + '…' : s;
}

/** A link as a person reads it (`a/shop → c/shop`), its id, and the topology managing it. */
export function linkCell(l) {
  const o = owner(l.id);
  return html`<a href="#/links?id=${enc(l.id)}" class="link-name">${linkLabel(l)}</a>
    <div class="sub"><code>${l.id}</code>${o ? html` · <span class="managed" title="applying topology ${o.topology} puts this link back as it declares">topology <a href="#/topology?name=${enc(o.topology)}">${o.topology}</a></span>` : ''}</div>`;
}

/** A replica on this node as a person reads it: the topology's `a/shop → b/shop` when a
 * topology stored here manages its link, else `n1234abcd…/shop → this node/shop`. */
export function replicaCell(r) {
  const o = owner(r.link);
  const label = o ? o.label.replace(' -> ', ' → ') : `${shortId(r.source_node)}/${r.source_database} → ${selfName() || 'this node'}/${r.database}`;
  return html`<span class="link-name" title="source node ${r.source_node}">${label}</span>
    <div class="sub"><code>${r.link}</code>${o ? html` · topology ${o.topology}` : ''}</div>`;
}
