// js-field-mask: the built-in field-mask in JavaScript. Masks JSON fields (dotted paths)
// of the after and before images; a null mask removes them. Data that is not JSON is
// that record's error.
import { transform as makeTransform, Edit, Keep, json } from "@doppel/plugin-sdk";

const decoder = new TextDecoder();

function masked(bytes, cfg) {
  if (!bytes || bytes.length === 0) return undefined;
  const v = JSON.parse(decoder.decode(bytes));
  let changed = false;
  for (const p of cfg.paths) {
    changed = (cfg.mask === null ? json.remove(v, p) : json.replace(v, p, cfg.mask)) || changed;
  }
  return changed ? v : undefined;
}

const plugin = makeTransform(
  (r, cfg) => {
    if (cfg.files.length && !cfg.files.includes(r.file)) return Keep;
    const data = masked(r.data, cfg);
    const before = masked(r.before, cfg);
    if (data === undefined && before === undefined) return Keep;
    return Edit({ data, before });
  },
  {
    schema: {
      type: "object",
      required: ["paths"],
      additionalProperties: false,
      properties: {
        paths: { type: "array", items: { type: "string", minLength: 1 } },
        mask: {},
        files: { type: "array", items: { type: "string" } },
      },
    },
    defaults: { mask: "***", files: [] },
    validate(cfg) {
      if (!Array.isArray(cfg.paths) || cfg.paths.length === 0) return "paths: give at least one field path";
      for (const p of cfg.paths) json.checkPath("paths", p);
    },
  },
);

export const { contractVersion, configSchema, configure, transform } = plugin;
