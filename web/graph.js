// The topology graph in SVG: nodes as boxes listing the databases the links name, links
// as arrows from a source database to its target database, coloured by their live state
// and lag. Parts the server refused (errors[].path) are drawn as invalid, with the
// server's message as their tooltip. Pure: markup from (document, states, problems).

import { html, raw, num } from './ui.js';

/** Lag above either figure colours a streaming link as lagging. */
export const LAG_WARN_ENTRIES = 1000;
export const LAG_WARN_MS = 2000;

const BOX_W = 210;
const HEAD_H = 44;
const ROW_H = 24;
const COL_GAP = 130;
const ROW_GAP = 28;
const PAD = 24;
/** Room left and right for the loops of links that go back. */
const SIDE = 44;

/** The arrow heads' colours, one per tone (a marker cannot take its path's colour). */
const TONES = { ok: '#17804a', warn: '#b26b00', bad: '#c0392b', info: '#1f5fd1', draft: '#8a97a8' };

/** A PostgreSQL connection string with its password masked, as the server shows it. */
export const maskPassword = (conn) => String(conn || '')
  .replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/?@]*:)[^/?]*@/i, '$1***@')
  .replace(/(^|[?& ])password=[^& ]*/g, '$1password=***');

/** Whether a link's target is PostgreSQL (`{"postgres", "schema"}`) rather than a node's database. */
export const isPostgres = (to) => Boolean(to && to.postgres !== undefined);

/** The box a PostgreSQL target is drawn as: `PostgreSQL host:port/db`. */
export function pgBox(to) {
  let where = maskPassword(to.postgres);
  try { const u = new URL(where); where = `${u.host}${u.pathname}`; } catch { /* key-value form: as given */ }
  return `PostgreSQL ${where}`;
}

/** A link's label as the server makes it (its key in the plan and the live state). */
export const linkLabel = (l) => (isPostgres(l.to)
  ? `${l.from.node}/${l.from.database} -> ${maskPassword(l.to.postgres)} (${l.to.schema || 'public'})`
  : `${l.from.node}/${l.from.database} -> ${l.to.node}/${l.to.database}`);

/**
 * A link's tone from its live entry ({status, error} as GET …/topologies/{name} gives
 * it; undefined for a link not applied yet): ok, warn (lagging, paused, retrying), bad
 * (stopped, or its node did not answer), info (connecting, bootstrapping), draft.
 */
export function tone(entry) {
  if (!entry) return 'draft';
  if (!entry.status) return entry.error && entry.error !== 'not applied' ? 'bad' : 'draft';
  const s = entry.status;
  switch (s.state) {
    case 'streaming':
      return (s.lag_entries || 0) > LAG_WARN_ENTRIES || (s.lag_ms || 0) > LAG_WARN_MS ? 'warn' : 'ok';
    case 'connecting':
    case 'bootstrapping':
      return 'info';
    case 'stopped':
      return 'bad';
    default:
      return 'warn';
  }
}

/** The words for a link's state: "streaming · lag 0", "not applied", the node's error. */
export function stateText(entry) {
  if (!entry) return 'not applied';
  if (!entry.status) return entry.error || 'no status';
  const s = entry.status;
  return `${s.state} · lag ${num(s.lag_entries)} (${num(s.lag_ms)} ms)`;
}

/**
 * Each node's column: the longest chain of links leading to it. A link that would close
 * a cycle (the document is refused then, but it is drawn) does not count, so it is drawn
 * as a loop back instead of pushing its nodes rightwards.
 */
function depths(names, links) {
  const edges = [];
  const reaches = (from, to) => {
    const seen = new Set([from]);
    const todo = [from];
    while (todo.length) {
      const n = todo.pop();
      if (n === to) return true;
      for (const [f, t] of edges) if (f === n && !seen.has(t)) { seen.add(t); todo.push(t); }
    }
    return false;
  };
  for (const l of links) {
    const [f, t] = [l.from.node, l.to.node];
    if (f && t && f !== t && !reaches(t, f)) edges.push([f, t]);
  }
  const depth = new Map(names.map((n) => [n, 0]));
  for (let round = 0; round < names.length; round++) {
    let changed = false;
    for (const [f, t] of edges) {
      if (depth.get(f) + 1 > depth.get(t)) { depth.set(t, depth.get(f) + 1); changed = true; }
    }
    if (!changed) break;
  }
  return depth;
}

