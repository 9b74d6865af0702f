// @doppel/plugin-sdk: write Doppel stage plugins in JavaScript.
//
// The guest side of the contract in sdk/wit/doppel.wit for JavaScript components built
// with @bytecodealliance/componentize-js (all WASI features disabled: the component
// imports nothing). It gives what the Rust SDK gives: the batch loop, the record layout
// (decode and encode), typed configuration with validation, per-record errors by index,
// and bounded log lines. A plugin module is one function and one call:
//
//   import { filter } from "./doppel.js";
//   export const { contractVersion, configSchema, configure, filter: run } = ...
//
// See docs/PLUGINS.md ("JavaScript").

export const CONTRACT_VERSION = 2;
/** Most log lines kept per call, and the longest (in UTF-16 units, cut). */
export const MAX_LOG_LINES = 64;
export const MAX_LOG_LINE = 512;

const OPS = ["insert", "update", "delete", "read"];
const utf8 = new TextDecoder();
const encoder = new TextEncoder();

let lines = [];

/** Records one log line; it comes back with the call's result (bounded). */
export function log(line) {
  if (lines.length < MAX_LOG_LINES) {
    lines.push(String(line).slice(0, MAX_LOG_LINE));
  }
}

function takeLog() {
  const out = lines;
  lines = [];
  return out;
}

/** One record of a batch, decoded from the arena (the layout of doppel_sdk::abi). */
export class Record {
  constructor(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = 0;
    const take = (n) => {
      if (at + n > bytes.length) throw new Error("malformed record: truncated");
      const part = bytes.subarray(at, at + n);
      at += n;
      return part;
    };
    const u64 = () => {
      const v = view.getBigUint64(at, true);
      at += 8;
      return v;
    };
    const chunk = () => {
      const n = view.getUint32(at, true);
      at += 4;
      return take(n);
    };
    this.raw = bytes;
    this.op = OPS[bytes[0]];
    if (this.op === undefined) throw new Error("malformed record: unknown op");
    const hasBefore = (bytes[1] & 1) !== 0;
    const altCount = view.getUint16(2, true);
    at = 4;
    this.origin = u64();
    this.serial = u64();
    this.timestamp = u64();
    this.txn = u64();
    this.file = utf8.decode(chunk());
    this.key = utf8.decode(chunk());
    this.data = chunk();
    this.before = hasBefore ? chunk() : null;
    this.alt = {};
    for (let i = 0; i < altCount; i++) {
      const name = utf8.decode(chunk());
      this.alt[name] = utf8.decode(chunk());
    }
  }

  /** The after image parsed as JSON (null when empty: a delete). */
  json() {
    return this.data.length === 0 ? null : JSON.parse(utf8.decode(this.data));
  }

  /** The before image parsed as JSON (null when absent or empty). */
  beforeJson() {
    return this.before && this.before.length ? JSON.parse(utf8.decode(this.before)) : null;
  }
}

/** The records of a batch ({arena, offsets}). */
export function records(batch) {
  const { arena, offsets } = batch;
  const out = [];
  for (let i = 0; i < offsets.length; i++) {
    const end = i + 1 < offsets.length ? offsets[i + 1] : arena.length;
    out.push(arena.subarray(offsets[i], end));
  }
  return out;
}

/** Builds an output batch. */
export class BatchBuilder {
  constructor() {
    this.parts = [];
    this.length = 0;
    this.offsets = [];
  }

  /** Appends bytes that already are one encoded record. */
  pushRaw(bytes) {
    this.offsets.push(this.length);
    this.parts.push(bytes);
    this.length += bytes.length;
  }

