//! `doppel bench --replica URL`: a two-node replication bench against running nodes.
//!
//! Scenarios (`--scenario`, default all):
//! - `async`: batched writes on the source with an async mirror link; records/s the
//!   replica applies (from the first write until the replica holds the last one). The
//!   batches are JSON, or binary (`application/vnd.doppel.batch`) with `--format binary`
//!   (every scenario that writes batches follows `--format`);
//! - `sync`: single-record transactions on a sync link from one connection; commit
//!   latency p50, p99 and p99.9;
//! - `bootstrap`: a loaded source whose log was pruned by snapshots, then a new link;
//!   MB/s of live block data from link creation until the replica is identical;
//! - `catchup`: a paused link left 1,000,000 entries behind (`--records`), resumed;
//!   the time until the replica caught up;
//! - `logical`: the same catch-up through a logical link whose stages are the built-in
//!   prefix filter and namespace transform;
//! - `verify`: verify of a mirror (`POST …/links/{id}/verify`) at `--records` and at
//!   twice that: the time taken and MB of blocks compared;
//! - `promote`: promote a caught-up replica; the time until it accepts a write.
//! - `mutual`: both nodes take batched writes to the same keys at once (50/50, half of
//!   `--records` each, one site from the first key up, the other from the last key
//!   down) through a pair of mutual links (last writer wins); records/s from the first
//!   write until both sites are identical and idle, and the conflict rate (conflicts
//!   met per record written: the keys both sites wrote before seeing each other's).
//!
//! Polling the replica's serial every 2 ms bounds the measurement error at that.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::bench::{percentile, run_parallel, BenchArgs};
use super::client::{connect, encode_segment, Client, Target};
use crate::api::batch;
use crate::node::records::OpName;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Pair {
    source: Client,
    replica: Client,
    source_target: Target,
    replica_url: String,
    replica_token: Option<String>,
    replica_target: Target,
    tenant: String,
    db: String,
}

impl Pair {
    fn db_path(&self) -> String {
        format!(
            "/v1/tenants/{}/databases/{}",
            self.tenant,
            encode_segment(&self.db)
        )
    }

    fn links_path(&self) -> String {
        format!("/v1/tenants/{}/links", self.tenant)
    }

    /// Remove the bench database and any link from it, on both nodes.
    fn reset(&self) -> Result<(), String> {
        for (node, other) in [(&self.source, &self.replica), (&self.replica, &self.source)] {
            let links = node.call("GET", &self.links_path(), None)?;
            for link in links.as_array().into_iter().flatten() {
                if link["database"] == self.db.as_str() {
                    let id = link["id"].as_str().unwrap_or_default();
                    node.call("DELETE", &format!("{}/{id}", self.links_path()), None)?;
                    let _ = other.call(
                        "DELETE",
                        &format!("/v1/tenants/{}/replicas/{id}", self.tenant),
                        None,
                    );
                }
            }
        }
        let _ = self.source.call("DELETE", &self.db_path(), None);
        let _ = self.replica.call("DELETE", &self.db_path(), None);
        Ok(())
    }

    fn create_db(&self, durability: &str) -> Result<(), String> {
        self.source.call(
            "POST",
            &format!("/v1/tenants/{}/databases", self.tenant),
            Some(&json!({"name": self.db, "files": [{"name": "bench"}], "durability": durability, "memory_quota_bytes": 16u64 << 30})),
        )?;
        Ok(())
    }

    fn link(&self, mode: &str) -> Result<String, String> {
        self.link_with(json!({"mode": mode}))
    }

    /// A link with `extra` merged into its definition; waits until it streams.
    fn link_with(&self, extra: Value) -> Result<String, String> {
        let mut target = json!({"url": self.replica_url, "database": self.db});
        if let Some(token) = &self.replica_token {
            target["token"] = json!(token);
        }
        let mut body = json!({"database": self.db, "target": target});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let link = self.source.call("POST", &self.links_path(), Some(&body))?;
        let id = link["id"].as_str().ok_or("no link id")?.to_string();
        self.wait(Duration::from_secs(60), || {
            let l = self
                .source
                .call("GET", &format!("{}/{id}", self.links_path()), None)?;
            Ok(l["status"]["state"] == "streaming")
        })?;
        Ok(id)
    }

    fn serial(&self, client: &Client) -> Result<u64, String> {
        Ok(client.call("GET", &self.db_path(), None)?["last_serial"]
            .as_u64()
            .unwrap_or(0))
    }

