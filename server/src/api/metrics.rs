//! `GET /metrics`: Prometheus text exposition of the databases and links the caller's
//! token covers (the node administrator sees every tenant, and the node's own memory
//! and disk).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::AppState;
use crate::node::footprint::Footprint;
use crate::tenancy::auth::Claims;
use crate::tenancy::roles::{check, Permission};

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out }
}

pub async fn metrics(
    State(app): State<Arc<AppState>>,
    Extension(claims): Extension<Claims>,
) -> Response {
    let tenants: Vec<String> = app
        .node
        .tenants()
        .into_iter()
        .filter(|t| claims.covers(t))
        .collect();
    let mut out = String::new();
    let dbs: Vec<_> = tenants
        .iter()
        .flat_map(|t| app.node.databases(t).unwrap_or_default())
        .collect();
    let db_metrics: [(&str, &str, &str); 6] = [
        (
            "doppel_database_last_serial",
            "gauge",
            "Serial of the last update applied.",
        ),
        (
            "doppel_database_memory_bytes",
            "gauge",
            "Bytes of blocks in RAM.",
        ),
        (
            "doppel_database_disk_bytes",
            "gauge",
            "Bytes of the database's log and snapshot files, sled's overhead included.",
        ),
        (
            "doppel_database_log_backlog_bytes",
            "gauge",
            "Bytes logged and not yet flushed to disk.",
        ),
        (
            "doppel_database_operations_total",
            "counter",
            "Client operations written.",
        ),
        (
            "doppel_database_cpu_seconds_total",
            "counter",
            "CPU time of the database's writes and replica applies.",
        ),
    ];
    for (i, (name, kind, help)) in db_metrics.iter().enumerate() {
        let mut f = family(&mut out, name, kind, help);
        for db in &dbs {
            let value = match i {
                0 => db.serials().0 as f64,
                1 => db.memory_bytes() as f64,
                2 => db.disk_bytes() as f64,
                3 => db.log_backlog() as f64,
                4 => db.usage.operations.total() as f64,
                _ => db.usage.cpu_ns.total() as f64 / 1e9,
            };
            f.sample(
                name,
                &[("tenant", &db.def.tenant), ("database", db.name())],
                value,
            );
        }
    }
    let links: Vec<serde_json::Value> = tenants
        .iter()
        .flat_map(|t| app.replication.list_links(t))
        .collect();
    let link_metrics: [(&str, &str, &str, &str); 8] = [
        (
            "doppel_link_quarantined",
            "gauge",
            "quarantined",
            "Records the link's stages rejected, held as dead letters.",
        ),
        (
            "doppel_link_plugin_seconds_total",
            "counter",
            "plugin_seconds",
            "Seconds spent in the link's plugin stages.",
        ),
        (
            "doppel_link_lag_entries",
            "gauge",
            "lag_entries",
            "Entries of the source the replica has not confirmed.",
        ),
        (
            "doppel_link_lag_ms",
            "gauge",
            "lag_ms",
            "Age of the oldest entry the replica has not confirmed (now minus its commit time), in milliseconds.",
        ),
        (
            "doppel_link_throughput",
            "gauge",
            "throughput",
            "Entries confirmed per second.",
        ),
        (
            "doppel_link_acked_serial",
            "gauge",
            "acked_serial",
            "Highest serial the replica confirmed.",
        ),
        (
            "doppel_link_connections_total",
            "counter",
            "connections",
            "Connections the link opened.",
        ),
        (
            "doppel_link_bootstraps_total",
            "counter",
            "bootstraps",
            "Snapshots streamed to the replica.",
        ),
    ];
    for (name, kind, field, help) in link_metrics {
        let mut f = family(&mut out, name, kind, help);
        for link in &links {
            let s = &link["status"];
            f.sample(
                name,
                &[
                    ("tenant", link["tenant"].as_str().unwrap_or_default()),
                    ("link", link["id"].as_str().unwrap_or_default()),
                    ("database", link["database"].as_str().unwrap_or_default()),
                    ("mode", link["mode"].as_str().unwrap_or_default()),
                    ("state", s["state"].as_str().unwrap_or_default()),
                ],
                s[field].as_f64().unwrap_or(0.0),
            );
        }
    }
    if check(&claims, Permission::NodeAdmin, None).is_ok() {
        let node = app.node.clone();
        if let Ok(f) = tokio::task::spawn_blocking(move || node.footprint()).await {
            node_metrics(&mut out, f);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The node's footprint, for the node administrator only: memory and disk are every
/// tenant's together. No RSS sample where the platform has none.
fn node_metrics(out: &mut String, f: Footprint) {
    let gauges = [
        (
            "doppel_node_rss_bytes",
            "Resident memory of the node process.",
            f.rss_bytes,
        ),
        (
            "doppel_node_data_dir_bytes",
            "Bytes of the files under the node's data directory.",
            Some(f.data_dir_bytes),
        ),
        (
            "doppel_node_blocks_bytes",
            "Bytes of blocks in RAM over every database.",
            Some(f.blocks_bytes),
        ),
        (
            "doppel_node_index_bytes",
            "Bytes of the databases' location tables and directories in RAM (estimated).",
            Some(f.index_bytes),
        ),
        (
            "doppel_node_sled_cache_limit_bytes",
            "The most sled's page caches may hold (one per database's log, one for the node).",
            Some(f.sled_cache_limit_bytes),
        ),
        (
            "doppel_node_log_backlog_bytes",
            "Bytes logged and not yet flushed to disk, over every database.",
            Some(f.log_backlog_bytes),
        ),
        (
            "doppel_node_heap_in_use_bytes",
            "Bytes the node has allocated and not freed, as its allocator counts them.",
            f.heap_in_use_bytes,
        ),
        (
            "doppel_node_heap_free_bytes",
            "Free bytes its allocator keeps inside its heaps (resident, holding no data).",
            f.heap_free_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        let mut family = family(out, name, "gauge", help);
        if let Some(v) = value {
            family.sample(name, &[], v as f64);
        }
    }
}