  /** Appends `record` with the fields of `edit` replaced (file, key, data, before). */
  push(record, edit = {}) {
    const text = (v) => (typeof v === "string" ? encoder.encode(v) : v);
    const json = (v) =>
      v === undefined ? undefined : v === null ? null : v instanceof Uint8Array ? v : encoder.encode(JSON.stringify(v));
    const file = text(edit.file ?? record.file);
    const key = text(edit.key ?? record.key);
    const data = edit.data === undefined ? record.data : json(edit.data) ?? new Uint8Array(0);
    const before = edit.before === undefined ? record.before : json(edit.before);
    const alt = Object.entries(record.alt).map(([n, v]) => [encoder.encode(n), encoder.encode(v)]);
    let size = 4 + 32 + 12 + file.length + key.length + data.length;
    if (before) size += 4 + before.length;
    for (const [n, v] of alt) size += 8 + n.length + v.length;
    const out = new Uint8Array(size);
    const view = new DataView(out.buffer);
    out[0] = OPS.indexOf(record.op);
    out[1] = before ? 1 : 0;
    view.setUint16(2, alt.length, true);
    let at = 4;
    for (const v of [record.origin, record.serial, record.timestamp, record.txn]) {
      view.setBigUint64(at, BigInt(v), true);
      at += 8;
    }
    const put = (b) => {
      view.setUint32(at, b.length, true);
      out.set(b, at + 4);
      at += 4 + b.length;
    };
    put(file);
    put(key);
    put(data);
    if (before) put(before);
    for (const [n, v] of alt) {
      put(n);
      put(v);
    }
    this.pushRaw(out);
  }

  finish() {
    const arena = new Uint8Array(this.length);
    let at = 0;
    for (const p of this.parts) {
      arena.set(p, at);
      at += p.length;
    }
    return { arena, offsets: new Uint32Array(this.offsets) };
  }
}

/**
 * A configuration: `schema` (a JSON schema object, exported for the console's form) and
 * `validate(cfg)` answering an error message (or throwing) to refuse it. `defaults` are
 * merged under the given config.
 */
function loader(config = {}) {
  const schema = JSON.stringify(config.schema ?? { type: "object", properties: {} });
  let current = null;
  return {
    schema,
    configure(text) {
      let cfg;
      try {
        cfg = text && text.trim() && text.trim() !== "null" ? JSON.parse(text) : {};
      } catch (e) {
        throw `invalid config: ${e.message}`;
      }
      if (typeof cfg !== "object" || cfg === null || Array.isArray(cfg)) {
        throw "invalid config: not a JSON object";
      }
      cfg = { ...(config.defaults ?? {}), ...cfg };
      let problem;
      try {
        problem = config.validate ? config.validate(cfg) : undefined;
      } catch (e) {
        problem = e instanceof Error ? e.message : String(e);
      }
      if (problem) throw `invalid config: ${problem}`;
      current = cfg;
    },
    get() {
      return current;
    },
  };
}

function message(e) {
  return e instanceof Error ? e.message : String(e);
}

/**
 * The exports of a filter: `keep(record, config)` answers true to keep the record; a
 * throw is that record's error.
 */
export function filter(keep, config) {
  const cfg = loader(config);
  return {
    contractVersion: () => CONTRACT_VERSION,
    configSchema: () => cfg.schema,
    configure: (text) => cfg.configure(text),
    filter(batch) {
      const parts = records(batch);
      const bits = new Uint8Array((parts.length + 7) >> 3);
      const errors = [];
      const c = cfg.get();
      for (let i = 0; i < parts.length; i++) {
        try {
          if (c === null) throw new Error("not configured");
          if (keep(new Record(parts[i]), c)) bits[i >> 3] |= 1 << (i & 7);
        } catch (e) {
          errors.push({ index: i, message: message(e) });
        }
      }
      return { keep: bits, errors, log: takeLog() };
    },
  };
}

/** What a transform answers for a record. */
export const Keep = Object.freeze({ keep: true });
export const Drop = Object.freeze({ drop: true });
/** Forward the record with some of file, key, data (JSON value or bytes), before replaced. */
export function Edit(fields) {
  return { edit: fields };
}

/**
 * The exports of a transform: `fn(record, config)` answers `Keep`, `Drop` or
 * `Edit({...})`; a throw is that record's error (the record is left out).
 */
