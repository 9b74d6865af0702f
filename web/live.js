// The live stream: GET /v1/tenants/{t}/events read with fetch() so that the token goes in
// the authorization header (EventSource cannot send headers, and a token in the URL would
// end up in logs and history). Parses the text/event-stream framing, keeps a few minutes
// of history per link for the charts, and reconnects after a drop.

import { token, t } from './api.js';

/** Minutes of history kept per link. */
export const HISTORY_SECONDS = 300;

const listeners = new Set();
const stateListeners = new Set();
let controller = null;
let current = null;
let retry = null;
export const history = new Map(); // link id -> [{at, throughput, lag_entries, lag_ms}]
export let latest = null;

export function onSnapshot(fn) {
  listeners.add(fn);
  if (latest) fn(latest);
  return () => listeners.delete(fn);
}

export function onState(fn) {
  stateListeners.add(fn);
  return () => stateListeners.delete(fn);
}

function setState(state) {
  for (const fn of stateListeners) fn(state);
}

function record(snapshot) {
  latest = snapshot;
  const cutoff = snapshot.at_ms - HISTORY_SECONDS * 1000;
  const seen = new Set();
  for (const link of snapshot.links) {
    seen.add(link.id);
    const points = history.get(link.id) || [];
    const s = link.status || {};
    points.push({ at: snapshot.at_ms, throughput: s.throughput || 0, lag_entries: s.lag_entries || 0, lag_ms: s.lag_ms || 0 });
    while (points.length && points[0].at < cutoff) points.shift();
    history.set(link.id, points);
  }
  for (const id of [...history.keys()]) if (!seen.has(id)) history.delete(id);
  for (const fn of listeners) fn(snapshot);
}

export function stop() {
  if (controller) controller.abort();
  controller = null;
  current = null;
  clearTimeout(retry);
  latest = null;
  history.clear();
  setState('off');
}

export function start(tenant) {
  if (current === tenant && controller) return;
  stop();
  current = tenant;
  run(tenant, 0);
}

async function run(tenant, attempt) {
  const mine = new AbortController();
  controller = mine;
  try {
    const response = await fetch(`${t(tenant)}/events`, {
      headers: { authorization: 'Bearer ' + (token() || ''), accept: 'text/event-stream' },
      signal: mine.signal,
    });
    if (response.status === 401) {
      window.dispatchEvent(new CustomEvent('doppel:unauthorized', { detail: await response.json().catch(() => ({})) }));
      return;
    }
    if (!response.ok) throw new Error('HTTP ' + response.status);
    setState('live');
    attempt = 0;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (event === 'snapshot' && data.length) record(JSON.parse(data.join('\n')));
      }
    }
  } catch (e) {
    if (mine.signal.aborted) return;
  }
  if (controller !== mine || mine.signal.aborted) return;
  setState('retrying');
  // Back off: 1 s, 2 s, 4 s ... at most 15 s between attempts.
  retry = setTimeout(() => run(tenant, attempt + 1), Math.min(15000, 1000 * 2 ** attempt));
}
