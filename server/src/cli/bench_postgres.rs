//! `doppel bench --scenario postgres --postgres CONN`: a link into PostgreSQL through the
//! built-in `json-columns` row mapping, against a running node and a running
//! PostgreSQL (the node connects to it with CONN; this command runs `psql` with it for
//! the floor).
//!
//! - **apply**: `--records` records of `--record-bytes` (`{"n": i, "s": "xxx…"}`) are
//!   written in batches while the link is paused; then the database is snapshotted
//!   (1,000,000 entries is when the node's upkeep would, about a second of its CPU
//!   that would otherwise run during the apply) and, once the node is idle again,
//!   the link resumes: rows/s from the resume
//!   until the link's position covers the last serial (everything applied and
//!   committed in PostgreSQL), with the CPU seconds over that time of the node and of
//!   PostgreSQL (its postmaster and backends), each found by the port it listens on
//!   (from `/proc`, so on this machine only; other nodes or servers do not count);
//! - **floor**: the same rows by `COPY … FROM STDIN` (psql `\copy`, text format) into a
//!   fresh table of the same shape (primary key included): rows/s, PostgreSQL's CPU
//!   seconds over it, and the ratio;
//! - **live**: the same keys written again (updates, upserts in PostgreSQL) with the link
//!   running: the write rate, the link's lag when the writes end, and the time until it
//!   caught up.

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use super::bench::{db_path, recreate, run_parallel, BenchArgs};
use super::client::{connect, Client};

/// (pid, parent pid, CPU seconds user + system, and of its children that ended) of every
/// process, from `/proc`.
fn processes() -> Vec<(u32, u32, f64, f64)> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        // Fields after the command: state is field 3, ppid 4; utime and stime 14 and 15,
        // the ended children's 16 and 17.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        let cpu = field(14).unwrap_or(0) + field(15).unwrap_or(0);
        let ended = field(16).unwrap_or(0) + field(17).unwrap_or(0);
        out.push((
            pid,
            field(4).unwrap_or(0) as u32,
            cpu as f64 / ticks,
            ended as f64 / ticks,
        ));
    }
    out
}

