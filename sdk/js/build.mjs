#!/usr/bin/env node
// Builds a JavaScript plugin into a Doppel component:
//
//   node sdk/js/build.mjs --role filter|transform SOURCE.js -o OUT.wasm
//
// The source imports the SDK as "@doppel/plugin-sdk". componentize-js takes one module
// and what it imports by relative path, so the build copies the source and the SDK into
// a build folder beside the source, points the import at the copy, and builds there
// with every WASI feature disabled: the component imports nothing (the server refuses
// any import).
import { componentize } from "@bytecodealliance/componentize-js";
import { mkdir, readFile, rm, writeFile, copyFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const ROLES = ["filter", "transform"];

function usage(problem) {
  console.error(`doppel-js-build: ${problem}\nusage: build.mjs --role filter|transform SOURCE.js -o OUT.wasm`);
  process.exit(2);
}

const args = process.argv.slice(2);
let role, out, source;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--role") role = args[++i];
  else if (args[i] === "-o" || args[i] === "--out") out = args[++i];
  else if (!source) source = args[i];
  else usage(`unexpected argument '${args[i]}'`);
}
if (!ROLES.includes(role)) usage(`--role: ${ROLES.join(" or ")} (JavaScript plugins of other roles are not supported yet)`);
if (!source) usage("no SOURCE.js");
if (!out) usage("no -o OUT.wasm");

source = resolve(source);
const work = join(dirname(source), ".doppel-build");
await rm(work, { recursive: true, force: true });
await mkdir(work, { recursive: true });
const text = (await readFile(source, "utf8")).replaceAll(
  /from\s+["']@doppel\/plugin-sdk["']/g,
  'from "./doppel.js"',
);
await writeFile(join(work, basename(source)), text);
await copyFile(join(here, "doppel.js"), join(work, "doppel.js"));
const previous = process.cwd();
process.chdir(work);
try {
  const { component } = await componentize({
    sourcePath: basename(source),
    witPath: resolve(here, "../wit/doppel.wit"),
    worldName: role,
    disableFeatures: ["stdio", "random", "clocks", "http", "fetch-event"],
  });
  process.chdir(previous);
  await mkdir(dirname(resolve(out)), { recursive: true });
  await writeFile(resolve(out), component);
  console.log(JSON.stringify({ component: resolve(out), role, bytes: component.length }));
} finally {
  process.chdir(previous);
  await rm(work, { recursive: true, force: true });
}
