//! The route table and the OpenAPI 3.1 document generated from it.
//!
//! Each route names what it reads and answers ([`Io`]): its JSON body and query types,
//! its 2xx status, media type and answer type, and the problem `code`s it can answer.
//! The schemas come from the types themselves (`schemars`, `#[derive(JsonSchema)]` on
//! the structs the handlers deserialize and serialize), so the document follows the
//! code. Every JSON answer names a type but one: `GET /v1/openapi.json`, this document,
//! whose schema is OpenAPI's own (declared: [`openapi_document`]); the text answers
//! (HTML, JavaScript, Prometheus, an event stream) are declared strings.

use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::batch::MEDIA_TYPE as BATCH;
use super::console as c;
use super::events as e;
use super::links as l;
use super::plugins as p;
use super::restore as rs;
use super::routes as r;
use super::topologies as t;
use super::{handler, Handler};
use crate::tenancy::roles::Permission::{self, *};

/// One route: method, path (axum and OpenAPI share the `{param}` syntax), the permission
/// it needs (enforced by `api::guard` alone), summary, and what it reads and answers.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub permission: Permission,
    pub summary: &'static str,
    pub handler: Handler,
    /// The handler's name as written in the table (`r::create_database`).
    pub handler_name: &'static str,
    pub io: Io,
}

/// A schema in the document: derived from a type ([`of`]) or declared ([`text`], …).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`, as a reference into `components/schemas`.
pub fn of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What a request carries in its body.
#[derive(Clone, Copy)]
pub enum RequestBody {
    None,
    /// `application/json`, this schema.
    Json(SchemaFn),
    /// `application/wasm`: a WebAssembly component.
    Wasm,
    /// `application/json` with this schema (the operations), or the same operations as
    /// a binary batch, `application/vnd.doppel.batch` ([`super::batch`]).
    Ops(SchemaFn),
}

/// What a route reads and answers.
#[derive(Clone, Copy)]
pub struct Io {
    pub body: RequestBody,
    /// The query parameters, as one struct (its fields are the parameters).
    pub query: Option<SchemaFn>,
    /// The 2xx status (`"200"`, `"201"`, or `"2XX"` where it varies).
    pub status: &'static str,
    /// The answer's media type and schema; `None`: 204 without a body.
    pub answer: Option<(&'static str, SchemaFn)>,
    /// The problem `code`s particular to the route (those of the guard, of a malformed
    /// request and of a missing tenant or database are added from the route's shape).
    pub problems: &'static [&'static str],
    /// More of the route's own codes (a shared list such as [`WRITE`] plus these).
    pub more_problems: &'static [&'static str],
}

const fn io() -> Io {
    Io {
        body: RequestBody::None,
        query: None,
        status: "204",
        answer: None,
        problems: &[],
        more_problems: &[],
    }
}

impl Io {
    const fn body(mut self, schema: SchemaFn) -> Io {
        self.body = RequestBody::Json(schema);
        self
    }
    /// The operations of a transaction: JSON or a binary batch.
    const fn ops(mut self, schema: SchemaFn) -> Io {
        self.body = RequestBody::Ops(schema);
        self
    }
    const fn wasm(mut self) -> Io {
        self.body = RequestBody::Wasm;
        self
    }
    const fn query(mut self, schema: SchemaFn) -> Io {
        self.query = Some(schema);
        self
    }
    const fn ok(mut self, status: &'static str, media: &'static str, schema: SchemaFn) -> Io {
        self.status = status;
        self.answer = Some((media, schema));
        self
    }
    /// 204, no body.
    const fn none(mut self) -> Io {
        self.status = "204";
        self.answer = None;
        self
    }
    const fn problems(mut self, codes: &'static [&'static str]) -> Io {
        self.problems = codes;
        self
    }
    const fn and(mut self, codes: &'static [&'static str]) -> Io {
        self.more_problems = codes;
        self
    }
}

const JSON: &str = "application/json";
const TEXT_HTML: &str = "text/html";
const TEXT_JS: &str = "text/javascript";
const PROMETHEUS: &str = "text/plain; version=0.0.4";
const EVENT_STREAM: &str = "text/event-stream";

/// What a write of records can be refused with (`invalid-request`: a key too long for a
/// mutual database's versions, a write into its versions file, an alternate key the
/// file does not have).
const WRITE: &[&str] = &[
    "invalid-request",
    "duplicate-key",
    "empty-key",
    "key-too-long",
    "record-too-large",
    "quota-exceeded",
    "disk-full",
    "lock-timeout",
    "deadlock",
    "read-only-replica",
    "replication-timeout",
    "restore-in-progress",
    "log-backlog",
    "not-primary",
    "misdirected-write",
];

/// What the guard answers a route that needs a token.
const GUARD: &[&str] = &[
    "missing-token",
    "invalid-token",
    "bad-signature",
    "algorithm-not-allowed",
    "unknown-key",
    "token-expired",
    "token-not-yet-valid",
    "wrong-audience",
    "wrong-issuer",
    "forbidden",
    "rate-limited",
];

