// A JavaScript filter that misbehaves on purpose, by record key, for tests/js_plugins.rs:
// "spin" loops forever, "grow" allocates without end, "throw" throws out of the
// export itself (past the SDK's per-record catch), "bad" throws in the record function
// (a per-record error). Other records are kept.
import { filter as makeFilter } from "@doppel/plugin-sdk";

const inner = makeFilter((r) => {
  if (r.key === "spin") for (;;) {}
  if (r.key === "grow") {
    const hoard = [];
    for (;;) hoard.push(new Array(1 << 16).fill(hoard.length));
  }
  if (r.key === "bad") throw new Error("bad is a bad key");
  return true;
});

export const { contractVersion, configSchema, configure } = inner;

export function filter(batch) {
  const out = inner.filter(batch);
  if (out.errors.length === 0 && batch.offsets.length === 1 && new TextDecoder().decode(batch.arena).includes("throw")) {
    throw new Error("thrown out of the export");
  }
  return out;
}
