//! Link definitions (source side), replica registrations (target side), and the live
//! status a link reports.
//!
//! A link copies one database of its source node to a database of a target node. Its
//! definition is kept in the source's sled `config` tree (`link/{id}`), a replica's
//! registration in the target's (`replica/{id}`). The per-link credential is a secret:
//! the source keeps it to open connections, the target keeps only its SHA-256, and
//! neither ever shows it in the API or the logs.

use serde::{Deserialize, Serialize};

use crate::node::DatabaseSpec;

/// How the source waits for the replica (SPEC C1, C2).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Tightly coupled: a commit waits until the quorum of replicas applied it.
    Sync,
    /// Loosely coupled: the replica follows; commits do not wait for it.
    #[default]
    Async,
}

/// How the replica applies what arrives.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Apply {
    /// Block-identical: the source's A log, replayed (SPEC A5).
    #[default]
    Mirror,
    /// By key, after the link's stages; the replica's blocks are its own.
    Logical,
}

/// What a link does with a record its stages reject.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Stop,
    Quarantine,
}

/// Where the target is: another Doppel node (`url`, `database`), or a PostgreSQL
/// database (`postgres`, `schema`; `transport::postgres`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The target node's API, e.g. `http://10.0.0.2:7070`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(regex(pattern = r"^http://[^/]"))]
    pub url: String,
    /// The target database (created by bootstrap if it does not exist).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub database: String,
    /// A PostgreSQL target's connection string. In a request it carries the password;
    /// the link keeps it apart ([`LinkDef::postgres_url`]) and stores and shows this
    /// field masked ([`mask_password`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
    /// A PostgreSQL target's schema (`public` when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// A token for the target's API (operator of the same tenant). Without one the
    /// source signs its own, which the target accepts when the nodes share a key.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// The replication address to connect to instead of the one the target
    /// advertises (a proxy, or an address translated on the way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<String>,
    /// The target database may hold data of its own or follow another source: this
    /// link takes it over (a failover re-pointing replicas, an old primary rejoining):
    /// by serial where its log's history allows (`transport::history`), else from a
    /// snapshot. Without it such a target is refused. On a PostgreSQL target: a link
    /// with no position of its own takes over the position another link with the same
    /// stages left, where this database's log holds the same entries up to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
}

/// A stage named from the plugin registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// `name@version`.
    #[schemars(regex(pattern = r"^[^@]+@[^@]+$"))]
    pub plugin: String,
    #[serde(default)]
    pub config: serde_json::Value,
}

/// How a mutual link decides between concurrent writes of one record (SPEC F4).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Last writer wins, by hybrid-logical-clock timestamp, then node id.
    #[default]
    Lww,
    /// The write of the node listed first in `priority` wins; last writer wins between
    /// nodes of equal rank.
    Priority,
    /// A resolver plugin decides (winner or merge).
    Resolver,
}

/// What makes a link mutual: its databases both take writes, and the target resolves
/// concurrent writes with this. Both links of a pair should carry the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConflictSpec {
    #[serde(default)]
    pub strategy: Strategy,
    /// Node ids, highest priority first (`priority`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority: Vec<String>,
    /// `name@version` of a resolver plugin, with its config (`resolver`); the target
    /// node loads it from its own registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<StageSpec>,
    /// Parallel (SPEC F5): a write takes its records' locks on every site first, so the
    /// sites never write a record concurrently (`transport::parallel`). Needs `sync`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,
}

/// What a client sends to create a link: which database goes where, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// The source database, on this node.
    pub database: String,
    pub target: TargetSpec,
    /// Flat in the JSON, beside `database` and `target`.
    #[serde(flatten)]
    pub options: LinkOptions,
}

