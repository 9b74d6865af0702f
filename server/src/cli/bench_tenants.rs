//! `doppel bench --scenario neighbours|footprint`: what sharing a node costs (issue 24,
//! "Measure"). This module owns both scenarios.
//!
//! - `neighbours`, against a running node: a quiet tenant puts one 100 B record every
//!   2 ms over one keep-alive connection, as a small application would, while a loud
//!   one does what loud tenants do. One line per phase with the quiet writer's n, p50,
//!   p99 and max: (a) alone; (b) next to a flood (the batched write loop of `--records`
//!   into database `flood`); (c) during a snapshot of `flood`, with a writer into
//!   `flood` itself next to it; (d) the quiet database at durability `group` next to
//!   a flood; and, given `--loud-token` (a writer token of the loud tenant: quotas never
//!   limit the administrator's), (e) next to the same flood held to `--loud-quota`
//!   operations a second, its writers retrying a 429 after a short pause.
//! - `footprint`: starts a node of its own on a scratch directory, loads `--records`,
//!   and prints RSS and data directory bytes (from `GET /v1/node`) against the raw
//!   key+data bytes: after the load, after a restart, and after each of `--minutes` of
//!   sustained updates of the same keys.
//!
//! With `--flood-url`, the loud tenant and its flood are on another node: the same
//! phases then give the floor of the machine (two processes sharing only its cores and
//! disk), against which the one-node figures show what sharing a node costs.
//!
//! Latencies are taken with `Instant` around each call on the client, so they include
//! the client's own CPU, which shares the machine with the node.

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::bench::{db_path, ms, percentile, recreate, upsert_pass, BenchArgs};
use super::client::{connect, Client, Target};

/// How long the quiet writer runs alone.
const ALONE: Duration = Duration::from_secs(5);

/// The quiet writer's pause between puts.
const PAUSE: Duration = Duration::from_millis(2);

/// Transactions of the footprint's sustained updates: small, as an application's are.
const SUSTAINED_BATCH: usize = 200;

/// How long the footprint's node may take to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// One put: when it started and how long it took.
type Put = (Instant, Duration);

/// A writer putting one 100 B record every 2 ms (keys `q0`..`q999`) over one
/// keep-alive connection until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Vec<Put>, String>>,
}

impl Writer {
    /// Start putting into `records` (a file's `…/records` path); a client of its own
    /// keeps its connection to itself.
    fn start(client: Client, records: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let body = json!({"data": "x".repeat(100)}).to_string();
            let mut puts = Vec::new();
            let mut i = 0;
            while !stopped.load(Ordering::Relaxed) {
                let t = Instant::now();
                client.call_raw("PUT", &format!("{records}/q{}", i % 1000), Some(&body))?;
                puts.push((t, t.elapsed()));
                i += 1;
                std::thread::sleep(PAUSE);
            }
            Ok(puts)
        });
        Writer { stop, handle }
    }

    /// Stop after the put under way; every put's latency.
    fn stop(self) -> Result<Vec<Put>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| "a writer thread panicked".to_string())?
    }
}

/// The latencies of the puts that overlapped `from..to`.
fn overlapping(puts: &[Put], from: Instant, to: Instant) -> Vec<Duration> {
    puts.iter()
        .filter(|(start, took)| *start + *took >= from && *start <= to)
        .map(|(_, took)| *took)
        .collect()
}

/// `n`, p50, p99 and max of `latencies`.
fn stats(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    format!(
        "n={:<6} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.1} ms",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(max)
    )
}

/// The bench's two tenants and their databases: on one node, or with `--flood-url`
/// the loud one on another.
struct Neighbours<'a> {
    args: &'a BenchArgs,
    /// The quiet writer's node (`--url`), with the token given.
    client: Client,
    /// The loud tenant's node (`--flood-url`, else `--url`), and a client of it.
    flood: Target,
    flood_client: Client,
    /// The flood's tenant: `--tenant`.
    loud: String,
    /// The quiet writer's tenant: `quiet`, or `loud` when the token cannot make one.
    quiet: String,
}