/// The process listening on TCP `port` on this machine (from `/proc/net/tcp*` and the
/// processes' sockets), if any.
fn listener(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// CPU seconds of the process listening on `port` and its children, those that ended
/// included (PostgreSQL's backends are the postmaster's: psql's `\copy` has its own,
/// gone when it is measured); None when no process here listens on it. Other
/// processes of the same name (another node, another PostgreSQL) do not count.
fn cpu_seconds(port: u16) -> Option<f64> {
    let root = listener(port)?;
    Some(
        processes()
            .into_iter()
            .filter(|(pid, ppid, _, _)| *pid == root || *ppid == root)
            .map(|(pid, _, cpu, ended)| if pid == root { cpu + ended } else { cpu })
            .sum(),
    )
}

fn payload(args: &BenchArgs) -> String {
    // `{"n":123456,"s":""}` is about 20 bytes; the string fills the rest.
    "x".repeat(args.record_bytes.saturating_sub(20).max(1))
}

/// Batched upserts of `k{i:012}` → `{"n": i + round, "s": …}`.
fn write_pass(args: &BenchArgs, path: &str, round: usize) -> Result<Duration, String> {
    let fill = payload(args);
    let (records, batch) = (args.records, args.batch);
    let path = format!("{path}/transactions");
    let (elapsed, _) = run_parallel(
        args.connections,
        records.div_ceil(batch),
        move |client, job| {
            let start = job * batch;
            let ops: Vec<String> = (start..(start + batch).min(records))
                .map(|i| {
                    format!(
                        r#"{{"op":"upsert","file":"bench","key":"k{i:012}","data":{{"n":{},"s":"{fill}"}}}}"#,
                        i + round
                    )
                })
                .collect();
            client
                .call_raw(
                    "POST",
                    &path,
                    Some(&format!(r#"{{"ops":[{}]}}"#, ops.join(","))),
                )
                .map(|_| ())
        },
        &args.target,
    )?;
    Ok(elapsed)
}

fn status(client: &Client, link: &str) -> Result<serde_json::Value, String> {
    Ok(client.call("GET", link, None)?["status"].clone())
}

/// Wait until the link's position covers `serial`; the time it took.
fn until_applied(client: &Client, link: &str, serial: u64) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let s = status(client, link)?;
        if s["acked_serial"].as_u64() >= Some(serial) {
            return Ok(started.elapsed());
        }
        if s["state"] == "stopped" || started.elapsed() > Duration::from_secs(1800) {
            return Err(format!("the link did not catch up: {s}"));
        }
        // Each look reads the link's status, log included: often enough to time a
        // second-long apply to 1%, not so often that the looks cost the node.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait (at most `limit`) until the process listening on `port` uses under a fifth of a
/// core over a quarter of a second: the work that follows a bulk write (the snapshot
/// it triggers) is done. How long that took; None when its CPU cannot be read here.
fn settle(port: u16, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let window = Duration::from_millis(250);
    let mut before = cpu_seconds(port)?;
    loop {
        std::thread::sleep(window);
        let now = cpu_seconds(port)?;
        if now - before < 0.2 * window.as_secs_f64() || started.elapsed() > limit {
            return Some(started.elapsed());
        }
        before = now;
    }
}

fn psql(conn: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conn,
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn run(args: &BenchArgs) -> Result<(), String> {
    let conn = args
        .postgres
        .clone()
        .ok_or("--scenario postgres needs --postgres CONNECTION (a database the node can reach)")?;
    let client = connect(&args.target);
    let tenant = &args.target.tenant;
    let path = db_path(tenant, &args.db);
    let links = format!(
        "/v1/tenants/{}/links",
        super::client::encode_segment(tenant)
    );
    for l in client
        .call("GET", &links, None)?
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if l["database"] == args.db.as_str() {
            client.call(
                "DELETE",
                &format!("{links}/{}", l["id"].as_str().unwrap_or("")),
                None,
            )?;
        }
    }
    recreate(&client, tenant, &args.db, &args.durability)?;
    psql(&conn, "DROP TABLE IF EXISTS bench, bench_copy")?;
    let version = crate::plugins::registry::builtin_version("json-columns").unwrap_or("1.0.0");
    let link = client.call(
        "POST",
        &links,
        Some(&json!({"database": args.db, "target": {"postgres": conn, "schema": "public"},
            "apply": "logical", "on_error": "quarantine", "create_tables": true,
            "stages": [{"plugin": format!("json-columns@{version}"), "config": {"files": {
                "bench": {"table": "bench", "key": "id", "columns": {"n": "bigint", "s": "text"}}}}}]})),
    )?;
    let link = format!("{links}/{}", link["id"].as_str().ok_or("no link id")?);
    until_applied(&client, &link, 0)?;
    client.call("POST", &format!("{link}/pause"), None)?;

    let (records, batch) = (args.records, args.batch);
    let elapsed = write_pass(args, &path, 0)?;
    let last = client.call("GET", &path, None)?["last_serial"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "postgres: {records} records of {} B written in {:.1} s with the link paused ({:.0} records/s, batches of {batch})",
        args.record_bytes,
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64()
    );

    // The node and PostgreSQL by the ports they listen on.
    let node_port = args
        .target
        .url
        .split_once("://")
        .map_or(args.target.url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .and_then(|authority| authority.rsplit_once(':'))
        .and_then(|(_, port)| port.parse::<u16>().ok());
    let pg_port = conn
        .parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_ports().first().copied())
        .unwrap_or(5432);
    let started = Instant::now();
    client.call("POST", &format!("{path}/snapshots"), None)?;
    let snapshot = started.elapsed();
    if let Some(waited) = node_port.and_then(|port| settle(port, Duration::from_secs(120))) {
        println!(
            "  snapshot of the database before the apply: {:.1} s; the node idle {:.1} s later",
            snapshot.as_secs_f64(),
            waited.as_secs_f64()
        );
    }
    let cpu = || (cpu_seconds(pg_port), node_port.and_then(cpu_seconds));
    let before = cpu();
    let started = Instant::now();
    client.call("POST", &format!("{link}/resume"), None)?;
    until_applied(&client, &link, last)?;
    let applied = started.elapsed();
    let after = cpu();
    let rows = psql(&conn, "SELECT count(*) FROM bench")?;
    let apply_rate = records as f64 / applied.as_secs_f64();
    let share = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!(
            "{:.1} s ({:.0}% of the wall time)",
            b - a,
            100.0 * (b - a) / applied.as_secs_f64()
        ),
        _ => "not measured (not listening on this machine)".to_string(),
    };
    println!(
        "  apply: {rows} rows in {:.2} s: {apply_rate:.0} rows/s; CPU over it: PostgreSQL {}, node {}",
        applied.as_secs_f64(),
        share(before.0, after.0),
        share(before.1, after.1),
    );

    // The floor: the same rows by COPY into a table of the same shape.
    psql(
        &conn,
        "CREATE TABLE bench_copy (id text PRIMARY KEY, n bigint, s text)",
    )?;
    let file = std::env::temp_dir().join(format!("doppel-bench-copy-{}.tsv", std::process::id()));
    {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&file).map_err(|e| format!("{}: {e}", file.display()))?,
        );
        let fill = payload(args);
        for i in 0..records {
            writeln!(out, "k{i:012}\t{i}\t{fill}").map_err(|e| e.to_string())?;
        }
        out.flush().map_err(|e| e.to_string())?;
    }
    let before = cpu_seconds(pg_port);
    let started = Instant::now();
    let copied = psql(
        &conn,
        &format!("\\copy bench_copy FROM '{}'", file.display()),
    );
    let floor = started.elapsed();
    let floor_cpu = before.zip(cpu_seconds(pg_port)).map(|(a, b)| b - a);
    let _ = std::fs::remove_file(&file);
    copied?;
    let floor_rate = records as f64 / floor.as_secs_f64();
    println!(
        "  floor: COPY FROM STDIN (psql \\copy, text) of the same rows: {:.2} s, {floor_rate:.0} rows/s, PostgreSQL CPU {}; the link takes {:.2}x its time",
        floor.as_secs_f64(),
        floor_cpu.map_or("not measured".to_string(), |c| format!("{c:.1} s")),
        applied.as_secs_f64() / floor.as_secs_f64()
    );

    // Live: the same keys updated with the link running.
    let elapsed = write_pass(args, &path, 1)?;
    let s = status(&client, &link)?;
    let last = client.call("GET", &path, None)?["last_serial"]
        .as_u64()
        .unwrap_or(0);
    let drained = until_applied(&client, &link, last)?;
    println!(
        "  live: {records} updates in {:.1} s ({:.0} records/s) with the link running; at the end of the writes the link was {} entries ({} ms) behind and caught up {:.2} s later",
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64(),
        s["lag_entries"],
        s["lag_ms"],
        drained.as_secs_f64()
    );
    let check = psql(
        &conn,
        "SELECT count(*) FROM bench WHERE n = substr(id, 2)::bigint + 1",
    )?;
    println!("  check: {check} of {records} rows hold the second pass's value");
    Ok(())
}