/// Tenant, database, file, alternate key, plugin and topology names (`node::check_name`).
const NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// Standard base64 with its padding (bytes carried in a JSON string).
pub const BASE64_PATTERN: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// The binary batch's layout, as the document tells it (`api::batch` decodes it).
const BATCH_LAYOUT: &str = "The operations of {\"ops\": [...]} without JSON around them. \
Integers little-endian, strings UTF-8. batch = \"DPB1\" count:u32 op{count}, nothing after the last op; \
op = kind:u8 file:str16 key:str16 alts:u8 (name:str16 value:str16){alts} data:bytes32; \
kind = 1 insert | 2 update | 3 upsert | 4 delete; str16 = len:u16 then len bytes; \
bytes32 = len:u32 then len bytes of JSON text, the record's data (len 0: no data). \
count is 1 to 100000. A body that breaks the layout is 400 malformed-request naming the operation \
(op_index) and byte where it stopped.";

/// Path parameters that are numbers (the handlers parse them as `u64`).
const INTEGER_PARAMS: &[&str] = &["txn", "id"];

/// Declared: a text answer (HTML, JavaScript, Prometheus text, an event stream).
fn text(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string"})
}

/// Declared: one Server-Sent Event; its `data` is the JSON snapshot (`api::events`).
fn sse_event(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}}
    })
}

/// Declared: this document itself, an OpenAPI 3.1 document (the one answer left a
/// free object: its schema is OpenAPI's own, not this API's).
fn openapi_document(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "An OpenAPI 3.1 document (https://spec.openapis.org/oas/v3.1.0)",
        "required": ["openapi", "info", "paths"],
        "properties": {"openapi": {"type": "string"}, "info": {"type": "object"}, "paths": {"type": "object"}}
    })
}

/// A link as the source shows it (`transport::source::LinkView`).
fn link_view(g: &mut SchemaGenerator) -> Schema {
    of::<crate::transport::source::LinkView>(g)
}

/// A path under one database.
macro_rules! db {
    ($rest:literal) => {
        concat!("/v1/tenants/{tenant}/databases/{db}", $rest)
    };
}

