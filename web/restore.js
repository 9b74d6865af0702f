// Point-in-time restore, in Operations (for roles that may operate): choose a database
// and a point (a serial, or a local date and time sent as timestamp_us; the database's
// recent updates from its log can be picked), in place or into a new database, and a
// method. "Preview" runs the dry run and shows what changes; "Restore" needs an explicit
// confirmation of exactly what was previewed, then the operation's progress is polled
// until it ends. A point outside retention names the oldest reachable one, to use.

import { api, t, enc } from './api.js';
import { $, html, set, num, pill, problem, toast, formData, when as whenMs } from './ui.js';

/** How many of the newest log entries are offered to pick from. */
const RECENT = 15;
/** Polling of a running restore: from FAST_MS, slowing to at most SLOW_MS. */
const FAST_MS = 200;
const SLOW_MS = 1000;

/** A timestamp in microseconds as the local date and time, written as on every page. */
export function when(us) {
  if (us === null || us === undefined) return '–';
  return whenMs(us / 1000);
}

/** A microsecond timestamp as a datetime-local value (milliseconds, rounded up so the
 * restore still reaches the update stamped then). */
function localValue(us) {
  const d = new Date(Math.ceil(us / 1000));
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** A meter's width class (the stylesheet allows no inline styles): w0, w5, ... w100. */
function meter(done, total) {
  const pct = total ? Math.min(100, Math.round((done / total) * 20) * 5) : 0;
  return html`<div class="meter wide-meter" role="progressbar" aria-valuemin="0" aria-valuemax="${total}" aria-valuenow="${done}"><div class="fill w${pct}"></div></div>`;
}

function changes(r) {
  return html`<dl class="facts changes"><dt>Inserted</dt><dd class="big" data-n="inserted">${num(r.inserted)}</dd><dt>Updated</dt><dd class="big" data-n="updated">${num(r.updated)}</dd><dt>Deleted</dt><dd class="big" data-n="deleted">${num(r.deleted)}</dd></dl>`;
}

/**
 * Mounts the restore panel in `box` (a card that only operators see). `dbs` is the
 * tenant's databases path. Answers { choose(db), stop() }.
 */
export function restorePanel(box, session, dbs) {
  set(box, html`<h2>Point-in-time restore</h2>
    <p class="muted">Brings a database back to its state right after a chosen update. In place, its serials go on (the restore is logged, so its replicas follow); into a new database, the original is only read.</p>
    <form id="restore-form" class="form-grid" novalidate>
      <label>Database <select name="db" id="restore-db" required></select></label>
      <fieldset class="point-kind"><legend>Restore to</legend>
        <label class="check"><input type="radio" name="kind" value="serial" checked id="restore-by-serial"> a serial</label>
        <label class="check"><input type="radio" name="kind" value="time" id="restore-by-time"> a time</label></fieldset>
      <label id="restore-serial-label">Serial <input name="serial" id="restore-serial" type="number" min="0" step="1" inputmode="numeric" placeholder="e.g. 1200"></label>
      <label id="restore-time-label" hidden>Time (this browser's time zone) <input name="time" id="restore-time" type="datetime-local" step="0.001"></label>
      <label>Target <select name="target" id="restore-target"><option value="in-place">in place (replace its contents)</option><option value="into">into a new database</option></select></label>
      <label id="restore-into-label" hidden>New database name <input name="into" id="restore-into" autocomplete="off" placeholder="shop-restored"></label>
      <label>Method <select name="method" id="restore-method"><option value="">the cheaper one</option><option value="undo">undo (B log, newest first)</option><option value="replay">replay (snapshot + A log)</option></select></label>
      <div class="wide form-row"><button type="submit" class="primary" id="restore-preview">Preview</button>
        <span class="muted" id="restore-hint">Nothing changes until you confirm a preview.</span></div>
    </form>
    <div id="restore-problem"></div>
    <div id="restore-plan"></div>
    <div id="restore-progress" aria-live="polite"></div>
    <h3>Recent updates <button type="button" class="ghost small" id="restore-refresh">Refresh</button></h3>
    <div id="restore-recent"><p class="muted">Choose a database.</p></div>
    <h3>Restores of this database</h3>
    <div id="restore-history"></div>`);

  const form = $('#restore-form', box);
  const dbSel = $('#restore-db', box);
  const planBox = $('#restore-plan', box);
  const progressBox = $('#restore-progress', box);
  const problemBox = $('#restore-problem', box);
  let previewed = null; // {db, body, plan}: what "Restore" would start
  let timer = null;
  let stopped = false;

  const dbPath = (db) => `${dbs}/${enc(db)}`;

  function syncFields() {
    const f = formData(form);
    $('#restore-serial-label', box).hidden = f.kind !== 'serial';
    $('#restore-time-label', box).hidden = f.kind !== 'time';
    $('#restore-into-label', box).hidden = f.target !== 'into';
  }

  /** Any change to the form voids the preview: only what was previewed can be restored. */
  function invalidate() {
    syncFields();
    if (previewed) {
      previewed = null;
      set(planBox, '');
    }
  }

  /** The request body from the form, or a client-side problem. */
  function body() {
    const f = formData(form);
    const out = {};
    if (f.kind === 'serial') {
      if (!/^\d+$/.test(f.serial.trim())) return { error: { title: 'Choose a serial', detail: 'a whole number, 0 or more (0: before any update)', code: 'client' }, focus: '#restore-serial' };
      out.serial = Number(f.serial.trim());
    } else {
      const ms = f.time ? new Date(f.time).getTime() : NaN;
      if (!Number.isFinite(ms)) return { error: { title: 'Choose a time', detail: 'a date and time in this browser\'s time zone', code: 'client' }, focus: '#restore-time' };
      out.timestamp_us = ms * 1000;
    }
    if (f.target === 'into') {
      if (!f.into.trim()) return { error: { title: 'Name the new database', detail: 'a restore into a new database needs its name', code: 'client' }, focus: '#restore-into' };
      out.into = f.into.trim();
    }
    if (f.method) out.method = f.method;
    return { body: out };
  }

  function showProblem(err, db) {
    if (err.code === 'outside-retention' && err.problem.oldest_serial !== undefined) {
      const p = err.problem;
      set(problemBox, html`<div class="card notice-card" id="restore-outside">${problem(err)}
        <p>The oldest point the retained log and snapshots reach is <strong class="big" id="oldest-serial">serial ${num(p.oldest_serial)}</strong>${p.oldest_timestamp_us ? html` <span class="muted">(${when(p.oldest_timestamp_us)})</span>` : ''}.</p>
        <button type="button" class="small" id="use-oldest" data-serial="${p.oldest_serial}">Use serial ${num(p.oldest_serial)}</button></div>`);
    } else if (err.code === 'point-in-future') {
      set(problemBox, html`${problem(err)}<p class="muted">Pick one of the recent updates below, or a serial up to the database's last one.</p>`);
    } else {
      set(problemBox, problem(err));
    }
    if (db) loadRecent(db);
  }

  async function preview() {
    const b = body();
    set(problemBox, '');
    set(planBox, '');
    previewed = null;
    if (b.error) {
      set(problemBox, problem(b.error));
      $(b.focus, box).focus();
      return;
    }
    const db = dbSel.value;
    try {
      const plan = await api('POST', `${dbPath(db)}/restore`, { ...b.body, dry_run: true });
      previewed = { db, body: b.body, plan };
      const target = plan.into ? html`into the new database <strong>${plan.into}</strong>` : html`<strong>${plan.database}</strong> in place`;
      set(planBox, html`<div class="result card" id="restore-preview-result">
        <h3>Preview: ${plan.database} at serial ${num(plan.point.serial)}</h3>
        <dl class="facts"><dt>Point</dt><dd><span class="big" id="plan-serial">serial ${num(plan.point.serial)}</span> <span class="muted">${plan.point.timestamp_us ? when(plan.point.timestamp_us) : 'before any update'}</span></dd>
          <dt>Method</dt><dd><span class="big" id="plan-method">${plan.method}</span> <span class="muted">${plan.method === 'undo' ? 'the B log\'s before images, newest first' : plan.from_snapshot !== null ? `from the snapshot at serial ${num(plan.from_snapshot)}, then the A log` : 'from empty, then the A log'}</span></dd>
          <dt>Log entries ${plan.method === 'undo' ? 'undone' : 'replayed'}</dt><dd class="big" id="plan-updates">${num(plan.updates)}</dd>
          <dt>Last serial now</dt><dd>${num(plan.last_serial)}</dd>
          <dt>Oldest reachable</dt><dd>serial ${num(plan.oldest.serial)} <span class="muted">${plan.oldest.timestamp_us ? when(plan.oldest.timestamp_us) : ''}</span></dd></dl>
        <h4>Records that change</h4>${changes(plan.records)}
        <div class="confirm-box">
          <label class="check"><input type="checkbox" id="restore-confirm"> ${plan.into
            ? html`Create ${plan.into} with ${plan.database}'s contents at serial ${num(plan.point.serial)}`
            : html`Replace ${plan.database}'s contents with its state at serial ${num(plan.point.serial)}: ${num(plan.records.inserted + plan.records.updated + plan.records.deleted)} records change, and writes to it are refused until the restore ends`}</label>
          <button type="button" class="danger" id="restore-go" disabled>Restore ${target}</button></div></div>`);
    } catch (err) {
      showProblem(err, db);
    }
  }

  function drawProgress(op, db) {
    const running = op.state === 'running';
    const took = op.finished_ms ? op.finished_ms - op.started_ms : null;
    set(progressBox, html`<div class="card ${op.state === 'failed' ? 'failed' : op.state === 'succeeded' ? 'result' : ''}" id="restore-op" data-state="${op.state}" data-phase="${op.phase}">
      <h3>Restore ${op.id} of ${db} ${pill(op.state)}</h3>
      <dl class="facts"><dt>Phase</dt><dd class="big" id="op-phase">${op.phase}</dd>
        <dt>Progress</dt><dd><span class="big" id="op-done">${num(op.done)}</span> of <span id="op-total">${num(op.total)}</span>${meter(op.done, op.total)}</dd>
        <dt>To</dt><dd>serial ${num(op.point.serial)} · ${op.method}${op.into ? html` · into <strong>${op.into}</strong>` : ' · in place'}</dd>
        ${op.restored_serials ? html`<dt>Written as</dt><dd id="op-serials">serials ${num(op.restored_serials.first)}–${num(op.restored_serials.last)}</dd>` : ''}
        ${took !== null ? html`<dt>Took</dt><dd id="op-took">${num(took)} ms</dd>` : ''}</dl>
      ${op.records && !running ? html`<h4>Records changed</h4>${changes(op.records)}` : ''}
      ${op.error ? html`<div class="problem" role="alert"><strong>The restore failed</strong><span id="op-error">${op.error}</span></div>` : ''}</div>`);
  }

  function follow(db, id, delay = FAST_MS) {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (stopped) return;
      try {
        const op = await api('GET', `${dbPath(db)}/restores/${enc(id)}`);
        if (stopped) return;
        drawProgress(op, db);
        if (op.state === 'running') {
          follow(db, id, Math.min(SLOW_MS, delay * 1.5));
          return;
        }
        toast(op.state === 'succeeded' ? `Restore of ${db} finished` : `Restore of ${db} failed`, op.state === 'succeeded' ? 'ok' : 'bad');
        loadRecent(db);
        loadHistory(db);
      } catch (err) {
        if (stopped) return;
        set(progressBox, html`<div class="card">${problem(err)}<p class="muted">Following restore ${id} again in a moment.</p></div>`);
        follow(db, id, SLOW_MS);
      }
    }, delay);
  }

  async function start() {
    if (!previewed || !$('#restore-confirm', box).checked) return;
    const { db, body: b } = previewed;
    previewed = null;
    set(planBox, '');
    try {
      const op = await api('POST', `${dbPath(db)}/restore`, b);
      drawProgress(op, db);
      follow(db, op.id);
    } catch (err) {
      showProblem(err, db);
    }
  }

  async function loadRecent(db) {
    const recent = $('#restore-recent', box);
    try {
      const info = await api('GET', dbPath(db));
      if (!info.last_serial) {
        set(recent, html`<p class="muted">${db} has no updates yet.</p>`);
        return;
      }
      const from = Math.max(1, info.last_serial - RECENT + 1);
      const log = await api('GET', `${dbPath(db)}/log?from=${from}&limit=${RECENT}`);
      const entries = log.entries.slice().reverse();
      set(recent, entries.length ? html`<div class="scroll"><table id="restore-recent-table"><thead><tr><th class="n">Serial</th><th class="n">Txn</th><th>Time</th><th>Update</th><th></th></tr></thead><tbody>
        ${entries.map((en) => html`<tr data-serial="${en.serial}"><td class="n big">${num(en.serial)}</td><td class="n">${num(en.txn)}</td><td>${when(en.timestamp_us)}</td>
          <td>${en.undo ? html`<span class="muted">undo</span> ` : ''}${en.kind} <code>${en.file}/${(en.a && en.a.key) || (en.b && en.b.key) || ''}</code></td>
          <td><button type="button" class="small" data-pick="${en.serial}" data-us="${en.timestamp_us}">Pick</button></td></tr>`)}</tbody></table></div>
        <p class="muted">The newest ${num(entries.length)} of ${num(info.last_serial)} updates. "Pick" fills in its serial and time; the restore goes to the state right after it.</p>`
        : html`<p class="muted">The log holds no entries from serial ${num(from)} on.</p>`);
    } catch (err) {
      set(recent, problem(err));
    }
  }

  async function loadHistory(db) {
    const hist = $('#restore-history', box);
    try {
      const { restores } = await api('GET', `${dbPath(db)}/restores`);
      set(hist, restores.length ? html`<div class="scroll"><table><thead><tr><th class="n">Id</th><th>State</th><th class="n">To serial</th><th>Method</th><th>Target</th><th class="n">Records changed</th></tr></thead><tbody>
        ${restores.slice().reverse().map((op) => html`<tr data-restore="${op.id}"><td class="n"><code>${op.id}</code></td><td>${pill(op.state)}</td><td class="n">${num(op.point.serial)}</td><td>${op.method}</td><td>${op.into || 'in place'}</td>
          <td class="n">${op.records ? num(op.records.inserted + op.records.updated + op.records.deleted) : '–'}</td></tr>`)}</tbody></table></div>`
        : html`<p class="muted">None since this node started.</p>`);
    } catch (err) {
      set(hist, problem(err));
    }
  }

  function choose(db) {
    if ([...dbSel.options].some((o) => o.value === db)) dbSel.value = db;
    invalidate();
    set(problemBox, '');
    loadRecent(dbSel.value);
    loadHistory(dbSel.value);
  }

  form.addEventListener('submit', (e) => { e.preventDefault(); preview(); });
  form.addEventListener('input', invalidate);
  form.addEventListener('change', (e) => { if (e.target === dbSel) choose(dbSel.value); else invalidate(); });
  box.addEventListener('change', (e) => {
    if (e.target.id === 'restore-confirm') $('#restore-go', box).disabled = !e.target.checked;
  });
  box.addEventListener('click', (e) => {
    const b = e.target.closest('button');
    if (!b) return;
    if (b.id === 'restore-go') start();
    if (b.id === 'restore-refresh') loadRecent(dbSel.value);
    if (b.id === 'use-oldest' || b.dataset.pick) {
      const serial = b.dataset.serial || b.dataset.pick;
      $('#restore-by-serial', box).checked = true;
      $('#restore-serial', box).value = serial;
      if (b.dataset.us) $('#restore-time', box).value = localValue(Number(b.dataset.us));
      invalidate();
      if (b.id === 'use-oldest') set(problemBox, '');
      $('#restore-preview', box).focus();
    }
  });

  api('GET', dbs).then((list) => {
    set(dbSel, list.map((db) => html`<option value="${db.name}">${db.name}</option>`));
    if (list.length) choose(list[0].name);
  }).catch((err) => set(problemBox, problem(err)));

  return {
    choose(db) { choose(db); box.scrollIntoView({ block: 'start' }); $('#restore-serial', box).focus(); },
    stop() { stopped = true; clearTimeout(timer); },
  };
}
