// Verify and repair a mirror link (in the link's detail, for roles that may operate):
// "Verify" compares the replica's blocks with the source's at one serial and shows
// identical, or per block file the differing block numbers; each can be repaired alone,
// a whole file, or everything. A repair shows before and after (the server verifies
// again after repairing), and the differing blocks shown are the after ones.

import { api } from './api.js';
import { $, html, set, num, problem, toast } from './ui.js';

function differingCount(report) {
  return report.files.reduce((s, f) => s + f.differing.length, 0);
}

/** "3 block files (2 files, 1 alternate-key table)": a file's alternate keys are block
 * files of their own (named `file#alt`), so the count says what it is made of. */
function fileCount(files) {
  const alt = files.filter((f) => f.file.includes('#')).length;
  const main = files.length - alt;
  const what = `${num(files.length)} block file${files.length === 1 ? '' : 's'}`;
  return alt ? `${what} (${num(main)} file${main === 1 ? '' : 's'}, ${num(alt)} alternate-key table${alt === 1 ? '' : 's'})` : what;
}

/** One verify report: identical, or a table of the files with differing blocks. */
function report(r, { actions = false, id = 'verify-report' } = {}) {
  const bad = r.files.filter((f) => f.differing.length);
  const total = r.files.reduce((s, f) => s + f.blocks, 0);
  if (r.identical) {
    return html`<div class="verdict ok-verdict" id="${id}" data-identical="true"><strong class="big ok-text">Identical</strong>
      <span class="muted">at serial ${num(r.serial)}: ${num(total)} blocks in ${fileCount(r.files)}${r.took_ms !== undefined ? ` · ${num(r.took_ms)} ms` : ''}</span></div>`;
  }
  return html`<div class="verdict bad-verdict" id="${id}" data-identical="false">
    <p><strong class="big err" data-differing="${r.differing_blocks}">${num(r.differing_blocks)} differing block${r.differing_blocks === 1 ? '' : 's'}</strong>
      <span class="muted">at serial ${num(r.serial)}, in ${num(bad.length)} of ${fileCount(r.files)}${r.took_ms !== undefined ? ` · ${num(r.took_ms)} ms` : ''}</span>
      ${actions ? html` <button type="button" class="primary small" data-repair-all="1">Repair all</button>` : ''}</p>
    <div class="scroll"><table class="differing"><thead><tr><th>Block file</th><th class="n">Blocks</th><th>Differing blocks</th>${actions ? html`<th></th>` : ''}</tr></thead><tbody>
      ${bad.map((f) => html`<tr data-file="${f.file}"><td><code>${f.file}</code></td><td class="n">${num(f.blocks)}</td>
        <td><div class="blocks">${f.differing.map((b) => actions
          ? html`<button type="button" class="small block-button" data-repair-file="${f.file}" data-repair-block="${b}" title="Repair block ${b} of ${f.file}" aria-label="Repair block ${b} of ${f.file}">${b}</button>`
          : html`<code class="block" data-block="${b}">${b}</code>`)}</div></td>
        ${actions ? html`<td><button type="button" class="small" data-repair-file="${f.file}">Repair file</button></td>` : ''}</tr>`)}</tbody></table></div>
    ${actions ? html`<p class="muted">A block number repairs that block only.</p>` : ''}</div>`;
}

/** Mounts the verify/repair panel for the link at `linkPath` (…/links/{id}) in `box`. */
export function verifyPanel(box, linkPath) {
  set(box, html`<p class="muted">Compares the replica's blocks with the source's at one serial while writes go on (the link is held at that serial for the comparison).</p>
    <div class="form-row"><button type="button" class="primary" id="verify-run">Verify</button></div>
    <div id="verify-out" aria-live="polite"></div>
    <div id="repair-out" aria-live="polite"></div>`);
  const out = $('#verify-out', box);
  const repairOut = $('#repair-out', box);
  let busy = false;

  function buttons(disabled) {
    for (const b of box.querySelectorAll('button')) b.disabled = disabled;
  }

  async function verify() {
    if (busy) return;
    busy = true;
    buttons(true);
    set(repairOut, '');
    set(out, html`<p class="muted" id="verify-running">Verifying…</p>`);
    try {
      const r = await api('POST', `${linkPath}/verify`);
      set(out, report(r, { actions: true }));
    } catch (err) {
      set(out, problem(err));
    } finally {
      busy = false;
      buttons(false);
    }
  }

  async function repair(body, what) {
    if (busy) return;
    busy = true;
    buttons(true);
    try {
      const r = await api('POST', `${linkPath}/repair`, body);
      // The after report is compared at the same serial as the before one.
      const after = { ...r.after, serial: r.after.serial ?? r.serial };
      set(repairOut, html`<div class="result card" id="repair-result"><h4>Repaired ${what}: <span class="big" id="repaired-blocks">${num(r.repaired_blocks)}</span> block${r.repaired_blocks === 1 ? '' : 's'}${r.took_ms !== undefined ? html` <span class="muted">in ${num(r.took_ms)} ms</span>` : ''}</h4>
        <div class="before-after"><div><h4>Before</h4>${report(r.before, { id: 'repair-before' })}</div><div><h4>After</h4>${report(after, { id: 'repair-after' })}</div></div></div>`);
      set(out, report(after, { actions: true }));
      toast(r.after.identical ? 'Repaired: the replica is identical' : `Repaired ${num(r.repaired_blocks)}; ${num(differingCount(r.after))} still differ`);
    } catch (err) {
      set(repairOut, problem(err));
    } finally {
      busy = false;
      buttons(false);
    }
  }

  box.addEventListener('click', (e) => {
    const b = e.target.closest('button');
    if (!b || b.disabled) return;
    if (b.id === 'verify-run') verify();
    else if (b.dataset.repairAll) repair({}, 'everything');
    else if (b.dataset.repairBlock !== undefined) repair({ file: b.dataset.repairFile, blocks: [Number(b.dataset.repairBlock)] }, `block ${b.dataset.repairBlock} of ${b.dataset.repairFile}`);
    else if (b.dataset.repairFile) repair({ file: b.dataset.repairFile }, `file ${b.dataset.repairFile}`);
  });
}