macro_rules! routes {
    ($($(#[$attr:meta])* $method:literal $path:expr => $f:path, $perm:ident, $summary:literal, $io:expr;)*) => {
        /// Every route of the API.
        pub const ROUTES: &[Route] = &[$($(#[$attr])* Route { method: $method, path: $path, permission: $perm, summary: $summary, handler: handler!($f), handler_name: stringify!($f), io: $io }),*];
    };
}

routes! {
    "get" "/" => c::index, Public, "The browser console (text/html; no data: every figure comes from the API with the user's token)", io().ok("200", TEXT_HTML, text);
    "get" "/console/{file}" => c::asset, Public, "A file of the browser console (stylesheet, JavaScript modules)", io().ok("200", TEXT_JS, text).problems(&["not-found"]);
    "get" "/docs" => super::reference::index, Public, "The API reference: Swagger UI over this document (text/html)", io().ok("200", TEXT_HTML, text).problems(&["unavailable"]);
    "get" "/docs/{file}" => super::reference::asset, Public, "A file of the API reference (Swagger UI's script and stylesheet)", io().ok("200", "text/*", text).problems(&["not-found", "unavailable"]);
    "get" "/problems" => r::problems, Public, "What each problem code means and what to do (text/html; a problem's type, /problems#{code}, is its entry)", io().ok("200", TEXT_HTML, text);
    "get" "/v1/health" => r::health, Public, "Liveness of the node", io().ok("200", JSON, of::<r::Health>);
    "get" "/v1/whoami" => r::whoami, Authenticated, "The caller as its token says: subject, tenant, role, expiry, the tenants it covers and what its role may do", io().ok("200", JSON, of::<r::WhoAmI>);
    "get" "/v1/openapi.json" => r::openapi, Public, "This document (no token needed: it holds no secret)", io().ok("200", JSON, openapi_document);
    "get" "/v1/node" => l::node, Authenticated, "This node: id, version, replication address; for the node administrator also its memory and disk", io().ok("200", JSON, of::<crate::transport::NodeInfo>);
    "get" "/metrics" => super::metrics::metrics, Authenticated, "Prometheus metrics of the databases and links the token covers (and the node's memory and disk for the node administrator)", io().ok("200", PROMETHEUS, text);
    "get" "/v1/tenants" => r::list_tenants, Authenticated, "List tenants", io().ok("200", JSON, of::<Vec<r::TenantName>>);
    "post" "/v1/tenants" => r::create_tenant, NodeAdmin, "Create a tenant", io().body(of::<r::NewTenant>).ok("201", JSON, of::<r::TenantName>).problems(&["already-exists"]);
    "get" "/v1/tenants/{tenant}/usage" => r::usage, Read, "The tenant's usage against its quotas", io().ok("200", JSON, of::<r::Usage>);
    "put" "/v1/tenants/{tenant}/quotas" => r::set_quotas, NodeAdmin, "Set the tenant's quotas (memory_bytes, storage_bytes, requests_per_sec, burst; null: the node default)", io().body(of::<crate::tenancy::quota::Limits>).ok("200", JSON, of::<r::TenantQuotas>);
    "get" "/v1/tenants/{tenant}/audit" => r::audit, Manage, "The tenant's audit log: admin and operator actions (after, limit)", io().query(of::<r::AuditQuery>).ok("200", JSON, of::<r::Entries<crate::tenancy::audit::Entry>>);
    "get" "/v1/tenants/{tenant}/events" => e::events, Read, "Live figures (text/event-stream): a 'snapshot' event every interval_ms (default 1000) with the tenant's links, databases and replicas; limit ends it after that many", io().query(of::<e::EventsQuery>).ok("200", EVENT_STREAM, sse_event);
    "get" "/v1/tenants/{tenant}/databases" => r::list_databases, Read, "List a tenant's databases", io().ok("200", JSON, of::<Vec<r::DatabaseAnswer>>);
    "post" "/v1/tenants/{tenant}/databases" => r::create_database, Manage, "Create a database: files, alternate keys, block size, durability, quota, retention", io().body(of::<crate::node::DatabaseSpec>).ok("201", JSON, of::<r::DatabaseAnswer>).problems(&["already-exists", "quota-exceeded", "invalid-request"]);
    "get" db!("") => r::get_database, Read, "Show a database", io().ok("200", JSON, of::<r::DatabaseAnswer>);
    "delete" db!("") => r::delete_database, Manage, "Delete a database with its logs and snapshots", io().none().problems(&["read-only-replica", "restore-in-progress"]);
    "get" db!("/files/{file}/records") => r::scan_records, Read, "Scan records by unique key range (from, to, limit)", io().query(of::<r::ScanQuery>).ok("200", JSON, of::<r::Scan>);
    "post" db!("/files/{file}/records") => r::insert_record, Write, "Insert a record (409 if the key exists)", io().body(of::<r::NewRecord>).ok("201", JSON, of::<r::Written>).problems(WRITE).and(&["invalid-request"]);
    "get" db!("/files/{file}/records/{key}") => r::get_record, Read, "Read a record by unique key", io().ok("200", JSON, of::<crate::node::records::RecordView>);
    "put" db!("/files/{file}/records/{key}") => r::put_record, Write, "Insert or replace a record", io().body(of::<r::RecordBody>).ok("200", JSON, of::<r::Upserted>).problems(WRITE).and(&["invalid-request"]);
    "delete" db!("/files/{file}/records/{key}") => r::delete_record, Write, "Delete a record", io().ok("200", JSON, of::<r::Written>).problems(WRITE);
    "get" db!("/files/{file}/alt/{alt}/{value}") => r::lookup_alt, Read, "Records whose alternate key equals a value", io().query(of::<r::LimitQuery>).ok("200", JSON, of::<r::Records>);
    "post" db!("/transactions") => r::transaction, Write, "Apply a batch of operations atomically (JSON, or the same operations as a binary batch: application/vnd.doppel.batch)", io().query(of::<r::LockQuery>).ops(of::<r::OpsBody>).ok("200", JSON, of::<crate::node::database::Committed>).problems(WRITE).and(&["invalid-request"]);
    "post" db!("/txns") => r::begin, Write, "Begin an interactive transaction", io().ok("201", JSON, of::<r::Begun>).problems(&["read-only-replica", "invalid-request"]);
    "get" db!("/txns/{txn}") => r::get_txn, Read, "Show an open transaction", io().ok("200", JSON, of::<r::OpenTxn>);
    "post" db!("/txns/{txn}/ops") => r::add_ops, Write, "Add operations to an open transaction (locks their records; JSON or a binary batch)", io().query(of::<r::LockQuery>).ops(of::<r::OpsBody>).ok("200", JSON, of::<r::Pending>).problems(WRITE).and(&["invalid-request"]);
    "post" db!("/txns/{txn}/commit") => r::commit, Write, "Commit an open transaction", io().ok("200", JSON, of::<crate::node::database::Committed>).problems(WRITE);
    "post" db!("/txns/{txn}/cancel") => r::cancel, Write, "Cancel an open transaction", io().ok("200", JSON, of::<r::Cancelled>);
    "get" db!("/snapshots") => r::list_snapshots, Read, "List stored snapshots", io().ok("200", JSON, of::<Vec<r::SnapshotAnswer>>);
    "post" db!("/snapshots") => r::take_snapshot, Operate, "Take a compact snapshot", io().ok("201", JSON, of::<r::SnapshotAnswer>).problems(&["unavailable"]);
    "get" db!("/log") => r::read_log, Read, "Inspect A/B/T log entries (from, limit)", io().query(of::<r::LogQuery>).ok("200", JSON, of::<r::Entries<crate::node::logview::LogEntryView>>);
    "get" db!("/checksums") => r::checksums, Read, "Per-block checksums, file by file", io().ok("200", JSON, of::<r::Checksums>);
    "post" db!("/promote") => l::promote, Operate, "Promote a replica to a primary (body {force, quorum}): it opens a new epoch of its log, takes the quorum, stops following its link and takes writes, keeping its blocks", io().body(of::<l::PromoteBody>).ok("200", JSON, of::<crate::transport::target::Promoted>).problems(&["not-caught-up", "read-only-replica", "not-a-replica"]);
    #[cfg(feature = "fault-injection")]
    "post" db!("/faults/corrupt-block") => l::corrupt_block, NodeAdmin, "Fault injection (test builds only): flip a byte of a block ({file, block})", io().body(of::<l::CorruptBlock>).none();
    "post" db!("/restore") => rs::start, Operate, "Point-in-time restore to a serial or timestamp_us, in place or into a new database; answers 202 with the restore operation, or with dry_run the preview (method, updates, records changed)", io().body(of::<rs::RestoreBody>).ok("2XX", JSON, of::<rs::Started>).problems(&["outside-retention", "point-in-future", "restore-in-progress", "already-exists"]);
    "post" db!("/replay") => rs::replay, Operate, "Replay with corrected logic: restore to from_serial, then replay the T log up to to_serial through a corrected transform (body {from_serial, to_serial?, transform?: {plugin, config}, dry_run?})", io().body(of::<crate::replay::ReplayRequest>).ok("200", JSON, of::<crate::replay::Replay>).problems(&["outside-retention", "point-in-future", "restore-in-progress", "replay-rejected", "read-only-replica", "invalid-request", "transactions-open"]);
    "get" db!("/restores") => rs::list, Read, "The database's restores since the node started, with their state and progress", io().ok("200", JSON, of::<rs::Restores>);
    "get" db!("/restores/{id}") => rs::show, Read, "One restore: state, phase, done/total, method, point, records changed, error", io().ok("200", JSON, of::<crate::node::restore::OperationView>);
    "get" db!("/conflicts") => l::conflicts, Read, "Conflicts mutual links met in this database: the count and the newest (limit, at most 1000) with both versions and the decision", io().query(of::<l::ConflictsQuery>).ok("200", JSON, of::<l::Conflicts>);
    "post" db!("/locks") => l::take_locks, Operate, "Parallel databases (called by the other sites): lock records for a transaction of another site (body {holder: [time, origin], keys: [\"file/key\"], timeout_ms}); 409 deadlock or lock-timeout", io().body(of::<l::LockRequest>).ok("200", JSON, of::<l::Locked>).problems(&["deadlock", "lock-timeout"]);
    "delete" db!("/locks/{holder}") => l::release_locks, Operate, "Parallel databases: release the records a transaction of another site holds (holder time.origin)", io().none();
    "get" db!("/quorum") => l::get_quorum, Read, "The synchronous quorum: k of the database's synchronous links, and the wait", io().ok("200", JSON, of::<l::QuorumView>);
    "put" db!("/quorum") => l::set_quorum, Operate, "Set the synchronous quorum (k, timeout_ms, sync_links)", io().body(of::<l::QuorumBody>).ok("200", JSON, of::<l::QuorumView>);
    "get" "/v1/tenants/{tenant}/links" => l::list, Read, "List the links whose source is on this node", io().ok("200", JSON, of::<Vec<crate::transport::source::LinkView>>);
    "post" "/v1/tenants/{tenant}/links" => l::create, Operate, "Create a link: database, target {url, database}, mode sync|async, apply mirror|logical, stages, on_error", io().query(of::<l::CreateQuery>).body(of::<crate::transport::links::LinkSpec>).ok("2XX", JSON, of::<l::Created>).problems(&["link-refused", "already-exists", "read-only-replica", "invalid-request"]);
    "get" "/v1/tenants/{tenant}/links/{link}" => l::show, Read, "Show a link with its state, lag, throughput and last error", io().ok("200", JSON, link_view);
    "delete" "/v1/tenants/{tenant}/links/{link}" => l::delete, Operate, "Delete a link (the replica keeps its data)", io().none();
    "put" "/v1/tenants/{tenant}/links/{link}/stages" => l::set_stages, Operate, "Swap a logical link's stages (body: [{plugin: name@version, config}]) while it runs", io().body(of::<Vec<crate::transport::links::StageSpec>>).ok("200", JSON, link_view).problems(&["plugin-config-rejected", "invalid-request"]);
    "get" "/v1/tenants/{tenant}/links/{link}/dead-letters" => l::dead_letters, Read, "Records the link's stages rejected under the quarantine policy, oldest first", io().ok("200", JSON, of::<Vec<crate::transport::logical::DeadLetter>>);
    "delete" "/v1/tenants/{tenant}/links/{link}/dead-letters/{id}" => l::drop_dead_letter, Operate, "Drop a dead letter", io().none();
    "post" "/v1/tenants/{tenant}/links/{link}/dead-letters/{id}/redrive" => l::redrive, Operate, "Re-drive a dead letter (body: optional {record} as edited) through the link's stages to its replica", io().body(of::<l::RedriveBody>).ok("200", JSON, of::<crate::transport::redrive::Redriven>).problems(&["redrive-rejected", "link-refused", "invalid-request", "already-exists"]);
    "post" "/v1/tenants/{tenant}/links/{link}/verify" => l::verify, Operate, "Verify a mirror link: compare the replica's blocks with the source's at one serial, and list the differing blocks", io().ok("200", JSON, of::<crate::transport::verify::Report>).problems(&["link-refused", "link-not-streaming", "unavailable", "invalid-request"]);
    "post" "/v1/tenants/{tenant}/links/{link}/repair" => l::repair, Operate, "Repair the differing blocks of a mirror link's replica (body: {file?, blocks?}; {} repairs all)", io().body(of::<crate::transport::verify::RepairScope>).ok("200", JSON, of::<crate::transport::verify::Repair>).problems(&["link-refused", "link-not-streaming", "unavailable", "invalid-request"]);
    "post" "/v1/tenants/{tenant}/links/{link}/pause" => l::pause, Operate, "Pause a link", io().ok("200", JSON, link_view);
    "post" "/v1/tenants/{tenant}/links/{link}/resume" => l::resume, Operate, "Resume a paused or stopped link", io().ok("200", JSON, link_view);
    "get" "/v1/cluster" => t::cluster, Authenticated, "The cluster: members, the primary of each replicated database (of the caller's tenants), failovers", io().ok("200", JSON, of::<crate::cluster::ClusterView>).problems(&["not-clustered"]);
    "get" "/v1/tenants/{tenant}/topologies" => t::list, Read, "List the tenant's topologies", io().ok("200", JSON, of::<Vec<crate::topology::Summary>>);
    "post" "/v1/tenants/{tenant}/topologies" => t::apply, Operate, "Validate and apply a topology document (nodes, links, modes, stages, policies); ?dry_run=true answers the plan only", io().query(of::<t::ApplyQuery>).body(of::<crate::topology::Topology>).ok("200", JSON, of::<crate::topology::ApplyAnswer>).problems(&["topology-invalid", "topology-apply-failed", "revision-conflict"]);
    "get" "/v1/tenants/{tenant}/topologies/{name}" => t::show, Read, "Show a topology document with the live state of each of its links", io().ok("200", JSON, of::<crate::topology::Shown>);
    "delete" "/v1/tenants/{tenant}/topologies/{name}" => t::delete, Operate, "Delete a topology and the links it created", io().none().problems(&["topology-apply-failed"]);
    "post" "/v1/tenants/{tenant}/topologies/{name}/failover" => t::failover, Operate, "Fail over: promote a replica (body {node, database, force}) and re-point the old primary's links; the old primary rejoins as a replica", io().body(of::<t::FailoverBody>).ok("200", JSON, of::<crate::topology::FailoverAnswer>).problems(&["topology-invalid", "not-caught-up", "automatic-failover"]);
    "get" "/v1/tenants/{tenant}/replicas" => l::list_replicas, Read, "List the replicas on this node", io().ok("200", JSON, of::<Vec<crate::transport::target::ReplicaView>>);
    "put" "/v1/tenants/{tenant}/replicas/{link}" => l::register_replica, Operate, "Register a replica (called by the source node when a link starts)", io().body(of::<crate::transport::links::ReplicaRequest>).ok("200", JSON, of::<crate::transport::target::Registered>).problems(&["already-exists", "invalid-request"]);
    "post" "/v1/tenants/{tenant}/replicas/{link}/repair" => l::apply_repair, Operate, "Repair a mirror replica's block file from its source's blocks (called by the source node, with the link's credential)", io().body(of::<crate::transport::verify::RepairRequest>).ok("200", JSON, of::<crate::transport::verify::Replaced>).problems(&["invalid-request"]);
    "post" "/v1/tenants/{tenant}/replicas/{link}/redrive" => l::apply_redrive, Operate, "Apply re-driven records on a logical replica (called by the source node, with the link's credential)", io().body(of::<crate::transport::redrive::RedriveRequest>).ok("200", JSON, of::<crate::transport::redrive::AppliedRedrive>).problems(&["invalid-request"]);
    "post" "/v1/tenants/{tenant}/replicas/{link}/suspend" => l::suspend_replica, Operate, "Suspend a replica: it stores what arrives and applies nothing (a frozen state for read-only jobs)", io().ok("200", JSON, of::<crate::transport::target::Suspension>);
    "post" "/v1/tenants/{tenant}/replicas/{link}/release" => l::release_replica, Operate, "Release a suspended replica: it applies what it stored and follows again", io().ok("200", JSON, of::<crate::transport::target::Suspension>);
    "delete" "/v1/tenants/{tenant}/replicas/{link}" => l::detach_replica, Operate, "Detach a replica: the database takes client writes again", io().none();
    "get" "/v1/tenants/{tenant}/plugins" => p::list, Read, "List a tenant's plugins", io().ok("200", JSON, of::<Vec<p::PluginView>>);
    "get" "/v1/tenants/{tenant}/plugins/{name}/{version}" => p::show, Read, "Show a plugin version (role, SHA-256, size, config schema)", io().ok("200", JSON, of::<p::PluginView>);
    "put" "/v1/tenants/{tenant}/plugins/{name}/{version}" => p::upload, Operate, "Upload a plugin (?role=filter|transform|rule|resolver; body: the wasm component, application/wasm)", io().query(of::<p::UploadQuery>).wasm().ok("2XX", JSON, of::<p::PluginView>).problems(&["plugin-rejected", "unsupported-media-type", "already-exists", "builtin-plugin", "quota-exceeded", "payload-too-large"]);
    "delete" "/v1/tenants/{tenant}/plugins/{name}/{version}" => p::delete, Operate, "Delete a plugin version", io().ok("200", JSON, of::<p::Deleted>).problems(&["builtin-plugin"]);
    "post" "/v1/tenants/{tenant}/plugins/{name}/{version}/dry-run" => p::dry_run, Operate, "Run records through a plugin: result, per-record errors and log lines (a resolver takes records, remote and optional base, and answers each record's decision: local, remote or merged)", io().body(of::<p::DryRun>).ok("200", JSON, of::<p::DryRunAnswer>).problems(&["plugin-rejected", "plugin-config-rejected", "plugin-stopped", "invalid-request"]);
}

/// The operation id of a route: its handler's name, with its module's where names
/// repeat (`create_database`, `links_create`, `plugins_upload`).
pub fn operation_id(route: &Route) -> String {
    let handler = route.handler_name;
    let (module, name) = handler.rsplit_once("::").unwrap_or(("", handler));
    let prefix = match module.trim() {
        "c" => "console_",
        "l" => "links_",
        "p" => "plugins_",
        "t" => "topologies_",
        "rs" => "restores_",
        "e" => "tenant_",
        "super::reference" => "reference_",
        _ => "",
    };
    format!("{prefix}{}", name.trim())
}

/// OpenAPI `links`: from an operation that creates something to those that use it, so a
/// tool can chain real calls.
/// (from handler, link name, to handler, parameters).
type OpLink = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const LINKS: &[OpLink] = {
    const TENANT: (&str, &str) = ("tenant", "$request.path.tenant");
    const DB_FROM_PATH: (&str, &str) = ("db", "$request.path.db");
    const DB_CREATED: (&str, &str) = ("db", "$response.body#/name");
    const TXN: (&str, &str) = ("txn", "$response.body#/txn");
    const LINK: (&str, &str) = ("link", "$response.body#/id");
    const PLUGIN: &[(&str, &str)] = &[
        TENANT,
        ("name", "$request.path.name"),
        ("version", "$request.path.version"),
    ];
    &[
        (
            "r::create_tenant",
            "Databases",
            "r::list_databases",
            &[("tenant", "$response.body#/name")],
        ),
        (
            "r::create_tenant",
            "NewDatabase",
            "r::create_database",
            &[("tenant", "$response.body#/name")],
        ),
        (
            "r::create_database",
            "Database",
            "r::get_database",
            &[TENANT, DB_CREATED],
        ),
        (
            "r::create_database",
            "Records",
            "r::scan_records",
            &[TENANT, DB_CREATED],
        ),
        (
            "r::create_database",
            "NewRecord",
            "r::insert_record",
            &[TENANT, DB_CREATED],
        ),
        (
            "r::create_database",
            "Transaction",
            "r::transaction",
            &[TENANT, DB_CREATED],
        ),
        (
            "r::create_database",
            "Begin",
            "r::begin",
            &[TENANT, DB_CREATED],
        ),
        (
            "r::create_database",
            "Snapshot",
            "r::take_snapshot",
            &[TENANT, DB_CREATED],
        ),
        (
            "r::create_database",
            "Snapshots",
            "r::list_snapshots",
            &[TENANT, DB_CREATED],
        ),
        (
            "r::create_database",
            "Log",
            "r::read_log",
            &[TENANT, DB_CREATED],
        ),
        (
            "r::insert_record",
            "Record",
            "r::get_record",
            &[
                TENANT,
                DB_FROM_PATH,
                ("file", "$request.path.file"),
                ("key", "$request.body#/key"),
            ],
        ),
        (
            "r::put_record",
            "Record",
            "r::get_record",
            &[
                TENANT,
                DB_FROM_PATH,
                ("file", "$request.path.file"),
                ("key", "$request.path.key"),
            ],
        ),
        (
            "r::begin",
            "Transaction",
            "r::get_txn",
            &[TENANT, DB_FROM_PATH, TXN],
        ),
        (
            "r::begin",
            "AddOperations",
            "r::add_ops",
            &[TENANT, DB_FROM_PATH, TXN],
        ),
        (
            "r::begin",
            "Commit",
            "r::commit",
            &[TENANT, DB_FROM_PATH, TXN],
        ),
        (
            "r::begin",
            "Cancel",
            "r::cancel",
            &[TENANT, DB_FROM_PATH, TXN],
        ),
        (
            "r::take_snapshot",
            "Snapshots",
            "r::list_snapshots",
            &[TENANT, DB_FROM_PATH],
        ),
        ("p::upload", "Plugin", "p::show", PLUGIN),
        ("p::upload", "DryRun", "p::dry_run", PLUGIN),
        ("l::create", "Link", "l::show", &[TENANT, LINK]),
        (
            "l::create",
            "DeadLetters",
            "l::dead_letters",
            &[TENANT, LINK],
        ),
        ("l::create", "Verify", "l::verify", &[TENANT, LINK]),
        ("l::create", "Pause", "l::pause", &[TENANT, LINK]),
        ("l::create", "Resume", "l::resume", &[TENANT, LINK]),
    ]
};

/// Bounds of the integer formats `schemars` writes, so a document's integers are the
/// ones the server can parse.
fn bound_integers(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let bounds: Option<(Value, Value)> = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some((json!(0), json!(u8::MAX))),
                Some("uint16") => Some((json!(0), json!(u16::MAX))),
                Some("uint32") => Some((json!(0), json!(u32::MAX))),
                Some("uint64" | "uint") => Some((json!(0), json!(u64::MAX))),
                Some("int32") => Some((json!(i32::MIN), json!(i32::MAX))),
                Some("int64" | "int") => Some((json!(i64::MIN), json!(i64::MAX))),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                map.entry("minimum").or_insert(min);
                map.entry("maximum").or_insert(max);
            }
            map.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// `true` (any value) as `{}` where a schema stands: the same for JSON Schema, and what
/// OpenAPI tools that predate 3.1 expect.
fn no_boolean_schemas(v: &mut Value) {
    fn any(v: &mut Value) {
        if *v == Value::Bool(true) {
            *v = json!({});
        }
    }
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match (key.as_str(), &mut *value) {
                    ("properties" | "$defs", Value::Object(props)) => {
                        props.values_mut().for_each(any)
                    }
                    ("items" | "not", _) => any(value),
                    ("anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(items)) => {
                        items.iter_mut().for_each(any)
                    }
                    _ => {}
                }
            }
            map.values_mut().for_each(no_boolean_schemas);
        }
        Value::Array(items) => items.iter_mut().for_each(no_boolean_schemas),
        _ => {}
    }
}

/// An enum whose variants are documented comes out of `schemars` as a `oneOf` of
/// string constants; clients and generators read a plain `enum` better.
fn plain_enums(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let constants: Option<Vec<Value>> = map
                .get("oneOf")
                .and_then(Value::as_array)
                .and_then(|variants| {
                    variants
                        .iter()
                        .map(|variant| {
                            (variant["type"] == "string")
                                .then(|| variant.get("const").cloned())
                                .flatten()
                        })
                        .collect()
                });
            if let Some(constants) = constants {
                map.remove("oneOf");
                map.insert("type".into(), json!("string"));
                map.insert("enum".into(), Value::Array(constants));
            }
            map.values_mut().for_each(plain_enums);
        }
        Value::Array(items) => items.iter_mut().for_each(plain_enums),
        _ => {}
    }
}

