//! `doppel restore`: a point-in-time restore of a database (in place or into a new one),
//! followed to its end with a progress bar of the operation's phase and `done`/`total`,
//! as `GET …/restores/{id}` reports them.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::client::{connect, encode_segment, Target};
use super::progress;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Method {
    Replay,
    Undo,
}

/// doppel restore DB (--serial N | --timestamp-us T) [--into NEW_DB]
#[derive(Args, Debug)]
pub struct RestoreArgs {
    database: String,
    /// The serial to restore to (0: before any update).
    #[arg(
        long,
        conflicts_with = "timestamp_us",
        required_unless_present = "timestamp_us"
    )]
    serial: Option<u64>,
    /// The time to restore to, in microseconds since the epoch.
    #[arg(long)]
    timestamp_us: Option<u64>,
    /// Restore into a new database of this name instead of in place.
    #[arg(long)]
    into: Option<String>,
    /// replay (from a snapshot, forward) or undo (from now, backward); default: the cheaper.
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Answer the plan only (method, updates, records changed); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Answer the started operation at once instead of following it.
    #[arg(long)]
    no_wait: bool,
    /// Longest wait, in seconds.
    #[arg(long, default_value_t = 3600)]
    wait_secs: u64,
    #[command(flatten)]
    target: Target,
}

pub fn run(args: RestoreArgs) -> Result<(), String> {
    let db = format!(
        "/v1/tenants/{}/databases/{}",
        encode_segment(&args.target.tenant),
        encode_segment(&args.database)
    );
    let mut body = json!({"dry_run": args.dry_run});
    if let Some(serial) = args.serial {
        body["serial"] = json!(serial);
    }
    if let Some(ts) = args.timestamp_us {
        body["timestamp_us"] = json!(ts);
    }
    if let Some(into) = &args.into {
        body["into"] = json!(into);
    }
    if let Some(method) = args.method {
        body["method"] = json!(match method {
            Method::Replay => "replay",
            Method::Undo => "undo",
        });
    }
    let client = connect(&args.target);
    let started = client.call("POST", &format!("{db}/restore"), Some(&body))?;
    let answer = if args.dry_run || args.no_wait {
        started
    } else {
        let id = started["id"]
            .as_u64()
            .ok_or("the node answered a restore without an id")?;
        follow(
            &client,
            &format!("{db}/restores/{id}"),
            Duration::from_secs(args.wait_secs),
        )?
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_default()
    );
    Ok(())
}

/// Polls the operation until it succeeds (its final state) or fails (an error).
fn follow(client: &crate::remote::Client, path: &str, within: Duration) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    let bar = progress::count(0, "restoring");
    let mut poll = Duration::from_millis(20);
    loop {
        let op = client.call("GET", path, None)?;
        bar.set_length(op["total"].as_u64().unwrap_or(0));
        bar.set_position(op["done"].as_u64().unwrap_or(0));
        bar.set_message(format!(
            "restoring: {}",
            op["phase"].as_str().unwrap_or("queued")
        ));
        match op["state"].as_str() {
            Some("succeeded") => {
                bar.finish_and_clear();
                return Ok(op);
            }
            Some("failed") => {
                bar.finish_and_clear();
                return Err(format!(
                    "the restore failed: {}",
                    op["error"].as_str().unwrap_or("(no error recorded)")
                ));
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            bar.finish_and_clear();
            return Err(format!(
                "the restore did not end within {} s (it goes on: GET {path})",
                within.as_secs()
            ));
        }
        // Polling a remote operation: back off up to half a second between looks.
        std::thread::sleep(poll);
        poll = (poll * 2).min(Duration::from_millis(500));
    }
}