/**
 * The graph's markup. doc: {nodes, links}; live: Map label → entry; marks:
 * {links: Map index → [{message}], nodes: Map name → [{message}]}.
 */
export function graph(doc, live = new Map(), marks = { links: new Map(), nodes: new Map() }) {
  const declared = Object.keys(doc.nodes || {});
  // A PostgreSQL target is a box of its own (its schema the row), after the nodes.
  const pgs = new Map();
  const links = (doc.links || []).map((l) => {
    if (!isPostgres(l.to)) return l;
    const node = pgBox(l.to);
    pgs.set(node, maskPassword(l.to.postgres));
    return { ...l, to: { node, database: l.to.schema || 'public' } };
  });
  // Nodes the links name but the document does not declare are drawn too (dashed), so
  // that a refusal about them has a place.
  const names = [...declared];
  for (const l of links) for (const end of [l.from, l.to]) if (end.node && !names.includes(end.node)) names.push(end.node);
  names.sort((x, y) => Number(pgs.has(x)) - Number(pgs.has(y)));
  const dbs = new Map(names.map((n) => [n, []]));
  for (const l of links) {
    for (const end of [l.from, l.to]) {
      const list = dbs.get(end.node);
      if (list && !list.includes(end.database)) list.push(end.database);
    }
  }
  const depth = depths(names, links);
  const columns = [];
  for (const n of names) {
    const d = depth.get(n) || 0;
    (columns[d] ||= []).push(n);
  }
  const pos = new Map();
  let height = 0;
  columns.forEach((col, c) => {
    let y = PAD;
    for (const n of col || []) {
      const h = HEAD_H + Math.max(1, dbs.get(n).length) * ROW_H + 8;
      pos.set(n, { x: SIDE + c * (BOX_W + COL_GAP), y, h });
      y += h + ROW_GAP;
    }
    height = Math.max(height, y - ROW_GAP + PAD);
  });
  const width = Math.max(SIDE * 2 + columns.length * BOX_W + Math.max(0, columns.length - 1) * COL_GAP, 320);
  height = Math.max(height, 120);
  const at = (end) => {
    const p = pos.get(end.node);
    const row = Math.max(0, dbs.get(end.node).indexOf(end.database));
    return { x: p.x, y: p.y + HEAD_H + row * ROW_H + ROW_H / 2 };
  };

  const nodeMarkup = names.map((n) => {
    const p = pos.get(n);
    const problems = marks.nodes.get(n) || [];
    const pg = pgs.has(n);
    const unknown = !pg && !declared.includes(n);
    const cls = `t-node${pg ? ' postgres' : ''}${unknown ? ' unknown' : ''}${problems.length ? ' invalid' : ''}`;
    const url = pg ? pgs.get(n) : unknown ? 'not declared' : doc.nodes[n].url;
    const rows = dbs.get(n);
    return html`<g class="${cls}" data-node="${n}" tabindex="0" role="group" aria-label="node ${n} (${url})${problems.length ? ': ' + problems.map((e) => e.message).join('; ') : ''}">
      <title>${n}: ${url}${problems.map((e) => '\n⚠ ' + e.message)}</title>
      <rect x="${p.x}" y="${p.y}" width="${BOX_W}" height="${p.h}" rx="10"/>
      <text class="n-name" x="${p.x + 12}" y="${p.y + 20}">${problems.length ? '⚠ ' : ''}${pg ? 'PostgreSQL' : n}</text>
      <text class="n-url" x="${p.x + 12}" y="${p.y + 36}">${short(pg ? n.slice('PostgreSQL '.length) : url)}</text>
      ${rows.length ? rows.map((db, i) => html`<text class="n-db" x="${p.x + 24}" y="${p.y + HEAD_H + i * ROW_H + 16}">▪ ${db}</text>`)
    : html`<text class="n-db muted" x="${p.x + 24}" y="${p.y + HEAD_H + 16}">no databases linked</text>`}
    </g>`;
  });

  function short(text) {
    return text.length > 30 ? text.slice(0, 29) + '…' : text;
  }

  // Links that go back (or within one column) loop below the boxes, one lane each.
  const bottom = height - PAD;
  let lanes = 0;
  const linkMarkup = links.map((l, i) => {
    if (!pos.has(l.from.node) || !pos.has(l.to.node)) return '';
    const a = at(l.from);
    const b = at(l.to);
    const x1 = a.x + BOX_W;
    const x2 = b.x - 6;
    let d;
    let mx;
    let my;
    if (b.x > a.x) {
      const bend = Math.max(60, Math.abs(x2 - x1) / 2);
      d = `M${x1},${a.y} C${x1 + bend},${a.y} ${x2 - bend},${b.y} ${x2},${b.y}`;
      mx = (x1 + 3 * (x1 + bend) + 3 * (x2 - bend) + x2) / 8;
      my = (a.y + 3 * a.y + 3 * b.y + b.y) / 8 - 8;
    } else {
      const y = bottom + 26 + lanes++ * 26;
      d = `M${x1},${a.y} C${x1 + 50},${a.y} ${x1 + 50},${y} ${x1},${y} L${b.x},${y} C${b.x - 50},${y} ${b.x - 50},${b.y} ${x2},${b.y}`;
      mx = (x1 + b.x) / 2;
      my = y - 6;
    }
    const label = linkLabel(doc.links[i]);
    const entry = live.get(label);
    const problems = marks.links.get(i) || [];
    const t = problems.length ? 'bad' : tone(entry);
    const status = entry && entry.status;
    const caption = problems.length ? '⚠ refused' : `${l.mode || 'async'}${l.apply === 'logical' ? ' · logical' : ''}${status ? ' · lag ' + num(status.lag_entries) : ''}`;
    return html`<g class="t-link tone-${t} st-${status ? status.state : entry ? 'error' : 'draft'}${problems.length ? ' invalid' : ''}" data-link="${i}" tabindex="0" role="group"
        aria-label="link ${label}: ${problems.length ? problems.map((e) => e.message).join('; ') : stateText(entry)}">
      <title>${label}\n${stateText(entry)}${problems.map((e) => '\n⚠ ' + e.message)}</title>
      <path class="edge" d="${d}" marker-end="url(#arrow-${t})"/>
      <text class="l-cap" x="${mx.toFixed(1)}" y="${my.toFixed(1)}" text-anchor="middle">${caption}</text>
    </g>`;
  });

  const markers = Object.entries(TONES).map(([name, colour]) => raw(
    `<marker id="arrow-${name}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="14" markerHeight="14" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="${colour}"/></marker>`));

  const full = height + (lanes ? lanes * 26 + 16 : 0);
  return html`<svg class="topology-graph" viewBox="0 0 ${width} ${full}" width="${width}" height="${full}" role="img"
      aria-label="topology: ${names.length} nodes, ${links.length} links">
    <defs>${markers}</defs>
    ${names.length ? '' : html`<text class="tick" x="${PAD}" y="${PAD + 20}">Add nodes and links to draw the topology.</text>`}
    ${nodeMarkup}${linkMarkup}
  </svg>`;
}

/** The legend of the tones. */
export function legend() {
  return html`<ul class="legend" aria-label="Legend">
    <li><span class="sw tone-ok"></span>streaming</li>
    <li><span class="sw tone-warn"></span>lagging (over ${num(LAG_WARN_ENTRIES)} entries or ${num(LAG_WARN_MS)} ms), paused, retrying</li>
    <li><span class="sw tone-info"></span>connecting, bootstrapping</li>
    <li><span class="sw tone-bad"></span>stopped, unreachable or refused</li>
    <li><span class="sw tone-draft"></span>not applied yet</li></ul>`;
}