/// How a link replicates, wherever it is declared: in a link request ([`LinkSpec`]) and
/// in a topology document's link (`topology::LinkDoc`), both flat in their JSON. The one
/// definition of these fields; an unknown field is refused here (serde passes this
/// struct every field its container does not know).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkOptions {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub apply: Apply,
    #[serde(default)]
    pub stages: Vec<StageSpec>,
    #[serde(default)]
    pub on_error: OnError,
    /// Ship B logs (before images) too, so the replica can restore on its own.
    #[serde(default = "yes")]
    pub b_log: bool,
    /// A mutual link (SPEC F4): how the target resolves concurrent writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<ConflictSpec>,
    /// A PostgreSQL target: create the tables the row mapping names when they are
    /// missing (columns it names are always added; none is dropped or retyped).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_tables: bool,
}

impl Default for LinkOptions {
    /// What a request that names none of them gets.
    fn default() -> Self {
        LinkOptions {
            mode: Mode::default(),
            apply: Apply::default(),
            stages: Vec::new(),
            on_error: OnError::default(),
            b_log: true,
            conflicts: None,
            create_tables: false,
        }
    }
}

fn yes() -> bool {
    true
}

/// A link as the source keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkDef {
    pub id: String,
    pub tenant: String,
    pub spec: LinkSpec,
    /// The per-link secret (never shown).
    pub credential: String,
    /// The token for the target's API given at creation (never shown).
    #[serde(default)]
    pub target_token: Option<String>,
    /// A PostgreSQL target's connection string with its password (never shown; the
    /// spec keeps it masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    pub created_ms: u64,
    pub paused: bool,
}

/// What the source sends the target's API to register a replica.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaRequest {
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub database: String,
    /// The source database's name (interrelation finds a replica by it).
    #[serde(default)]
    pub source_database: String,
    /// The source database's definition: bootstrap creates the target with it.
    pub spec: DatabaseSpec,
    pub credential: String,
    pub source_node: String,
    pub apply: Apply,
    /// See [`TargetSpec::resync`].
    #[serde(default)]
    pub resync: bool,
    /// A mutual link: the target stays writable and resolves conflicts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<ConflictSpec>,
}

/// A replica as the target keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaReg {
    pub link: String,
    pub tenant: String,
    pub database: String,
    /// SHA-256 of the credential, hex.
    pub credential_sha256: String,
    pub source_node: String,
    /// The source database's name.
    #[serde(default)]
    pub source_database: String,
    /// The source stream this replica follows (0: none yet).
    pub stream: u64,
    /// Detached: what arrives is spooled, not applied.
    #[serde(default)]
    pub suspended: bool,
    pub apply: Apply,
    pub created_ms: u64,
    /// A mutual link's conflict handling (the database stays writable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<ConflictSpec>,
}

/// The state a link is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Connecting,
    Bootstrapping,
    Streaming,
    /// The replica is detached: it stores what it receives and applies nothing.
    Suspended,
    Paused,
    /// Disconnected after an error; it retries.
    Retrying,
    /// Stopped by its error policy until resumed.
    Stopped,
}

/// A link's live figures.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LinkStatus {
    pub state: LinkState,
    /// Highest serial sent.
    pub sent_serial: u64,
    /// Highest serial the replica confirmed.
    pub acked_serial: u64,
    /// The source database's last serial.
    pub source_serial: u64,
    pub lag_entries: u64,
    pub lag_ms: u64,
    /// Entries confirmed per second, over the last few seconds.
    pub throughput: f64,
    pub bootstraps: u64,
    pub connections: u64,
    /// Sessions that continued a replica which followed another source (a failover's
    /// re-pointed follower, a returning old primary) by serial, without a snapshot,
    /// because its log was a prefix of this one (`transport::history`).
    pub resumed_by_serial: u64,
    /// The serial the last session continued the replica from (None: a snapshot).
    pub started_at: Option<u64>,
    /// Entries the replica held beyond the source's history and discarded (a diverged
    /// tail), over the link's life.
    pub discarded_entries: u64,
    /// Bytes written to the replica since the node started (frames, snapshots).
    pub bytes_sent: u64,
    /// Records the stages rejected and the link quarantined.
    pub quarantined: u64,
    /// Transactions shipped with interrelation information (SPEC D1).
    pub interrelated: u64,
    /// Seconds spent in the link's plugin stages.
    pub plugin_seconds: f64,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
}