/// `{"type": ["integer", "null"]}` → `{"type": "integer"}`: a query parameter is absent
/// or has a value, never `null`.
fn not_null(mut schema: Value) -> Value {
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            schema["type"] = types[0].clone();
        }
    }
    schema
}

/// Rename `components/schemas` references: `from` → `to`.
fn rename_refs(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref") {
                if r.strip_prefix("#/components/schemas/") == Some(from) {
                    *r = format!("#/components/schemas/{to}");
                }
            }
            map.values_mut().for_each(|v| rename_refs(v, from, to));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_refs(v, from, to)),
        _ => {}
    }
}

fn generator(contract: Contract, inline: bool) -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.contract = contract;
            s.inline_subschemas = inline;
        })
        .into_generator()
}

/// The problem codes a route can answer: its own, and those its shape brings.
pub fn problem_codes(route: &Route) -> Vec<&'static str> {
    let mut codes: Vec<&'static str> = route.io.problems.to_vec();
    codes.extend_from_slice(route.io.more_problems);
    if route.permission != Public {
        codes.extend_from_slice(GUARD);
    }
    let params: Vec<&str> = path_params(route.path).collect();
    if !matches!(route.io.body, RequestBody::None)
        || route.io.query.is_some()
        || params.iter().any(|p| INTEGER_PARAMS.contains(p))
    {
        codes.push("malformed-request");
    }
    match route.io.body {
        RequestBody::Json(_) => codes.push("payload-too-large"),
        RequestBody::Wasm => codes.push("payload-too-large"),
        RequestBody::Ops(_) => codes.extend(["payload-too-large", "unsupported-media-type"]),
        RequestBody::None => {}
    }
    if !params.is_empty() {
        codes.push("not-found");
    }
    codes.sort_unstable();
    codes.dedup();
    codes
}

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
}

