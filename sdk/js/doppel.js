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

/** One record of a batch, read from the arena (the layout of doppel_sdk::abi). Only the
 * offsets are read up front; each field is decoded when first read (in the interpreter
 * SpiderMonkey runs in inside wasm, decoding every field of every record cost ~50 µs a
 * record, see docs/BENCHMARKS.md). */
export class Record {
  /** The record at `arena[start..end]`; `view` is a DataView of the whole arena (one per
   * batch: cheaper than one per record). */
  constructor(arena, start = 0, end = arena.length, view = undefined) {
    view ??= new DataView(arena.buffer, arena.byteOffset, arena.byteLength);
    this._arena = arena;
    this._view = view;
    this._start = start;
    this._end = end;
    if (end - start < 40 || arena[start] > 3) throw new Error("malformed record: header");
    let at = start + 36;
    const fileLen = view.getUint32(at, true);
    this._file = at + 4;
    at = this._file + fileLen;
    const keyLen = view.getUint32(at, true);
    this._key = at + 4;
    at = this._key + keyLen;
    const dataLen = view.getUint32(at, true);
    this._data = at + 4;
    at = this._data + dataLen;
    this._dataEnd = at;
    if ((arena[start + 1] & 1) !== 0) {
      const beforeLen = view.getUint32(at, true);
      this._before = at + 4;
      at = this._before + beforeLen;
    } else {
      this._before = -1;
    }
    this._beforeEnd = at;
    if (at > end) throw new Error("malformed record: truncated");
    this._fileLen = fileLen;
    this._keyLen = keyLen;
    this._fileText = undefined;
    this._keyText = undefined;
  }

  /** The record's bytes. */
  get raw() {
    return this._arena.subarray(this._start, this._end);
  }
  get op() {
    return OPS[this._arena[this._start]];
  }
  get origin() {
    return this._view.getBigUint64(this._start + 4, true);
  }
  get serial() {
    return this._view.getBigUint64(this._start + 12, true);
  }
  get timestamp() {
    return this._view.getBigUint64(this._start + 20, true);
  }
  get txn() {
    return this._view.getBigUint64(this._start + 28, true);
  }
  get file() {
    if (this._fileText === undefined) this._fileText = text(this._arena, this._file, this._fileLen);
    return this._fileText;
  }
  get key() {
    if (this._keyText === undefined) this._keyText = text(this._arena, this._key, this._keyLen);
    return this._keyText;
  }
  /** The after image, JSON bytes; empty for a delete. */
  get data() {
    return this._arena.subarray(this._data, this._dataEnd);
  }
  /** The before image, JSON bytes, or null. */
  get before() {
    return this._before < 0 ? null : this._arena.subarray(this._before, this._beforeEnd);
  }
  get alt() {
    const out = {};
    const view = this._view;
    const count = view.getUint16(this._start + 2, true);
    let at = this._beforeEnd;
    for (let i = 0; i < count; i++) {
      const n = view.getUint32(at, true);
      const name = utf8.decode(this._arena.subarray(at + 4, at + 4 + n));
      at += 4 + n;
      const m = view.getUint32(at, true);
      out[name] = utf8.decode(this._arena.subarray(at + 4, at + 4 + m));
      at += 4 + m;
    }
    return out;
  }

  /** The after image parsed as JSON (null when empty: a delete). */
  json() {
    const d = this.data;
    return d.length === 0 ? null : JSON.parse(utf8.decode(d));
  }

  /** The before image parsed as JSON (null when absent or empty). */
  beforeJson() {
    const b = this.before;
    return b && b.length ? JSON.parse(utf8.decode(b)) : null;
  }
}

/** Short ASCII text without a TextDecoder call (cheaper in the interpreter). */
function text(bytes, at, len) {
  if (len <= 64) {
    let s = "";
    for (let i = at; i < at + len; i++) {
      const c = bytes[i];
      if (c >= 0x80) return utf8.decode(bytes.subarray(at, at + len));
      s += String.fromCharCode(c);
    }
    return s;
  }
  return utf8.decode(bytes.subarray(at, at + len));
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
      const { arena, offsets } = batch;
      const n = offsets.length;
      const view = new DataView(arena.buffer, arena.byteOffset, arena.byteLength);
      const bits = new Uint8Array((n + 7) >> 3);
      const errors = [];
      const c = cfg.get();
      for (let i = 0; i < n; i++) {
        try {
          if (c === null) throw new Error("not configured");
          const end = i + 1 < n ? offsets[i + 1] : arena.length;
          if (keep(new Record(arena, offsets[i], end, view), c)) bits[i >> 3] |= 1 << (i & 7);
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
      const { arena, offsets } = batch;
      const n = offsets.length;
      const view = new DataView(arena.buffer, arena.byteOffset, arena.byteLength);
      const out = new BatchBuilder();
      const errors = [];
      const c = cfg.get();
      for (let i = 0; i < n; i++) {
        try {
          if (c === null) throw new Error("not configured");
          const end = i + 1 < n ? offsets[i + 1] : arena.length;
          const record = new Record(arena, offsets[i], end, view);
          const answer = fn(record, c);
          if (answer === Keep || answer === undefined) out.pushRaw(record.raw);
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
