//! `doppel bench`: load a running node through its REST API and print throughput,
//! latency percentiles and memory. The client runs on the same machine as the node, so
//! the figures include the client's own CPU use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::client::{connect, encode_segment, Client, Target};
use crate::remote::RemoteError;

/// Options of `doppel bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Records to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) records: usize,
    /// Operations per transaction.
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch: usize,
    /// How the replication scenarios send their batches: json (`{"ops": [...]}`) or
    /// binary (`application/vnd.doppel.batch`).
    #[arg(long, default_value = "json", value_parser = ["json", "binary"])]
    pub(crate) format: String,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// Bytes of data per record.
    #[arg(long, default_value_t = 100)]
    pub(crate) record_bytes: usize,
    /// Durability of the bench database: none, group or sync.
    #[arg(long, default_value = "group")]
    pub(crate) durability: String,
    /// Point reads to run after the writes.
    #[arg(long, default_value_t = 20_000)]
    reads: usize,
    /// Name of the database to (re)create.
    #[arg(long, default_value = "bench")]
    pub(crate) db: String,
    /// Bench replication instead: the API of a second node that becomes the replica.
    #[arg(long)]
    replica: Option<String>,
    /// Token for the replica's API (default: the source's token).
    #[arg(long, env = "DOPPEL_REPLICA_TOKEN", hide_env_values = true)]
    replica_token: Option<String>,
    /// Scenario. Without --replica: all (batched writes and point reads), neighbours (a
    /// quiet tenant's puts next to a loud one), footprint (RSS and disk of a node this
    /// starts) or postgres (a link into PostgreSQL through json-columns, against
    /// `--postgres`). With --replica: async, sync, bootstrap, catchup, logical (through
    /// a filter → transform chain: a catch-up, then live), logical-live (live alone),
    /// verify, promote, mutual or all.
    #[arg(long, default_value = "all")]
    pub(crate) scenario: String,
    /// Single-record commits of the sync scenario.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) sync_commits: usize,
    /// Minutes of sustained updates of the footprint scenario.
    #[arg(long, default_value_t = 1)]
    pub(crate) minutes: u64,
    /// Updates per second the footprint scenario's sustained load is held to, a pass
    /// over the keys at a time (0: as fast as the node takes them).
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// A writer token of the loud tenant (`--tenant`) for the neighbours scenario's
    /// quota phase: quotas never limit the node administrator's token.
    #[arg(long, env = "DOPPEL_LOUD_TOKEN", hide_env_values = true)]
    pub(crate) loud_token: Option<String>,
    /// The postgres scenario's PostgreSQL database, as a connection string the node
    /// can use (and `psql`, for the COPY floor).
    #[arg(long, env = "DOPPEL_BENCH_POSTGRES", hide_env_values = true)]
    pub(crate) postgres: Option<String>,
    /// The neighbours scenario's flood (the loud tenant's databases) on another node
    /// at this URL (the same `--token` and `--loud-token` must hold there), the quiet
    /// writer staying on `--url`: the two then share only the machine, and the quiet
    /// writer's figures are the floor the machine gives two unrelated processes.
    #[arg(long)]
    pub(crate) flood_url: Option<String>,
    /// The loud tenant's `operations_per_sec` in the quota phase.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) loud_quota: u64,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn run_parallel(
    connections: usize,
    jobs: usize,
    work: impl Fn(&Client, usize) -> Result<(), RemoteError> + Sync + Send + 'static,
    target: &Target,
) -> Result<(Duration, Vec<Duration>), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let started = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|_| {
            let (next, work, client) = (next.clone(), work.clone(), connect(target));
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut latencies = Vec::new();
                loop {
                    let job = next.fetch_add(1, Ordering::Relaxed);
                    if job >= jobs {
                        return Ok(latencies);
                    }
                    let t = Instant::now();
                    work(&client, job)?;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(
            handle
                .join()
                .map_err(|_| "a bench thread panicked".to_string())??,
        );
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok((elapsed, latencies))
}

/// Which bench: with `--replica` the replication scenarios ([`super::bench_link`]);
/// without, the batched write/read bench or one of the shared-node scenarios
/// ([`super::bench_tenants`]).
pub fn run(args: BenchArgs) -> Result<(), String> {
    if let Some(replica) = &args.replica {
        return super::bench_link::run(&args, replica, args.replica_token.clone());
    }
    match args.scenario.as_str() {
        "all" => writes_and_reads(&args),
        "neighbours" => super::bench_tenants::neighbours(&args),
        "footprint" => super::bench_tenants::footprint(&args),
        "postgres" => super::bench_postgres::run(&args),
        other => Err(format!(
            "unknown scenario '{other}' (without --replica: all, neighbours, footprint or postgres)"
        )),
    }
}

/// The path of database `db` of `tenant`.
pub(crate) fn db_path(tenant: &str, db: &str) -> String {
    format!(
        "/v1/tenants/{}/databases/{}",
        encode_segment(tenant),
        encode_segment(db)
    )
}

/// Delete database `db` of `tenant` if it exists and create it empty with one file,
/// `bench`, at `durability`.
pub(crate) fn recreate(
    client: &Client,
    tenant: &str,
    db: &str,
    durability: &str,
) -> Result<(), String> {
    let _ = client.call("DELETE", &db_path(tenant, db), None);
    client.call(
        "POST",
        &format!("/v1/tenants/{}/databases", encode_segment(tenant)),
        Some(&json!({"name": db, "files": [{"name": "bench"}], "durability": durability, "memory_quota_bytes": 16u64 << 30})),
    )?;
    Ok(())
}

/// One pass of batched upserts of keys `k000000000000`.. (`records` of them, `batch` per
/// transaction, data `record_bytes` long made of `fill`) into file `bench` of `db_path`
/// over `connections` connections: the time it took and each transaction's latency.
pub(crate) fn upsert_pass(
    target: &Target,
    db_path: &str,
    args: &BenchArgs,
    batch: usize,
    fill: char,
) -> Result<(Duration, Vec<Duration>), String> {
    let payload: String = fill.to_string().repeat(args.record_bytes.saturating_sub(2));
    let records = args.records;
    let body_for = move |job: usize| -> String {
        let start = job * batch;
        let end = (start + batch).min(records);
        let ops: Vec<String> = (start..end)
            .map(|i| {
                format!(r#"{{"op":"upsert","file":"bench","key":"k{i:012}","data":"{payload}"}}"#)
            })
            .collect();
        format!(r#"{{"ops":[{}]}}"#, ops.join(","))
    };
    let path = format!("{db_path}/transactions");
    run_parallel(
        args.connections,
        records.div_ceil(batch),
        move |client, job| {
            client
                .call_raw("POST", &path, Some(&body_for(job)))
                .map(|_| ())
        },
        target,
    )
}

/// The default bench: batched writes, then point reads, then the blocks' memory.
fn writes_and_reads(args: &BenchArgs) -> Result<(), String> {
    let client = connect(&args.target);
    let db_path = db_path(&args.target.tenant, &args.db);
    recreate(&client, &args.target.tenant, &args.db, &args.durability)?;
    let (records, batch) = (args.records, args.batch);
    let batches = records.div_ceil(batch);
    let (elapsed, latencies) = upsert_pass(&args.target, &db_path, args, batch, 'x')?;
    println!(
        "writes: {records} records in {batches} transactions of {batch} ({} durability, {} connections)",
        args.durability, args.connections
    );
    println!(
        "  {:.0} records/s; per transaction p50 {:.2} ms, p99 {:.2} ms",
        records as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99))
    );
    let reads = args.reads;
    let read_base = format!("{db_path}/files/bench/records");
    let (elapsed, latencies) = run_parallel(
        args.connections,
        reads,
        move |client, job| {
            let key = (job.wrapping_mul(2_654_435_761)) % records;
            client
                .call("GET", &format!("{read_base}/k{key:012}"), None)
                .map(|_| ())
        },
        &args.target,
    )?;
    println!(
        "reads: {reads} point gets, {:.0} gets/s; p50 {:.3} ms, p99 {:.3} ms",
        reads as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99))
    );
    let info = client.call("GET", &db_path, None)?;
    let memory = info["memory_bytes"].as_u64().unwrap_or(0);
    let raw = records as u64 * (13 + args.record_bytes as u64);
    println!(
        "memory: {memory} bytes of blocks for {raw} raw key+data bytes ({:.2}x)",
        memory as f64 / raw as f64
    );
    Ok(())
}
