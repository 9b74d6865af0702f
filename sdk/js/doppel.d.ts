// Types of @doppel/plugin-sdk (doppel.js): Doppel stage plugins in JavaScript.

export declare const CONTRACT_VERSION: 2;
export declare const MAX_LOG_LINES: number;
export declare const MAX_LOG_LINE: number;

/** What the host passes: one arena and the offset of each record in it. */
export interface Batch {
  arena: Uint8Array;
  offsets: Uint32Array;
}

export interface RecordError {
  index: number;
  message: string;
}

export type Op = "insert" | "update" | "delete" | "read";

/** One record of a batch (the layout of doppel_sdk::abi). */
export declare class Record {
  constructor(arena: Uint8Array, start?: number, end?: number, view?: DataView);
  readonly raw: Uint8Array;
  op: Op;
  origin: bigint;
  serial: bigint;
  timestamp: bigint;
  txn: bigint;
  file: string;
  key: string;
  /** The after image, JSON bytes; empty for a delete. */
  data: Uint8Array;
  /** The before image, JSON bytes, when known. */
  before: Uint8Array | null;
  alt: { [name: string]: string };
  json(): unknown;
  beforeJson(): unknown;
}

/** A plugin's configuration: the schema exported for the console, defaults, and a check. */
export interface ConfigSpec<C> {
  schema?: object;
  defaults?: Partial<C>;
  /** A message (or a throw) refuses the config. */
  validate?(cfg: C): string | undefined | void;
}

interface Common {
  contractVersion(): number;
  configSchema(): string;
  /** Throws (a string) to refuse the config. */
  configure(config: string): void;
}

export interface FilterExports extends Common {
  filter(batch: Batch): { keep: Uint8Array; errors: RecordError[]; log: string[] };
}

export interface TransformExports extends Common {
  transform(batch: Batch): { records: Batch; errors: RecordError[]; log: string[] };
}

/** The exports of a filter; a throw in `keep` is that record's error. */
export declare function filter<C = any>(keep: (r: Record, cfg: C) => boolean, config?: ConfigSpec<C>): FilterExports;

export interface EditFields {
  file?: string;
  key?: string;
  /** A JSON value, or JSON bytes. */
  data?: unknown;
  /** A JSON value, JSON bytes, or null to remove the before image. */
  before?: unknown;
}
export type Answer = typeof Keep | typeof Drop | { edit: EditFields };
export declare const Keep: { readonly keep: true };
export declare const Drop: { readonly drop: true };
export declare function Edit(fields: EditFields): { edit: EditFields };

/** The exports of a transform; a throw in `fn` is that record's error. */
export declare function transform<C = any>(fn: (r: Record, cfg: C) => Answer | undefined, config?: ConfigSpec<C>): TransformExports;

/** One log line, returned with the call's result (bounded). */
export declare function log(line: unknown): void;

export declare function records(batch: Batch): Uint8Array[];

export declare class BatchBuilder {
  pushRaw(bytes: Uint8Array): void;
  push(record: Record, edit?: EditFields): void;
  finish(): Batch;
}

export interface PlainRecord {
  op?: Op;
  file: string;
  key: string;
  data?: unknown;
  before?: unknown;
  alt?: { [name: string]: string };
  origin?: number;
  serial?: number;
  timestamp?: number;
  txn?: number;
}

export declare function encodeBatch(records: PlainRecord[]): Batch;

export declare const json: {
  checkPath(what: string, path: string): void;
  get(value: unknown, path: string): unknown;
  replace(value: unknown, path: string, withValue: unknown): boolean;
  remove(value: unknown, path: string): boolean;
};

export declare const testing: {
  filter(plugin: FilterExports, config: unknown, records: PlainRecord[]): Array<boolean | { error: string }>;
  transform(
    plugin: TransformExports,
    config: unknown,
    records: PlainRecord[],
  ): { records: Array<{ op: Op; file: string; key: string; data: unknown; before: unknown; alt: object }>; errors: RecordError[] };
};