    fn wait(
        &self,
        timeout: Duration,
        mut done: impl FnMut() -> Result<bool, String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done().unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(format!("not done within {timeout:?}"))
    }

    /// Upload a plugin to the source (an existing identical version is fine).
    fn upload(&self, name: &str, role: &str, wasm: &[u8]) -> Result<(), String> {
        let path = format!(
            "/v1/tenants/{}/plugins/{name}/1?role={role}",
            encode_segment(&self.tenant)
        );
        self.source
            .call_bytes("PUT", &path, "application/wasm", wasm)
            .map(drop)
            .map_err(|e| format!("uploading {name}: {e}"))
    }

    /// Wait until the link confirmed the source's last serial; returns when it did.
    fn confirmed(&self, link: &str) -> Result<Instant, String> {
        let target = self.serial(&self.source)?;
        self.wait(Duration::from_secs(600), || {
            let l = self.source.call("GET", link, None)?;
            Ok(l["status"]["acked_serial"].as_u64().unwrap_or(0) >= target)
        })?;
        Ok(Instant::now())
    }

    /// Wait until the replica's serial reaches the source's; returns when it did.
    fn caught_up(&self) -> Result<Instant, String> {
        let target = self.serial(&self.source)?;
        self.wait(Duration::from_secs(600), || {
            Ok(self.serial(&self.replica).unwrap_or(0) >= target)
        })?;
        Ok(Instant::now())
    }

    fn write(&self, args: &BenchArgs, records: usize, offset: usize) -> Result<Duration, String> {
        self.write_to(&self.source_target, args, records, offset, false)
    }

    /// `records` batched upserts of keys `offset..` through `target` (`reverse`: the
    /// last batch first).
    fn write_to(
        &self,
        target: &Target,
        args: &BenchArgs,
        records: usize,
        offset: usize,
        reverse: bool,
    ) -> Result<Duration, String> {
        let jobs = records.div_ceil(args.batch);
        // The data is a JSON string of `record_bytes` bytes, quotes included.
        let data = format!("\"{}\"", "x".repeat(args.record_bytes.saturating_sub(2)));
        let batch = args.batch;
        let path = format!("{}/transactions", self.db_path());
        let keys = move |job: usize| {
            let job = if reverse { jobs - 1 - job } else { job };
            let start = offset + job * batch;
            start..(start + batch).min(offset + records)
        };
        let (elapsed, _) = if args.format == "binary" {
            run_parallel(
                args.connections,
                jobs,
                move |client, job| {
                    let mut body = batch::Writer::new();
                    for i in keys(job) {
                        let key = format!("k{i:012}");
                        body.push(OpName::Upsert, "bench", &key, &[], Some(data.as_str()));
                    }
                    client
                        .call_bytes("POST", &path, batch::MEDIA_TYPE, &body.finish())
                        .map(|_| ())
                },
                target,
            )?
        } else {
            run_parallel(
                args.connections,
                jobs,
                move |client, job| {
                    let ops: Vec<String> = keys(job)
                        .map(|i| {
                            format!(
                                r#"{{"op":"upsert","file":"bench","key":"k{i:012}","data":{data}}}"#
                            )
                        })
                        .collect();
                    let body = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
                    client.call_raw("POST", &path, Some(&body)).map(|_| ())
                },
                target,
            )?
        };
        Ok(elapsed)
    }

    /// Both nodes hold the mutual database with the same contents and every link
    /// between them is idle.
    fn converged(&self) -> Result<bool, String> {
        for node in [&self.source, &self.replica] {
            let links = node.call("GET", &self.links_path(), None)?;
            for l in links.as_array().into_iter().flatten() {
                let s = &l["status"];
                if l["database"] == self.db.as_str() && s["acked_serial"] != s["source_serial"] {
                    return Ok(false);
                }
            }
        }
        Ok(self.contents(&self.source)? == self.contents(&self.replica)?)
    }

    /// Every (key, data) of the bench file, page by page.
    fn contents(&self, node: &Client) -> Result<Vec<(Value, Value)>, String> {
        let mut out = Vec::new();
        let mut from = String::new();
        loop {
            let page = node.call(
                "GET",
                &format!(
                    "{}/files/bench/records?limit=10000&from={}",
                    self.db_path(),
                    encode_segment(&from)
                ),
                None,
            )?;
            for r in page["records"].as_array().into_iter().flatten() {
                out.push((r["key"].clone(), r["data"].clone()));
            }
            match page["next"].as_str() {
                Some(next) => from = next.to_string(),
                None => return Ok(out),
            }
        }
    }
}

