//! `doppel link`: the common link operations on the source node (create, swap stages,
//! show, list) without writing the API's JSON by hand. `create --wait` follows the
//! link's bootstrap until the replica has caught up, with a progress bar.

use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::client::{connect, encode_segment, Target};
use super::plugin::split_plugin;
use super::progress;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LinkMode {
    Sync,
    Async,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LinkApply {
    Mirror,
    Logical,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OnError {
    Stop,
    Quarantine,
}

#[derive(Subcommand, Debug)]
pub enum LinkCommand {
    /// Create a link from a database of this node to a database of another node:
    /// doppel link create shop --to http://replica:7070 --stage 'my-filter@0.1.0={"prefixes":["eu-"]}'
    Create {
        /// The source database, on the node of --url.
        database: String,
        /// The target node's API URL.
        #[arg(long)]
        to: String,
        /// The target database (default: the source's name).
        #[arg(long)]
        target_db: Option<String>,
        /// A token for the target node (default: the source signs its own).
        #[arg(long)]
        target_token: Option<String>,
        #[arg(long, value_enum)]
        mode: Option<LinkMode>,
        /// mirror (blocks) or logical (records through stages). Default: logical with
        /// --stage, else mirror.
        #[arg(long, value_enum)]
        apply: Option<LinkApply>,
        /// A stage, in order: NAME@VERSION or NAME@VERSION=CONFIG_JSON.
        #[arg(long = "stage")]
        stages: Vec<String>,
        /// What a record a stage rejects does: stop the link (the server's default) or
        /// quarantine the record as a dead letter and go on.
        #[arg(long, value_enum)]
        on_error: Option<OnError>,
        /// Follow the link until the replica has caught up (bootstrap included).
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait, in seconds.
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Swap a logical link's stages while it runs: doppel link stages LINK --stage NAME@VERSION[=CONFIG]...
    Stages {
        link: String,
        #[arg(long = "stage", required_unless_present = "none")]
        stages: Vec<String>,
        /// Remove every stage.
        #[arg(long, conflicts_with = "stages")]
        none: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show a link: its definition, state, lag and last error.
    Show {
        link: String,
        #[command(flatten)]
        target: Target,
    },
    /// List the links whose source is on the node.
    List {
        #[command(flatten)]
        target: Target,
    },
}

/// `NAME@VERSION` or `NAME@VERSION=CONFIG_JSON` as a stage of the API.
pub fn parse_stage(spec: &str) -> Result<Value, String> {
    let (plugin, config) = match spec.split_once('=') {
        Some((plugin, config)) => {
            let config: Value = serde_json::from_str(config)
                .map_err(|e| format!("--stage {spec}: the config after '=' is not JSON: {e}"))?;
            (plugin, config)
        }
        None => (spec, json!({})),
    };
    split_plugin(plugin).map_err(|e| format!("--stage {e}"))?;
    Ok(json!({"plugin": plugin, "config": config}))
}

fn links_path(target: &Target) -> String {
    format!("/v1/tenants/{}/links", encode_segment(&target.tenant))
}

pub fn run(command: LinkCommand) -> Result<(), String> {
    use LinkCommand as L;
    let answer = match command {
        L::Create {
            database,
            to,
            target_db,
            target_token,
            mode,
            apply,
            stages,
            on_error,
            wait,
            wait_secs,
            target,
        } => {
            let stages = stages
                .iter()
                .map(|s| parse_stage(s))
                .collect::<Result<Vec<_>, _>>()?;
            let mut body = json!({
                "database": database,
                "target": {"url": to, "database": target_db.unwrap_or_else(|| database.clone())},
            });
            if let Some(token) = target_token {
                body["target"]["token"] = json!(token);
            }
            if let Some(mode) = mode {
                body["mode"] = json!(match mode {
                    LinkMode::Sync => "sync",
                    LinkMode::Async => "async",
                });
            }
            let apply = match apply {
                Some(LinkApply::Mirror) => Some("mirror"),
                Some(LinkApply::Logical) => Some("logical"),
                None if !stages.is_empty() => Some("logical"),
                None => None,
            };
            if let Some(apply) = apply {
                body["apply"] = json!(apply);
            }
            if !stages.is_empty() {
                body["stages"] = json!(stages);
            }
            if let Some(on_error) = on_error {
                body["on_error"] = json!(match on_error {
                    OnError::Stop => "stop",
                    OnError::Quarantine => "quarantine",
                });
            }
            let client = connect(&target);
            let link = client.call("POST", &links_path(&target), Some(&body))?;
            if wait {
                let id = link["id"]
                    .as_str()
                    .ok_or("the node answered a link without an id")?;
                let path = format!("{}/{}", links_path(&target), encode_segment(id));
                follow(&client, &path, Duration::from_secs(wait_secs))?
            } else {
                link
            }
        }
        L::Stages {
            link,
            stages,
            none,
            target,
        } => {
            let stages = if none {
                Vec::new()
            } else {
                stages
                    .iter()
                    .map(|s| parse_stage(s))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let path = format!("{}/{}/stages", links_path(&target), encode_segment(&link));
            connect(&target).call("PUT", &path, Some(&json!(stages)))?
        }
        L::Show { link, target } => {
            let path = format!("{}/{}", links_path(&target), encode_segment(&link));
            connect(&target).call("GET", &path, None)?
        }
        L::List { target } => connect(&target).call("GET", &links_path(&target), None)?,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_default()
    );
    Ok(())
}

/// Follows a new link until it streams with the replica caught up to the serial the
/// source had when it was created. A link its error policy stopped is an error.
fn follow(client: &crate::remote::Client, path: &str, within: Duration) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    let first = client.call("GET", path, None)?;
    let goal = first["status"]["source_serial"].as_u64().unwrap_or(0);
    let bar = progress::count(goal, "bootstrapping: serials applied");
    let mut poll = Duration::from_millis(20);
    loop {
        let link = client.call("GET", path, None)?;
        let status = &link["status"];
        let state = status["state"].as_str().unwrap_or("");
        let acked = status["acked_serial"].as_u64().unwrap_or(0);
        bar.set_position(acked.min(goal));
        bar.set_message(format!("{state}: serials applied"));
        if state == "stopped" {
            bar.finish_and_clear();
            return Err(format!(
                "the link stopped: {}",
                status["last_error"]
                    .as_str()
                    .unwrap_or("(no error recorded)")
            ));
        }
        if state == "streaming" && acked >= goal {
            bar.finish_and_clear();
            return Ok(link);
        }
        if Instant::now() >= deadline {
            bar.finish_and_clear();
            return Err(format!(
                "the link did not catch up within {} s: it is {state}, {acked} of {goal} serials applied; last error: {}",
                within.as_secs(),
                status["last_error"].as_str().unwrap_or("none")
            ));
        }
        // Polling a remote state: back off up to half a second between looks.
        std::thread::sleep(poll);
        poll = (poll * 2).min(Duration::from_millis(500));
    }
}