impl Default for LinkStatus {
    fn default() -> Self {
        LinkStatus {
            state: LinkState::Connecting,
            sent_serial: 0,
            acked_serial: 0,
            source_serial: 0,
            lag_entries: 0,
            lag_ms: 0,
            throughput: 0.0,
            bootstraps: 0,
            connections: 0,
            resumed_by_serial: 0,
            started_at: None,
            discarded_entries: 0,
            bytes_sent: 0,
            quarantined: 0,
            interrelated: 0,
            plugin_seconds: 0.0,
            last_error: None,
            last_error_ms: None,
        }
    }
}

/// A PostgreSQL connection string with its password replaced by `***`: the URL form
/// (`postgresql://user:secret@host/db`, `?password=secret`) and the key-value form
/// (`host=h password=secret`).
pub fn mask_password(conn: &str) -> String {
    let mut out = conn.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    // `password=...` as a query parameter or a key-value pair, wherever it is.
    let mut from = 0;
    while let Some(i) = out[from..].find("password=") {
        let start = from + i + "password=".len();
        let boundary = from + i == 0 || matches!(out.as_bytes()[from + i - 1], b'?' | b'&' | b' ');
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |j| start + j);
        if boundary && end > start {
            out.replace_range(start..end, "***");
            from = start + 3;
        } else {
            from = start;
        }
    }
    out
}

/// SHA-256 of a credential, hex.
pub fn credential_hash(credential: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(credential.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A fresh random secret (32 bytes from the OS, hex).
pub fn random_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_spec_takes_defaults_and_refuses_unknown_fields() {
        let spec: LinkSpec = serde_json::from_str(
            r#"{"database": "shop", "target": {"url": "http://x", "database": "shop"}}"#,
        )
        .unwrap();
        assert_eq!(
            (spec.options.mode, spec.options.apply, spec.options.on_error),
            (Mode::Async, Apply::Mirror, OnError::Stop)
        );
        assert!(spec.options.b_log);
        let err = serde_json::from_str::<LinkSpec>(
            r#"{"database": "shop", "target": {"url": "http://x", "database": "shop"}, "mdoe": "sync"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn the_target_token_is_never_serialised() {
        let target = TargetSpec {
            url: "http://x".into(),
            database: "d".into(),
            token: Some("secret-token".into()),
            replication: None,
            resync: false,
            postgres: None,
            schema: None,
        };
        assert!(!serde_json::to_string(&target)
            .unwrap()
            .contains("secret-token"));
    }

    #[test]
    fn a_postgres_password_is_masked_in_every_form() {
        let cases = [
            (
                "postgresql://doppel:s3cret@127.0.0.1:5432/shop",
                "postgresql://doppel:***@127.0.0.1:5432/shop",
            ),
            (
                "postgres://u:p@ss@h/db?sslmode=disable",
                "postgres://u:***@h/db?sslmode=disable",
            ),
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            (
                "postgresql://h/db?user=u&password=s3cret&x=1",
                "postgresql://h/db?user=u&password=***&x=1",
            ),
            (
                "host=h user=u password=s3cret dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
        ];
        for (conn, want) in cases {
            assert_eq!(mask_password(conn), want, "{conn}");
        }
    }

    #[test]
    fn credentials_compare_by_hash() {
        let c = random_secret().unwrap();
        assert_eq!(c.len(), 64);
        assert!(constant_time_eq(&credential_hash(&c), &credential_hash(&c)));
        assert!(!constant_time_eq(
            &credential_hash(&c),
            &credential_hash("other")
        ));
    }
}