/// The OpenAPI document for [`ROUTES`].
pub fn document() -> Value {
    let mut requests = generator(Contract::Deserialize, false);
    let mut answers = generator(Contract::Serialize, false);
    let mut queries = generator(Contract::Deserialize, true);
    let mut paths = Map::new();
    let mut answer_schemas: Vec<(String, String, Value)> = Vec::new();
    for route in ROUTES {
        let mut params: Vec<Value> = path_params(route.path)
            .map(|name| {
                let schema = match name {
                    _ if INTEGER_PARAMS.contains(&name) => {
                        json!({"type": "integer", "format": "uint64", "minimum": 0, "maximum": u64::MAX})
                    }
                    "tenant" | "db" | "file" | "alt" | "name" => {
                        json!({"type": "string", "pattern": NAME_PATTERN})
                    }
                    "version" => json!({"type": "string", "pattern": "^[A-Za-z0-9._+-]{1,32}$"}),
                    "link" => json!({"type": "string", "minLength": 1, "maxLength": 128}),
                    "key" => json!({"type": "string", "minLength": 1, "maxLength": 1024}),
                    "holder" => json!({"type": "string", "pattern": "^[0-9]{1,19}\\.[0-9]{1,19}$"}),
                    _ => json!({"type": "string", "minLength": 1}),
                };
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        if let Some(query) = route.io.query {
            let schema = query(&mut queries).to_value();
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = schema["properties"].as_object() {
                for (name, prop) in props {
                    let mut prop = not_null(prop.clone());
                    let description = prop.as_object_mut().and_then(|p| p.remove("description"));
                    let mut param = json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": prop});
                    if let Some(d) = description {
                        param["description"] = d;
                    }
                    params.push(param);
                }
            }
        }
        let mut responses = Map::new();
        let mut ok = match route.io.answer {
            Some((media, schema)) => {
                let schema = schema(&mut answers).to_value();
                answer_schemas.push((
                    route.path.to_string(),
                    route.method.to_string(),
                    schema.clone(),
                ));
                json!({"description": "Success", "content": {media: {"schema": schema}}})
            }
            None => json!({"description": "Done; no body"}),
        };
        let id = operation_id(route);
        let links: Map<String, Value> = LINKS
            .iter()
            .filter(|(from, ..)| *from == route.handler_name)
            .filter_map(|(_, name, to, parameters)| {
                let target = ROUTES.iter().find(|r| r.handler_name == *to)?;
                let parameters: Map<String, Value> = parameters
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                Some((
                    name.to_string(),
                    json!({"operationId": operation_id(target), "parameters": parameters}),
                ))
            })
            .collect();
        if !links.is_empty() {
            ok["links"] = Value::Object(links);
        }
        responses.insert(route.io.status.into(), ok);
        let codes = problem_codes(route);
        responses.insert(
            "default".into(),
            json!({
                "description": format!("A problem: {}", codes.join(", ")),
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            }),
        );
        let mut op = json!({
            "operationId": id,
            "summary": route.summary,
            "parameters": params,
            "responses": responses,
            "x-permission": route.permission.name(),
            "x-problem-codes": codes,
        });
        if route.permission != Public {
            op["security"] = json!([{"bearer": []}]);
        } else {
            op["security"] = json!([]);
        }
        match route.io.body {
            RequestBody::Json(schema) => {
                op["requestBody"] = json!({"required": true, "content": {JSON: {"schema": schema(&mut requests).to_value()}}});
            }
            RequestBody::Ops(schema) => {
                let batch = json!({"schema": {
                    "type": "string",
                    "format": "binary",
                    "description": BATCH_LAYOUT,
                }});
                op["requestBody"] = json!({"required": true, "content": {
                    JSON: {"schema": schema(&mut requests).to_value()},
                    BATCH: batch,
                }});
            }
            RequestBody::Wasm => {
                let wasm = json!({"schema": {"type": "string", "format": "binary"}});
                op["requestBody"] = json!({"required": true, "content": {"application/wasm": wasm, "application/octet-stream": wasm}});
            }
            RequestBody::None => {}
        }
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    // One set of component schemas: where a type reads differently as an answer than as
    // a request (fields with defaults are optional in, always there out), the answer's
    // is kept as `{name}.answer`.
    let mut schemas = requests.take_definitions(true);
    let answer_defs = answers.take_definitions(true);
    let mut renames = Vec::new();
    for (name, schema) in &answer_defs {
        if schemas.get(name).is_some_and(|s| s != schema) {
            renames.push(name.clone());
        }
    }
    for (name, mut schema) in answer_defs {
        for from in &renames {
            rename_refs(&mut schema, from, &format!("{from}.answer"));
        }
        let key = if renames.contains(&name) {
            format!("{name}.answer")
        } else {
            name
        };
        schemas.insert(key, schema);
    }
    for (path, method, _) in &answer_schemas {
        for from in &renames {
            if let Some(op) = paths.get_mut(path).and_then(|p| p.get_mut(method)) {
                for (status, response) in op["responses"].as_object_mut().into_iter().flatten() {
                    if status != "default" {
                        rename_refs(response, from, &format!("{from}.answer"));
                    }
                }
            }
        }
    }
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "A problem (RFC 9457). `type` is /problems#{code} on the node: its entry on the page `GET /problems` (what the code means and what to do).",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "code": {"type": "string"}, "op_index": {"type": "integer"}
            }
        }),
    );
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Doppel", "version": env!("CARGO_PKG_VERSION"), "description": "Replication server for in-memory block-store databases. See docs/API.md."},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}, "schemas": schemas},
        "security": [{"bearer": []}],
    });
    bound_integers(&mut doc);
    plain_enums(&mut doc);
    no_boolean_schemas(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes that take no body; any other POST or PUT must name its body's type.
    const BODILESS: &[&str] = &[
        "r::begin",
        "r::commit",
        "r::cancel",
        "r::take_snapshot",
        "l::verify",
        "l::pause",
        "l::resume",
        "l::suspend_replica",
        "l::release_replica",
    ];

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_route_names_its_body_and_answer() {
        for route in ROUTES {
            let name = route.handler_name;
            if matches!(route.method, "post" | "put") {
                assert!(
                    !matches!(route.io.body, RequestBody::None) || BODILESS.contains(&name),
                    "{name} ({} {}) names no body type",
                    route.method,
                    route.path
                );
            }
            assert!(
                route.io.answer.is_some() || route.io.status == "204",
                "{name}: an answer with a body names its schema"
            );
            assert!(
                !problem_codes(route).is_empty() || route.permission == Public,
                "{name} lists its problem codes"
            );
        }
    }

    /// Every JSON answer is a named type of the code (a `$ref`, or a list of one),
    /// but the document's own.
    #[test]
    fn every_json_answer_names_its_type() {
        let doc = document();
        for route in ROUTES {
            let Some((JSON, _)) = route.io.answer else {
                continue;
            };
            if route.path == "/v1/openapi.json" {
                continue;
            }
            let op = &doc["paths"][route.path][route.method];
            let schema = &op["responses"][route.io.status]["content"][JSON]["schema"];
            let named = |s: &Value| s["$ref"].is_string();
            assert!(
                named(schema) || (schema["type"] == "array" && named(&schema["items"])),
                "{} answers a named type, not {schema}",
                route.handler_name
            );
        }
    }

    #[test]
    fn every_reference_resolves_and_every_code_has_a_title() {
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 40, "schemas are referenced: {}", found.len());
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").expect(r);
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} resolves"
            );
        }
        for route in ROUTES {
            for code in problem_codes(route) {
                assert_ne!(
                    super::super::error::title(code),
                    "Internal error",
                    "{code} ({}) has a title",
                    route.handler_name
                );
            }
        }
    }
}