export function transform(fn, config) {
  const cfg = loader(config);
  return {
    contractVersion: () => CONTRACT_VERSION,
    configSchema: () => cfg.schema,
    configure: (text) => cfg.configure(text),
    transform(batch) {
      const parts = records(batch);
      const out = new BatchBuilder();
      const errors = [];
      const c = cfg.get();
      for (let i = 0; i < parts.length; i++) {
        try {
          if (c === null) throw new Error("not configured");
          const record = new Record(parts[i]);
          const answer = fn(record, c);
          if (answer === Keep || answer === undefined) out.pushRaw(parts[i]);
          else if (answer === Drop) continue;
          else if (answer && answer.edit) out.push(record, answer.edit);
          else throw new Error("a transform answers Keep, Drop or Edit({...})");
        } catch (e) {
          errors.push({ index: i, message: message(e) });
        }
      }
      return { records: out.finish(), errors, log: takeLog() };
    },
  };
}

/** Dotted field paths in JSON values, as doppel_sdk::json. */
export const json = {
  /** Throws unless `path` is non-empty segments separated by dots; `what` names it. */
  checkPath(what, path) {
    if (typeof path !== "string" || path === "" || path.split(".").some((s) => s === "")) {
      throw new Error(`${what}: '${path}' is not a dotted field path`);
    }
  },
  /** The value at `path`, or undefined. */
  get(value, path) {
    let v = value;
    for (const seg of path.split(".")) {
      if (v === null || typeof v !== "object" || !(seg in v)) return undefined;
      v = v[seg];
    }
    return v;
  },
  /** Replaces the value at `path` if it exists; says whether it did. */
  replace(value, path, withValue) {
    const segs = path.split(".");
    const last = segs.pop();
    const parent = segs.length ? json.get(value, segs.join(".")) : value;
    if (parent === null || typeof parent !== "object" || Array.isArray(parent) || !(last in parent)) {
      return false;
    }
    parent[last] = withValue;
    return true;
  },
  /** Removes the field at `path`; says whether it was there. */
  remove(value, path) {
    const segs = path.split(".");
    const last = segs.pop();
    const parent = segs.length ? json.get(value, segs.join(".")) : value;
    if (parent === null || typeof parent !== "object" || Array.isArray(parent) || !(last in parent)) {
      return false;
    }
    delete parent[last];
    return true;
  },
};

/** Encodes plain records ({op, file, key, data, before, alt, origin, serial, timestamp, txn};
 * data and before as JSON values) into a batch, as the host sends them. */
export function encodeBatch(plain) {
  const b = new BatchBuilder();
  for (const p of plain) {
    const record = {
      op: p.op ?? "insert",
      origin: p.origin ?? 0,
      serial: p.serial ?? 0,
      timestamp: p.timestamp ?? 0,
      txn: p.txn ?? 0,
      file: p.file,
      key: p.key,
      data: new Uint8Array(0),
      before: null,
      alt: p.alt ?? {},
    };
    b.push(record, { data: p.data === undefined ? null : p.data, before: p.before === undefined ? null : p.before });
  }
  return b.finish();
}

/** Test helpers: run a plugin's exports on plain records, as a stage would. */
export const testing = {
  /** Per record: true (kept), false, or {error}. A refused config throws. */
  filter(plugin, config, plain) {
    plugin.configure(JSON.stringify(config));
    const out = plugin.filter(encodeBatch(plain));
    const res = plain.map((_, i) => (out.keep[i >> 3] & (1 << (i & 7))) !== 0);
    for (const e of out.errors) res[e.index] = { error: e.message };
    return res;
  },
  /** The records forwarded (decoded, data as JSON) and the errors by input index. */
  transform(plugin, config, plain) {
    plugin.configure(JSON.stringify(config));
    const out = plugin.transform(encodeBatch(plain));
    const records = recordsOf(out.records).map((bytes) => {
      const r = new Record(bytes);
      return { op: r.op, file: r.file, key: r.key, data: r.json(), before: r.beforeJson(), alt: r.alt };
    });
    return { records, errors: out.errors };
  },
};

function recordsOf(batch) {
  return records(batch);
}