/// The scenarios [`run`] knows.
const SCENARIOS: [&str; 10] = [
    "all",
    "async",
    "sync",
    "bootstrap",
    "catchup",
    "logical",
    "logical-live",
    "verify",
    "promote",
    "mutual",
];

pub fn run(
    args: &BenchArgs,
    replica_url: &str,
    replica_token: Option<String>,
) -> Result<(), String> {
    if !SCENARIOS.contains(&args.scenario.as_str()) {
        return Err(format!(
            "unknown scenario '{}' (with --replica: {})",
            args.scenario,
            SCENARIOS.join(", ")
        ));
    }
    let replica_target = Target {
        url: replica_url.to_string(),
        tenant: args.target.tenant.clone(),
        token: replica_token.clone().or_else(|| args.target.token.clone()),
    };
    let pair = Pair {
        source: connect(&args.target),
        replica: connect(&replica_target),
        source_target: Target {
            url: args.target.url.clone(),
            tenant: args.target.tenant.clone(),
            token: args.target.token.clone(),
        },
        replica_url: replica_url.trim_end_matches('/').to_string(),
        replica_token,
        replica_target,
        tenant: encode_segment(&args.target.tenant),
        db: args.db.clone(),
    };
    let all = args.scenario == "all";
    if all || args.scenario == "async" {
        pair.reset()?;
        pair.create_db(&args.durability)?;
        pair.link("async")?;
        let started = Instant::now();
        let wrote = pair.write(args, args.records, 0)?;
        let done = pair.caught_up()?;
        let applied = done - started;
        println!(
            "async: {} records ({} per transaction, {}, {} durability): source {:.0} records/s; replica applied all in {:.2} s = {:.0} records/s (lag at the end of the writes {:.0} ms)",
            args.records,
            args.batch,
            args.format,
            args.durability,
            args.records as f64 / wrote.as_secs_f64(),
            applied.as_secs_f64(),
            args.records as f64 / applied.as_secs_f64(),
            ms(applied.saturating_sub(wrote))
        );
    }
    if all || args.scenario == "sync" {
        pair.reset()?;
        pair.create_db(&args.durability)?;
        let n = args.sync_commits;
        let path = format!("{}/files/bench/records", pair.db_path());
        let body = json!({"data": "x".repeat(args.record_bytes.saturating_sub(2))});
        let commits = |prefix: &str| -> Result<Vec<Duration>, String> {
            let mut latencies = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                pair.source
                    .call("PUT", &format!("{path}/{prefix}{i:09}"), Some(&body))?;
                latencies.push(t.elapsed());
            }
            latencies.sort();
            Ok(latencies)
        };
        // The same commits without a link first: the API's own share of the latency,
        // measured in the same run so the two can be compared on a noisy machine.
        let local = commits("l")?;
        pair.link("sync")?;
        let latencies = commits("s")?;
        let floor = loopback_round_trips(n)?;
        let us = |sorted: &[Duration], p: f64| ms(percentile(sorted, p)) * 1000.0;
        println!(
            "sync: {n} single-record commits, one connection ({} durability): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs (the same commits before the link: p50 {:.1} µs, p99 {:.1} µs; one loopback TCP round trip: p50 {:.1} µs)",
            args.durability,
            us(&latencies, 0.5),
            us(&latencies, 0.99),
            us(&latencies, 0.999),
            us(&local, 0.5),
            us(&local, 0.99),
            us(&floor, 0.5),
        );
    }
    if all || args.scenario == "bootstrap" {
        pair.reset()?;
        pair.create_db(&args.durability)?;
        pair.write(args, args.records, 0)?;
        // Two snapshots (at different serials) prune the log up to the first: the
        // replica must start from a snapshot.
        for round in 0..2 {
            pair.write(args, args.batch, args.records + round * args.batch)?;
            pair.source
                .call("POST", &format!("{}/snapshots", pair.db_path()), None)?;
        }
        let info: Value = pair.source.call("GET", &pair.db_path(), None)?;
        let bytes = info["memory_bytes"].as_u64().unwrap_or(0);
        let started = Instant::now();
        pair.link("async")?;
        let done = pair.caught_up()? - started;
        println!(
            "bootstrap: {} records, {:.1} MB of blocks, replica identical after {:.2} s = {:.0} MB/s",
            args.records,
            bytes as f64 / 1e6,
            done.as_secs_f64(),
            bytes as f64 / 1e6 / done.as_secs_f64()
        );
    }
    if all || args.scenario == "catchup" {
        pair.reset()?;
        pair.create_db(&args.durability)?;
        let id = pair.link("async")?;
        let link = format!("{}/{id}", pair.links_path());
        pair.source.call("POST", &format!("{link}/pause"), None)?;
        pair.write(args, args.records, 0)?;
        let behind = pair.serial(&pair.source)? - pair.serial(&pair.replica)?;
        let started = Instant::now();
        pair.source.call("POST", &format!("{link}/resume"), None)?;
        let done = pair.caught_up()? - started;
        println!(
            "catch-up: {behind} entries behind, caught up in {:.2} s = {:.0} entries/s",
            done.as_secs_f64(),
            behind as f64 / done.as_secs_f64()
        );
    }
    let live = args.scenario == "logical-live";
    if all || args.scenario == "logical" || live {
        // A logical link through a filter → transform chain of built-ins, measured twice
        // (`logical-live`: the second alone): as a catch-up (records/s through the
        // stages and applied by key on the replica), then live, the link streaming
        // while the records are written (counted as applied on the replica, as `async`
        // counts them).
        use crate::plugins::builtin;
        let chain = || {
            pair.reset()?;
            pair.create_db(&args.durability)?;
            pair.upload("bench-filter", "filter", builtin::PREFIX_FILTER)?;
            pair.upload("bench-namespace", "transform", builtin::NAMESPACE)?;
            let id = pair.link_with(json!({"apply": "logical", "stages": [
                {"plugin": "bench-filter@1", "config": {"files": ["bench"], "prefixes": ["k"]}},
                {"plugin": "bench-namespace@1", "config": {"default": {"key_prefix": "ns/"}}}
            ]}))?;
            Ok::<_, String>(format!("{}/{id}", pair.links_path()))
        };
        let stages = |link: &str| -> Result<f64, String> {
            let status = pair.source.call("GET", link, None)?;
            Ok(status["status"]["plugin_seconds"].as_f64().unwrap_or(0.0))
        };
        if !live {
            let link = chain()?;
            pair.source.call("POST", &format!("{link}/pause"), None)?;
            pair.write(args, args.records, 0)?;
            let started = Instant::now();
            pair.source.call("POST", &format!("{link}/resume"), None)?;
            let done = pair.confirmed(&link)? - started;
            println!(
                "logical: {} records through prefix-filter → namespace, applied by key in {:.2} s = {:.0} records/s ({:.2} s in the stages)",
                args.records,
                done.as_secs_f64(),
                args.records as f64 / done.as_secs_f64(),
                stages(&link)?
            );
        }
        let link = chain()?;
        let started = Instant::now();
        let wrote = pair.write(args, args.records, 0)?;
        let done = pair.confirmed(&link)? - started;
        println!(
            "logical, live: {} records ({}) written and applied by key through the same chain in {:.2} s = {:.0} records/s (the writes took {:.2} s; {:.2} s in the stages)",
            args.records,
            args.format,
            done.as_secs_f64(),
            args.records as f64 / done.as_secs_f64(),
            wrote.as_secs_f64(),
            stages(&link)?
        );
    }
    if all || args.scenario == "verify" {
        pair.reset()?;
        pair.create_db(&args.durability)?;
        let id = pair.link("async")?;
        let link = format!("{}/{id}", pair.links_path());
        for round in 0..2 {
            pair.write(args, args.records, round * args.records)?;
            pair.caught_up()?;
            let info: Value = pair.source.call("GET", &pair.db_path(), None)?;
            let bytes = info["memory_bytes"].as_u64().unwrap_or(0) as f64;
            let started = Instant::now();
            let report = pair.source.call("POST", &format!("{link}/verify"), None)?;
            let took = started.elapsed();
            println!(
                "verify: {} records, {:.1} MB of blocks per side, identical {}: {:.0} ms ({:.0} ms inside the node) = {:.0} MB/s",
                (round + 1) * args.records,
                bytes / 1e6,
                report["identical"],
                ms(took),
                report["took_ms"].as_f64().unwrap_or(0.0),
                bytes / 1e6 / took.as_secs_f64()
            );
        }
    }
    if all || args.scenario == "promote" {
        pair.reset()?;
        pair.create_db(&args.durability)?;
        pair.link("async")?;
        pair.write(args, args.records.min(100_000), 0)?;
        pair.caught_up()?;
        let started = Instant::now();
        let promoted = pair.replica.call(
            "POST",
            &format!("{}/promote", pair.db_path()),
            Some(&json!({})),
        )?;
        let answered = started.elapsed();
        let path = format!("{}/files/bench/records/after-promote", pair.db_path());
        pair.replica
            .call("PUT", &path, Some(&json!({"data": "x"})))?;
        let writable = started.elapsed();
        println!(
            "promote: answered in {:.2} ms ({} µs inside the node), first write accepted {:.2} ms after the request",
            ms(answered),
            promoted["took_us"],
            ms(writable)
        );
    }
    if all || args.scenario == "mutual" {
        mutual(&pair, args)?;
    }
    pair.reset()?;
    Ok(())
}