impl Neighbours<'_> {
    /// The `…/records` path of file `bench` of `db` of `tenant`.
    fn records(&self, tenant: &str, db: &str) -> String {
        format!("{}/files/bench/records", db_path(tenant, db))
    }

    fn quiet_writer(&self) -> Writer {
        Writer::start(
            connect(&self.args.target),
            self.records(&self.quiet, "quiet"),
        )
    }

    /// (a): the quiet writer with nobody else writing.
    /// (a) and (d0): the quiet writer with nothing else running.
    fn alone(&self, label: &str) -> Result<(), String> {
        let writer = self.quiet_writer();
        std::thread::sleep(ALONE);
        let puts = writer.stop()?;
        let all = puts.iter().map(|(_, took)| *took).collect();
        println!("  {label:<28} {}", stats(all));
        Ok(())
    }

    /// (b) and (d): the quiet writer while a flood upserts `--records` into `flood`.
    fn next_to_flood(&self, label: &str, pass: usize) -> Result<(), String> {
        let writer = self.quiet_writer();
        let fill = (b'a' + (pass % 26) as u8) as char;
        let from = Instant::now();
        let flood = db_path(&self.loud, "flood");
        let (took, _) = upsert_pass(&self.flood, &flood, self.args, self.args.batch, fill)?;
        let to = Instant::now();
        let puts = writer.stop()?;
        println!(
            "  {label:<28} {}  (flood: {:.0} records/s, {} connections, {:.1} s)",
            stats(overlapping(&puts, from, to)),
            self.args.records as f64 / took.as_secs_f64(),
            self.args.connections,
            took.as_secs_f64()
        );
        Ok(())
    }

    /// (e): the quiet writer while the loud tenant, at an operation quota, floods with a
    /// token of its own; its writers retry a refused batch after 20 ms.
    fn next_to_quota_flood(&self, token: &str) -> Result<(), String> {
        let quotas = format!("/v1/tenants/{}/quotas", self.loud);
        let limit = self.args.loud_quota;
        self.flood_client
            .call("PUT", &quotas, Some(&json!({"operations_per_sec": limit})))
            .map_err(|e| e.to_string())?;
        let loud = Target {
            token: Some(token.to_string()),
            ..self.flood.clone()
        };
        let (records, batch) = (self.args.records, self.args.batch);
        let path = format!("{}/transactions", db_path(&self.loud, "flood"));
        let payload = "e".repeat(self.args.record_bytes.saturating_sub(2));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = refused.clone();
        let writer = self.quiet_writer();
        let from = Instant::now();
        let result = super::bench::run_parallel(
            self.args.connections,
            records.div_ceil(batch),
            move |client, job| {
                let ops: Vec<String> = (job * batch..((job + 1) * batch).min(records))
                    .map(|i| {
                        format!(r#"{{"op":"upsert","file":"bench","key":"k{i:012}","data":"{payload}"}}"#)
                    })
                    .collect();
                let body = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
                loop {
                    match client.call_raw("POST", &path, Some(&body)) {
                        Err(e) if e.status() == Some(429) => {
                            counted.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        other => return other.map(|_| ()),
                    }
                }
            },
            &loud,
        );
        let to = Instant::now();
        let puts = writer.stop()?;
        self.flood_client
            .call("PUT", &quotas, Some(&json!({})))
            .map_err(|e| e.to_string())?;
        let (took, _) = result?;
        println!(
            "  {:<28} {}  (flood at {limit} operations/s: {:.0} records/s, {} batches refused and retried)",
            "(e) next to a flood at quota:",
            stats(overlapping(&puts, from, to)),
            records as f64 / took.as_secs_f64(),
            refused.load(Ordering::Relaxed)
        );
        Ok(())
    }

    /// (c): the quiet writer, and one into `flood` itself, while `flood` (holding what
    /// the flood wrote) takes a snapshot; only the puts that overlap it count.
    fn during_snapshot(&self) -> Result<(), String> {
        let own = Writer::start(connect(&self.flood), self.records(&self.loud, "flood"));
        let quiet = self.quiet_writer();
        std::thread::sleep(Duration::from_secs(1));
        let snapshots = format!("{}/snapshots", db_path(&self.loud, "flood"));
        let long = connect(&self.flood).with_timeout(Duration::from_secs(3600));
        let from = Instant::now();
        let meta = long.call("POST", &snapshots, None)?;
        let to = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let (quiet, own) = (quiet.stop()?, own.stop()?);
        println!(
            "  (c) during a snapshot of flood ({:.1} MB, {:.0} ms):",
            meta["size_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
            ms(to - from)
        );
        for (who, puts) in [("quiet:", quiet), ("flood's own writer:", own)] {
            println!("    {who:<26} {}", stats(overlapping(&puts, from, to)));
        }
        Ok(())
    }
}

/// The quiet writer's tenant: `quiet`, created if the token may (the node
/// administrator's); else the loud tenant itself, and the line says so.
fn quiet_tenant(client: &Client, loud: &str) -> (String, String) {
    match client.call("POST", "/v1/tenants", Some(&json!({"name": "quiet"}))) {
        Ok(_) => ("quiet".into(), String::new()),
        Err(e) if e.status() == Some(409) => ("quiet".into(), String::new()),
        Err(e) => (
            loud.to_string(),
            format!(" (one tenant for both: creating tenant 'quiet' needs the node administrator's token: {e})"),
        ),
    }
}

/// `--scenario neighbours`: the quiet writer's latencies in each phase.
pub fn neighbours(args: &BenchArgs) -> Result<(), String> {
    let client = connect(&args.target);
    let loud = args.target.tenant.clone();
    let flood = Target {
        url: args.flood_url.clone().unwrap_or(args.target.url.clone()),
        ..args.target.clone()
    };
    let (quiet, mut note) = quiet_tenant(&client, &loud);
    if let Some(url) = &args.flood_url {
        // The loud tenant on its own node, made there if it is not (a 409 says it is).
        match connect(&flood).call("POST", "/v1/tenants", Some(&json!({ "name": loud }))) {
            Err(e) if e.status() != Some(409) => {
                return Err(format!("the loud tenant on {url}: {e}"))
            }
            _ => {}
        }
        note += &format!(" (the flood on another node: {url})");
    }
    let n = Neighbours {
        args,
        client,
        flood_client: connect(&flood),
        flood,
        loud,
        quiet,
    };
    recreate(&n.client, &n.quiet, "quiet", "none")?;
    recreate(&n.flood_client, &n.loud, "flood", &args.durability)?;
    println!(
        "neighbours: quiet writer: {}/quiet (durability none), one connection, a 100 B put every 2 ms; flood: {}/flood ({} durability), {} records in transactions of {}{note}",
        n.quiet, n.loud, args.durability, args.records, args.batch
    );
    n.alone("(a) alone:")?;
    n.next_to_flood("(b) next to a flood:", 0)?;
    n.during_snapshot()?;
    recreate(&n.client, &n.quiet, "quiet", "group")?;
    // Its own baseline: a group commit waits for an fdatasync even alone.
    n.alone("(d0) quiet at group, alone:")?;
    n.next_to_flood("(d) quiet at group, flood:", 1)?;
    recreate(&n.client, &n.quiet, "quiet", "none")?;
    match &args.loud_token {
        Some(token) => n.next_to_quota_flood(token),
        None => {
            println!(
                "  (e) quota phase: not run (give --loud-token, a writer token of the loud tenant)"
            );
            Ok(())
        }
    }
}

/// The footprint scenario's own node: a child process on a scratch data directory.
/// Dropping it stops the node and removes the directory, whatever went wrong.
struct OwnNode {
    dir: PathBuf,
    child: Option<Child>,
    target: Target,
}

impl OwnNode {
    /// A new node on a new directory; its first start prints the admin token.
    fn start() -> Result<OwnNode, String> {
        let dir = std::env::temp_dir().join(format!("doppel-footprint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut node = OwnNode {
            dir,
            child: None,
            target: Target {
                url: String::new(),
                tenant: "default".into(),
                token: None,
            },
        };
        let mut output = node.spawn()?;
        let line = output.next().and_then(|l| l.ok()).unwrap_or_default();
        let token = line
            .strip_prefix("doppel admin token: ")
            .ok_or("the new node printed no admin token")?;
        node.target.token = Some(token.trim().to_string());
        std::thread::spawn(move || for _ in output {});
        Ok(node)
    }

    /// Start the process on the directory; the rest of its output.
    fn spawn(&mut self) -> Result<super::demo::NodeOutput, String> {
        let (child, url, output) = super::demo::start_node(&self.dir, &[])
            .map_err(|e| format!("the footprint's node: {e}"))?;
        self.child = Some(child);
        self.target.url = url;
        Ok(output)
    }

    /// Stop gracefully (its standard input closes) and start again on the same
    /// directory: how long until it listened again (recovery included).
    fn restart(&mut self) -> Result<Duration, String> {
        self.stop()?;
        let started = Instant::now();
        let output = self.spawn()?;
        std::thread::spawn(move || for _ in output {});
        Ok(started.elapsed())
    }

    /// Stop gracefully: the node flushes its log before it exits. One that has not
    /// exited after [`STOP_GRACE`] (a node hung in sled, say) is killed, and that is
    /// the error.
    fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        drop(child.stdin.take());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "the footprint's node did not stop within {STOP_GRACE:?}: killed"
        ))
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One line of the node's footprint (`GET /v1/node`) against `raw` key+data bytes.
fn report(label: &str, client: &Client, raw: u64) -> Result<(), String> {
    let node = client.call("GET", "/v1/node", None)?;
    let field = |name: &str| node[name].as_u64();
    let show = |name: &str, what: &str| match field(name) {
        Some(v) => format!(
            "{what} {:.1} MB ({:.2}x)",
            v as f64 / 1e6,
            v as f64 / raw as f64
        ),
        None => format!("{what} unknown"),
    };
    let heap = match (field("heap_in_use_bytes"), field("heap_free_bytes")) {
        (Some(used), Some(free)) => format!(
            " (heap: {:.1} MB in use, {:.1} MB free inside)",
            used as f64 / 1e6,
            free as f64 / 1e6
        ),
        _ => String::new(),
    };
    println!(
        "  {label:<36} {}, {}, {}{heap}",
        show("rss_bytes", "RSS"),
        show("data_dir_bytes", "data dir"),
        show("blocks_bytes", "blocks")
    );
    Ok(())
}

/// Wait until the node is at rest after a load: its data directory and RSS unchanged
/// (within 1%) over [`SETTLE_READINGS`] readings a second apart, so an automatic
/// snapshot the load started, sled's flushes and the allocator's purge are over before
/// the footprint is read. At most [`SETTLE_LIMIT`]; how long it took.
fn settle(client: &Client) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last: Option<(u64, u64)> = None;
    let mut steady = 0;
    while steady < SETTLE_READINGS && started.elapsed() < SETTLE_LIMIT {
        std::thread::sleep(Duration::from_secs(1));
        let node = client.call("GET", "/v1/node", None)?;
        let now = (
            node["data_dir_bytes"].as_u64().unwrap_or(0),
            node["rss_bytes"].as_u64().unwrap_or(0),
        );
        let close = |a: u64, b: u64| a.abs_diff(b) * 100 <= a.max(1);
        steady = match last {
            Some((dir, rss)) if close(dir, now.0) && close(rss, now.1) => steady + 1,
            _ => 0,
        };
        last = Some(now);
    }
    Ok(started.elapsed())
}

/// Steady readings [`settle`] waits for.
const SETTLE_READINGS: u32 = 5;
/// The longest [`settle`] waits.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// `--minutes` of upserts over the loaded keys in transactions of 200 (whole passes
/// over the keys, so a minute may run over by part of one), held to `--rate` updates a
/// second when it is set (a pass runs at full speed, then waits for its share of
/// time); the footprint after each minute, and the node's RSS over the minute read
/// once a second ([`RssSampler`]): a single reading may fall on a snapshot's
/// copy-on-write peak or just after the allocator gave memory back, so whether the
/// RSS grows is read from the minutes' medians and highs.
fn sustained(args: &BenchArgs, node: &OwnNode, raw: u64) -> Result<(), String> {
    let client = connect(&node.target);
    let path = db_path("default", &args.db);
    let sampler = RssSampler::start(node.child.as_ref().map(Child::id));
    let mut pass = 1;
    for minute in 1..=args.minutes {
        let started = Instant::now();
        let mut updates = 0;
        while started.elapsed() < Duration::from_secs(60) {
            let fill = (b'a' + (pass % 26) as u8) as char;
            upsert_pass(&node.target, &path, args, SUSTAINED_BATCH, fill)?;
            updates += args.records;
            pass += 1;
            if args.rate > 0 {
                let due = Duration::from_secs_f64(updates as f64 / args.rate as f64);
                std::thread::sleep(due.saturating_sub(started.elapsed()));
            }
        }
        let rate = updates as f64 / started.elapsed().as_secs_f64();
        report(
            &format!("minute {minute} ({rate:.0} updates/s):"),
            &client,
            raw,
        )?;
        if let Some((low, median, high)) = sampler.take_minute() {
            println!(
                "  {:<36} RSS read each second: low {:.1}, median {:.1}, high {:.1} MB",
                "",
                low as f64 / 1e6,
                median as f64 / 1e6,
                high as f64 / 1e6
            );
        }
    }
    Ok(())
}

/// Reads a process's RSS once a second on a thread of its own, until dropped.
struct RssSampler {
    readings: Arc<parking_lot::Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Sample `pid` (none: nothing is sampled).
    fn start(pid: Option<u32>) -> RssSampler {
        let readings = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = pid.map(|pid| {
            let (readings, stop) = (readings.clone(), stop.clone());
            std::thread::spawn(move || {
                let pid = pid.to_string();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = crate::node::footprint::process_rss_bytes(&pid) {
                        readings.lock().push(rss);
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        });
        RssSampler {
            readings,
            stop,
            thread,
        }
    }

    /// The lowest, median and highest reading since the last call; `None` if there
    /// were none.
    fn take_minute(&self) -> Option<(u64, u64, u64)> {
        let mut readings = std::mem::take(&mut *self.readings.lock());
        readings.sort_unstable();
        Some((
            *readings.first()?,
            readings[readings.len() / 2],
            *readings.last()?,
        ))
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `--scenario footprint`: RSS and disk per raw byte of a node this starts itself.
pub fn footprint(args: &BenchArgs) -> Result<(), String> {
    let mut node = OwnNode::start()?;
    let client = connect(&node.target);
    recreate(&client, "default", &args.db, &args.durability)?;
    let raw = args.records as u64 * (13 + args.record_bytes as u64);
    let path = db_path("default", &args.db);
    let (took, _) = upsert_pass(&node.target, &path, args, args.batch, 'x')?;
    println!(
        "footprint: a node of its own ({}), {} records of {} B = {:.1} MB raw key+data ({} durability), loaded at {:.0} records/s",
        node.dir.display(),
        args.records,
        args.record_bytes,
        raw as f64 / 1e6,
        args.durability,
        args.records as f64 / took.as_secs_f64()
    );
    let settled = settle(&client)?;
    report(
        &format!("after load (settled in {:.0} s):", settled.as_secs_f64()),
        &client,
        raw,
    )?;
    let recovery = node.restart()?;
    let client = connect(&node.target);
    report(
        &format!("after restart ({:.1} s to listen):", recovery.as_secs_f64()),
        &client,
        raw,
    )?;
    sustained(args, &node, raw)?;
    node.stop()
}
