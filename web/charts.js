// Line charts in SVG, drawn from the live stream's history (no external services).

import { html, raw, num } from './ui.js';

/**
 * A chart of points [{at, value}] over the last `seconds`, with the y axis from 0 to the
 * largest value. Returns markup.
 */
export function lineChart(points, { seconds = 300, label = '', unit = '', width = 560, height = 140 } = {}) {
  const pad = { l: 48, r: 10, t: 12, b: 22 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const now = points.length ? points[points.length - 1].at : Date.now();
  const from = now - seconds * 1000;
  const max = Math.max(1, ...points.map((p) => p.value));
  const x = (at) => pad.l + ((at - from) / (seconds * 1000)) * w;
  const y = (v) => pad.t + h - (v / max) * h;
  const path = points.map((p, i) => `${i ? 'L' : 'M'}${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ');
  const area = points.length ? `${path} L${x(points[points.length - 1].at).toFixed(1)},${pad.t + h} L${x(points[0].at).toFixed(1)},${pad.t + h} Z` : '';
  const ticks = [0, 0.5, 1].map((f) => ({ v: max * f, y: y(max * f) }));
  const minutes = Math.round(seconds / 60);
  const last = points.length ? points[points.length - 1].value : null;
  return html`<figure class="chart">
    <figcaption><span>${label}</span><strong>${last === null ? '–' : num(last)}</strong> <small>${unit}</small></figcaption>
    <svg viewBox="0 0 ${width} ${height}" role="img" aria-label="${label}: last ${minutes} minutes, latest ${last === null ? 'none' : num(last)} ${unit}">
      ${ticks.map((t) => html`<line class="grid" x1="${pad.l}" x2="${width - pad.r}" y1="${t.y.toFixed(1)}" y2="${t.y.toFixed(1)}"/><text class="tick" x="${pad.l - 6}" y="${(t.y + 4).toFixed(1)}" text-anchor="end">${num(t.v)}</text>`)}
      <text class="tick" x="${pad.l}" y="${height - 6}">−${minutes} min</text>
      <text class="tick" x="${width - pad.r}" y="${height - 6}" text-anchor="end">now</text>
      ${area ? raw(`<path class="area" d="${area}"/><path class="line" d="${path}"/>`) : html`<text class="tick" x="${width / 2}" y="${height / 2}" text-anchor="middle">waiting for figures…</text>`}
    </svg></figure>`;
}