/// `n` round trips of 64 bytes over loopback TCP to an echo thread, sorted: the
/// machine's floor for a commit that needs two of them (client to source, source to
/// replica), measured in the same run as the commits.
fn loopback_round_trips(n: usize) -> Result<Vec<Duration>, String> {
    use std::io::{Read, Write};
    let err = |e: std::io::Error| format!("loopback round trips: {e}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut s = std::net::TcpStream::connect(addr).map_err(err)?;
    s.set_nodelay(true).map_err(err)?;
    let mut buf = [7u8; 64];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&buf).map_err(err)?;
        s.read_exact(&mut buf).map_err(err)?;
        out.push(t.elapsed());
    }
    drop(s);
    let _ = echo.join();
    out.sort();
    Ok(out)
}

/// Two sites writing the same keys at once through a pair of mutual links.
fn mutual(pair: &Pair, args: &BenchArgs) -> Result<(), String> {
    pair.reset()?;
    let spec = json!({"name": pair.db, "files": [{"name": "bench"}], "durability": args.durability,
                      "memory_quota_bytes": 16u64 << 30, "mutual": true});
    let dbs = format!("/v1/tenants/{}/databases", pair.tenant);
    pair.source.call("POST", &dbs, Some(&spec))?;
    pair.replica.call("POST", &dbs, Some(&spec))?;
    let conflicts = json!({"apply": "logical", "conflicts": {"strategy": "lww"}});
    pair.link_with(conflicts.clone())?;
    let mut back = json!({"database": pair.db,
                          "target": {"url": pair.source_target.url.trim_end_matches('/'), "database": pair.db}});
    if let Some(token) = &pair.source_target.token {
        back["target"]["token"] = json!(token.trim());
    }
    back["apply"] = conflicts["apply"].clone();
    back["conflicts"] = conflicts["conflicts"].clone();
    pair.replica.call("POST", &pair.links_path(), Some(&back))?;
    let half = args.records / 2;
    let started = Instant::now();
    let (wa, wb) = std::thread::scope(|s| {
        // The same keys, one site from each end: they meet in the middle.
        let a = s.spawn(|| pair.write_to(&pair.source_target, args, half, 0, false));
        let b = s.spawn(|| pair.write_to(&pair.replica_target, args, half, 0, true));
        (a.join(), b.join())
    });
    let (wa, wb) = (
        wa.map_err(|_| "a writer panicked")??,
        wb.map_err(|_| "a writer panicked")??,
    );
    pair.wait(Duration::from_secs(600), || pair.converged())?;
    let took = started.elapsed();
    let count = |c: &Client| -> Result<u64, String> {
        Ok(c.call(
            "GET",
            &format!("{}/conflicts?limit=1", pair.db_path()),
            None,
        )?["count"]
            .as_u64()
            .unwrap_or(0))
    };
    let conflicts = count(&pair.source)? + count(&pair.replica)?;
    println!(
        "mutual: 2 sites x {half} records ({} per transaction, same keys, {} durability): writes {:.0} + {:.0} records/s; identical on both sites after {:.2} s = {:.0} records/s; {conflicts} conflicts = {:.1}% of the records written",
        args.batch,
        args.durability,
        half as f64 / wa.as_secs_f64(),
        half as f64 / wb.as_secs_f64(),
        took.as_secs_f64(),
        (2 * half) as f64 / took.as_secs_f64(),
        100.0 * conflicts as f64 / (2 * half) as f64
    );
    Ok(())
}
