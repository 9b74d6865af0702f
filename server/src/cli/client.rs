//! The client subcommands: everyday data operations against a running node over its
//! REST API. Output is the API's JSON, pretty-printed; a problem becomes the exit
//! message.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the node is and which tenant to act for.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Base URL of the node's API.
    #[arg(
        long,
        global = true,
        env = "DOPPEL_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub url: String,
    /// Tenant to act for.
    #[arg(long, global = true, env = "DOPPEL_TENANT", default_value = "default")]
    pub tenant: String,
    /// Bearer token (see `doppel token`, or the admin token a node prints on first start).
    #[arg(long, global = true, env = "DOPPEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Check that the node answers.
    Health(TargetOnly),
    /// Manage databases.
    #[command(subcommand)]
    Db(DbCommand),
    /// Insert or replace a record: doppel put DB FILE KEY 'JSON' [--alt name=value]...
    Put {
        db: String,
        file: String,
        key: String,
        data: String,
        #[arg(long = "alt", value_parser = parse_alt)]
        alt: Vec<(String, String)>,
        #[command(flatten)]
        target: Target,
    },
    /// Read a record.
    Get {
        db: String,
        file: String,
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a record.
    Del {
        db: String,
        file: String,
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Scan records by key range.
    Scan {
        db: String,
        file: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
    /// Find records by alternate key.
    Lookup {
        db: String,
        file: String,
        alt: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Apply a transaction from a JSON file ({"ops": [...]}, or '-' for stdin).
    Txn {
        db: String,
        ops: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Take a snapshot.
    Snapshot {
        db: String,
        #[command(flatten)]
        target: Target,
    },
    /// Show A/B/T log entries.
    Log {
        db: String,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
    /// Show per-block checksums.
    Checksums {
        db: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args, Debug)]
pub struct TargetOnly {
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Create a database: doppel db create shop --file orders:customer,status --file lines
    Create {
        name: String,
        /// A file and its alternate keys: NAME or NAME:ALT1,ALT2.
        #[arg(long = "file", required = true)]
        files: Vec<String>,
        #[arg(long)]
        block_size: Option<usize>,
        /// none, group or sync.
        #[arg(long)]
        durability: Option<String>,
        #[arg(long)]
        memory_quota_bytes: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// List databases.
    List(TargetOnly),
    /// Show a database.
    Show {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a database.
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

fn parse_alt(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected name=value, got '{text}'"))
}

pub use crate::remote::Client;

/// A client for a target's URL and token.
pub fn connect(target: &Target) -> Client {
    let client = Client::new(&target.url);
    match &target.token {
        Some(token) => client.with_token(token),
        None => client,
    }
}

pub fn encode_segment(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn db_path(target: &Target, db: &str) -> String {
    format!(
        "/v1/tenants/{}/databases/{}",
        encode_segment(&target.tenant),
        encode_segment(db)
    )
}

fn record_path(target: &Target, db: &str, file: &str, key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("the key is empty: a record needs a non-empty unique key".into());
    }
    Ok(record_path_unchecked(target, db, file, key))
}

fn record_path_unchecked(target: &Target, db: &str, file: &str, key: &str) -> String {
    format!(
        "{}/files/{}/records/{}",
        db_path(target, db),
        encode_segment(file),
        encode_segment(key)
    )
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

pub fn run(command: ClientCommand) -> Result<(), String> {
    let spinner = match &command {
        ClientCommand::Snapshot { db, .. } => Some(super::progress::spinner(format!(
            "taking a snapshot of {db}"
        ))),
        _ => None,
    };
    let (target, method, path, body) = request_for(command)?;
    let answer = connect(&target).call(method, &path, body.as_ref());
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    let answer = answer?;
    if !answer.is_null() {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    }
    Ok(())
}

type Request = (Target, &'static str, String, Option<Value>);

fn request_for(command: ClientCommand) -> Result<Request, String> {
    use ClientCommand as C;
    Ok(match command {
        C::Health(t) => (t.target, "GET", "/v1/health".into(), None),
        C::Db(DbCommand::Create {
            name,
            files,
            block_size,
            durability,
            memory_quota_bytes,
            target,
        }) => {
            let files: Vec<Value> = files
                .iter()
                .map(|f| match f.split_once(':') {
                    Some((name, alts)) => {
                        json!({"name": name, "alt_keys": alts.split(',').collect::<Vec<_>>()})
                    }
                    None => json!({"name": f}),
                })
                .collect();
            let mut body = json!({"name": name, "files": files});
            if let Some(size) = block_size {
                body["block_size"] = json!(size);
            }
            if let Some(durability) = durability {
                body["durability"] = json!(durability);
            }
            if let Some(quota) = memory_quota_bytes {
                body["memory_quota_bytes"] = json!(quota);
            }
            let path = format!("/v1/tenants/{}/databases", encode_segment(&target.tenant));
            (target, "POST", path, Some(body))
        }
        C::Db(DbCommand::List(t)) => {
            let path = format!("/v1/tenants/{}/databases", encode_segment(&t.target.tenant));
            (t.target, "GET", path, None)
        }
        C::Db(DbCommand::Show { name, target }) => {
            let path = db_path(&target, &name);
            (target, "GET", path, None)
        }
        C::Db(DbCommand::Delete { name, target }) => {
            let path = db_path(&target, &name);
            (target, "DELETE", path, None)
        }
        C::Put {
            db,
            file,
            key,
            data,
            alt,
            target,
        } => {
            let alt: serde_json::Map<String, Value> =
                alt.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let body = json!({"alt": alt, "data": parse_json(&data)?});
            let path = record_path(&target, &db, &file, &key)?;
            (target, "PUT", path, Some(body))
        }
        C::Get {
            db,
            file,
            key,
            target,
        } => {
            let path = record_path(&target, &db, &file, &key)?;
            (target, "GET", path, None)
        }
        C::Del {
            db,
            file,
            key,
            target,
        } => {
            let path = record_path(&target, &db, &file, &key)?;
            (target, "DELETE", path, None)
        }
        C::Scan {
            db,
            file,
            from,
            to,
            limit,
            target,
        } => {
            let mut path = format!(
                "{}/files/{}/records?limit={limit}",
                db_path(&target, &db),
                encode_segment(&file)
            );
            if let Some(from) = from {
                path.push_str(&format!("&from={}", encode_segment(&from)));
            }
            if let Some(to) = to {
                path.push_str(&format!("&to={}", encode_segment(&to)));
            }
            (target, "GET", path, None)
        }
        C::Lookup {
            db,
            file,
            alt,
            value,
            target,
        } => {
            let path = format!(
                "{}/files/{}/alt/{}/{}",
                db_path(&target, &db),
                encode_segment(&file),
                encode_segment(&alt),
                encode_segment(&value)
            );
            (target, "GET", path, None)
        }
        C::Txn { db, ops, target } => {
            let text = if ops.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(|e| e.to_string())?
            } else {
                std::fs::read_to_string(&ops)
                    .map_err(|e| format!("cannot read {}: {e}", ops.display()))?
            };
            let path = format!("{}/transactions", db_path(&target, &db));
            (target, "POST", path, Some(parse_json(&text)?))
        }
        C::Snapshot { db, target } => {
            let path = format!("{}/snapshots", db_path(&target, &db));
            (target, "POST", path, None)
        }
        C::Log {
            db,
            from,
            limit,
            target,
        } => {
            let path = format!("{}/log?from={from}&limit={limit}", db_path(&target, &db));
            (target, "GET", path, None)
        }
        C::Checksums { db, target } => {
            let path = format!("{}/checksums", db_path(&target, &db));
            (target, "GET", path, None)
        }
    })
}
