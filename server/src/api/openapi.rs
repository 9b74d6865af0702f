//! The route table and the OpenAPI 3.1 document generated from it.

use serde_json::{json, Map, Value};

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
/// it needs (enforced by `api::guard` alone), summary.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub permission: Permission,
    pub summary: &'static str,
    pub handler: Handler,
}

/// A path under one database.
macro_rules! db {
    ($rest:literal) => {
        concat!("/v1/tenants/{tenant}/databases/{db}", $rest)
    };
}

macro_rules! routes {
    ($($(#[$attr:meta])* $method:literal $path:expr => $f:path, $perm:ident, $summary:literal;)*) => {
        /// Every route of the API.
        pub const ROUTES: &[Route] = &[$($(#[$attr])* Route { method: $method, path: $path, permission: $perm, summary: $summary, handler: handler!($f) }),*];
    };
}

routes! {
    "get" "/" => c::index, Public, "The browser console (text/html; no data: every figure comes from the API with the user's token)";
    "get" "/console/{file}" => c::asset, Public, "A file of the browser console (stylesheet, JavaScript modules)";
    "get" "/v1/health" => r::health, Public, "Liveness of the node";
    "get" "/v1/whoami" => r::whoami, Authenticated, "The caller as its token says: subject, tenant, role, expiry, the tenants it covers and what its role may do";
    "get" "/v1/openapi.json" => r::openapi, Authenticated, "This document";
    "get" "/v1/node" => l::node, Authenticated, "This node: id, version, replication address; for the node administrator also its memory and disk";
    "get" "/metrics" => super::metrics::metrics, Authenticated, "Prometheus metrics of the databases and links the token covers (and the node's memory and disk for the node administrator)";
    "get" "/v1/tenants" => r::list_tenants, Authenticated, "List tenants";
    "post" "/v1/tenants" => r::create_tenant, NodeAdmin, "Create a tenant";
    "get" "/v1/tenants/{tenant}/usage" => r::usage, Read, "The tenant's usage against its quotas";
    "put" "/v1/tenants/{tenant}/quotas" => r::set_quotas, NodeAdmin, "Set the tenant's quotas (memory_bytes, storage_bytes, requests_per_sec, burst; null: the node default)";
    "get" "/v1/tenants/{tenant}/audit" => r::audit, Manage, "The tenant's audit log: admin and operator actions (after, limit)";
    "get" "/v1/tenants/{tenant}/events" => e::events, Read, "Live figures (text/event-stream): a 'snapshot' event every interval_ms (default 1000) with the tenant's links, databases and replicas; limit ends it after that many";
    "get" "/v1/tenants/{tenant}/databases" => r::list_databases, Read, "List a tenant's databases";
    "post" "/v1/tenants/{tenant}/databases" => r::create_database, Manage, "Create a database: files, alternate keys, block size, durability, quota, retention";
    "get" db!("") => r::get_database, Read, "Show a database";
    "delete" db!("") => r::delete_database, Manage, "Delete a database with its logs and snapshots";
    "get" db!("/files/{file}/records") => r::scan_records, Read, "Scan records by unique key range (from, to, limit)";
    "post" db!("/files/{file}/records") => r::insert_record, Write, "Insert a record (409 if the key exists)";
    "get" db!("/files/{file}/records/{key}") => r::get_record, Read, "Read a record by unique key";
    "put" db!("/files/{file}/records/{key}") => r::put_record, Write, "Insert or replace a record";
    "delete" db!("/files/{file}/records/{key}") => r::delete_record, Write, "Delete a record";
    "get" db!("/files/{file}/alt/{alt}/{value}") => r::lookup_alt, Read, "Records whose alternate key equals a value";
    "post" db!("/transactions") => r::transaction, Write, "Apply a batch of operations atomically";
    "post" db!("/txns") => r::begin, Write, "Begin an interactive transaction";
    "get" db!("/txns/{txn}") => r::get_txn, Read, "Show an open transaction";
    "post" db!("/txns/{txn}/ops") => r::add_ops, Write, "Add operations to an open transaction (locks their records)";
    "post" db!("/txns/{txn}/commit") => r::commit, Write, "Commit an open transaction";
    "post" db!("/txns/{txn}/cancel") => r::cancel, Write, "Cancel an open transaction";
    "get" db!("/snapshots") => r::list_snapshots, Read, "List stored snapshots";
    "post" db!("/snapshots") => r::take_snapshot, Operate, "Take a compact snapshot";
    "get" db!("/log") => r::read_log, Read, "Inspect A/B/T log entries (from, limit)";
    "get" db!("/checksums") => r::checksums, Read, "Per-block checksums, file by file";
    "post" db!("/promote") => l::promote, Operate, "Promote a replica to a primary (body {force, quorum}): it opens a new epoch of its log, takes the quorum, stops following its link and takes writes, keeping its blocks";
    #[cfg(feature = "fault-injection")]
    "post" db!("/faults/corrupt-block") => l::corrupt_block, NodeAdmin, "Fault injection (test builds only): flip a byte of a block ({file, block})";
    "post" db!("/restore") => rs::start, Operate, "Point-in-time restore to a serial or timestamp_us, in place or into a new database; answers 202 with the restore operation, or with dry_run the preview (method, updates, records changed)";
    "post" db!("/replay") => rs::replay, Operate, "Replay with corrected logic: restore to from_serial, then replay the T log up to to_serial through a corrected transform (body {from_serial, to_serial?, transform?: {plugin, config}, dry_run?})";
    "get" db!("/restores") => rs::list, Read, "The database's restores since the node started, with their state and progress";
    "get" db!("/restores/{id}") => rs::show, Read, "One restore: state, phase, done/total, method, point, records changed, error";
    "get" db!("/conflicts") => l::conflicts, Read, "Conflicts mutual links met in this database: the count and the newest (limit, at most 1000) with both versions and the decision";
    "post" db!("/locks") => l::take_locks, Operate, "Parallel databases (called by the other sites): lock records for a transaction of another site (body {holder: [time, origin], keys: [\"file/key\"], timeout_ms}); 409 deadlock or lock-timeout";
    "delete" db!("/locks/{holder}") => l::release_locks, Operate, "Parallel databases: release the records a transaction of another site holds (holder time.origin)";
    "get" db!("/quorum") => l::get_quorum, Read, "The synchronous quorum: k of the database's synchronous links, and the wait";
    "put" db!("/quorum") => l::set_quorum, Operate, "Set the synchronous quorum (k, timeout_ms, sync_links)";
    "get" "/v1/tenants/{tenant}/links" => l::list, Read, "List the links whose source is on this node";
    "post" "/v1/tenants/{tenant}/links" => l::create, Operate, "Create a link: database, target {url, database}, mode sync|async, apply mirror|logical, stages, on_error";
    "get" "/v1/tenants/{tenant}/links/{link}" => l::show, Read, "Show a link with its state, lag, throughput and last error";
    "delete" "/v1/tenants/{tenant}/links/{link}" => l::delete, Operate, "Delete a link (the replica keeps its data)";
    "put" "/v1/tenants/{tenant}/links/{link}/stages" => l::set_stages, Operate, "Swap a logical link's stages (body: [{plugin: name@version, config}]) while it runs";
    "get" "/v1/tenants/{tenant}/links/{link}/dead-letters" => l::dead_letters, Read, "Records the link's stages rejected under the quarantine policy, oldest first";
    "delete" "/v1/tenants/{tenant}/links/{link}/dead-letters/{id}" => l::drop_dead_letter, Operate, "Drop a dead letter";
    "post" "/v1/tenants/{tenant}/links/{link}/dead-letters/{id}/redrive" => l::redrive, Operate, "Re-drive a dead letter (body: optional {record} as edited) through the link's stages to its replica";
    "post" "/v1/tenants/{tenant}/links/{link}/verify" => l::verify, Operate, "Verify a mirror link: compare the replica's blocks with the source's at one serial, and list the differing blocks";
    "post" "/v1/tenants/{tenant}/links/{link}/repair" => l::repair, Operate, "Repair the differing blocks of a mirror link's replica (body: {file?, blocks?}; {} repairs all)";
    "post" "/v1/tenants/{tenant}/links/{link}/pause" => l::pause, Operate, "Pause a link";
    "post" "/v1/tenants/{tenant}/links/{link}/resume" => l::resume, Operate, "Resume a paused or stopped link";
    "get" "/v1/cluster" => t::cluster, Authenticated, "The cluster: members, the primary of each replicated database (of the caller's tenants), failovers";
    "get" "/v1/tenants/{tenant}/topologies" => t::list, Read, "List the tenant's topologies";
    "post" "/v1/tenants/{tenant}/topologies" => t::apply, Operate, "Validate and apply a topology document (nodes, links, modes, stages, policies); ?dry_run=true answers the plan only";
    "get" "/v1/tenants/{tenant}/topologies/{name}" => t::show, Read, "Show a topology document with the live state of each of its links";
    "delete" "/v1/tenants/{tenant}/topologies/{name}" => t::delete, Operate, "Delete a topology and the links it created";
    "post" "/v1/tenants/{tenant}/topologies/{name}/failover" => t::failover, Operate, "Fail over: promote a replica (body {node, database, force}) and re-point the old primary's links; the old primary rejoins as a replica";
    "get" "/v1/tenants/{tenant}/replicas" => l::list_replicas, Read, "List the replicas on this node";
    "put" "/v1/tenants/{tenant}/replicas/{link}" => l::register_replica, Operate, "Register a replica (called by the source node when a link starts)";
    "post" "/v1/tenants/{tenant}/replicas/{link}/repair" => l::apply_repair, Operate, "Repair a mirror replica's block file from its source's blocks (called by the source node, with the link's credential)";
    "post" "/v1/tenants/{tenant}/replicas/{link}/redrive" => l::apply_redrive, Operate, "Apply re-driven records on a logical replica (called by the source node, with the link's credential)";
    "post" "/v1/tenants/{tenant}/replicas/{link}/suspend" => l::suspend_replica, Operate, "Suspend a replica: it stores what arrives and applies nothing (a frozen state for read-only jobs)";
    "post" "/v1/tenants/{tenant}/replicas/{link}/release" => l::release_replica, Operate, "Release a suspended replica: it applies what it stored and follows again";
    "delete" "/v1/tenants/{tenant}/replicas/{link}" => l::detach_replica, Operate, "Detach a replica: the database takes client writes again";
    "get" "/v1/tenants/{tenant}/plugins" => p::list, Read, "List a tenant's plugins";
    "get" "/v1/tenants/{tenant}/plugins/{name}/{version}" => p::show, Read, "Show a plugin version (role, SHA-256, size, config schema)";
    "put" "/v1/tenants/{tenant}/plugins/{name}/{version}" => p::upload, Operate, "Upload a plugin (?role=filter|transform|rule|resolver; body: the wasm component, application/wasm)";
    "delete" "/v1/tenants/{tenant}/plugins/{name}/{version}" => p::delete, Operate, "Delete a plugin version";
    "post" "/v1/tenants/{tenant}/plugins/{name}/{version}/dry-run" => p::dry_run, Operate, "Run records through a plugin: result, per-record errors and log lines (a resolver takes records, remote and optional base, and answers each record's decision: local, remote or merged)";
}

/// The OpenAPI document for [`ROUTES`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut responses = Map::new();
        let media = match route.path {
            "/" => "text/html",
            "/console/{file}" => "text/javascript",
            "/metrics" => "text/plain",
            p if p.ends_with("/events") => "text/event-stream",
            _ => "application/json",
        };
        responses.insert(
            "2XX".into(),
            json!({"description": "Success", "content": {media: {}}}),
        );
        responses.insert("default".into(), json!({"description": "A problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}));
        let mut op = json!({"summary": route.summary, "parameters": params, "responses": responses, "x-permission": route.permission.name()});
        if route.permission != Public {
            op["security"] = json!([{"bearer": []}]);
        }
        if route.method == "put" && route.path.contains("/plugins/") {
            op["requestBody"] = json!({"required": true, "content": {"application/wasm": {}}});
        } else if matches!(route.method, "post" | "put") {
            op["requestBody"] = json!({"required": false, "content": {"application/json": {}}});
        }
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Doppel", "version": env!("CARGO_PKG_VERSION"), "description": "Replication server for in-memory block-store databases. See docs/API.md."},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}, "schemas": {"Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "code": {"type": "string"}, "op_index": {"type": "integer"}
            }
        }}}
    })
}
