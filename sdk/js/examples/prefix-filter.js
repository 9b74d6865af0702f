// js-prefix-filter: the built-in prefix-filter in JavaScript. Keeps the records of the
// listed files whose key starts with a listed prefix (empty lists: every file, every key).
import { filter as makeFilter } from "@doppel/plugin-sdk";

const plugin = makeFilter(
  (r, cfg) =>
    (cfg.files.length === 0 || cfg.files.includes(r.file)) &&
    (cfg.prefixes.length === 0 || cfg.prefixes.some((p) => r.key.startsWith(p))),
  {
    schema: {
      type: "object",
      additionalProperties: false,
      properties: {
        files: { type: "array", items: { type: "string" } },
        prefixes: { type: "array", items: { type: "string" } },
      },
    },
    defaults: { files: [], prefixes: [] },
    validate(cfg) {
      for (const key of Object.keys(cfg)) {
        if (key !== "files" && key !== "prefixes") return `unknown field '${key}'`;
      }
      if (cfg.files.some((f) => f === "")) return "files: a file name is empty";
    },
  },
);

export const { contractVersion, configSchema, configure, filter } = plugin;
