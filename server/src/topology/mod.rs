//! Topology documents (SPEC F6): nodes, databases and the links between them, declared in
//! one JSON document per tenant and name, validated, planned and applied.
//!
//! A document names its nodes by API URL and lists links `from {node, database}` →
//! `to {node, database}` (or `to {postgres, schema}`: a PostgreSQL target, [`LinkTarget`])
//! with the link's mode, apply form, stages, error policy and B-log choice. Applying it
//! on any node:
//! 1. validates it locally ([`validate`]): known nodes, no link from a database to
//!    itself, one link per target database, no cycle of ordinary links (updates would
//!    loop). Mutual links (with `conflicts`, SPEC F4) may form cycles: a mutual link
//!    ships only the writes made on its own node, so they come in full meshes (every
//!    pair of sites linked both ways), and a mutual database takes no other logical
//!    link in;
//! 2. plans against what this topology applied before ([`plan`]): each link is kept,
//!    created, has its stages swapped, is replaced (mode, apply form, policy or B log
//!    changed) or deleted; a link someone deleted behind the topology's back is
//!    created again;
//! 3. asks each source node to check the links to create (`POST …/links?dry_run=true`:
//!    the source database exists, the stages load with their configs and fit the apply
//!    form), so a problem is reported on the part of the document it concerns;
//! 4. unless it is a dry run, carries the plan out through the nodes' REST APIs with
//!    the caller's own token, and stores the document with the ids of its links (sled
//!    `config` tree, `topology/{tenant}/{name}`).
//!
//! Only the differences change: a link that is kept is not touched, so its stream goes
//! on. A failure part way stores what was done, so applying again finishes the job.
//!
//! A document's `quorum` list gives each primary its synchronous quorum (`k`,
//! `timeout_ms`), set on its node after the links with the number of synchronous links
//! it has. A failover ([`Topologies::failover`]) moves it to the promoted database,
//! which takes it before its first write, and stores a [`FailoverRecord`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::node::{self, Node};
use crate::remote::{Client, RemoteError};
use crate::transport::links::{mask_password, Apply, LinkOptions, LinkSpec, Mode, TargetSpec};
use crate::txn::clock::wall_ms;

const PREFIX: &str = "topology/";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a chained link waits for its source database to be created upstream.
const CHAIN_WAIT: Duration = Duration::from_secs(30);

/// A topology document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub name: String,
    /// Node name → where its API is.
    pub nodes: BTreeMap<String, NodeRef>,
    #[serde(default)]
    pub links: Vec<LinkDoc>,
    /// The synchronous quorum of each replicated database, applied to its primary (the
    /// source of its synchronous links), and after a failover to the promoted one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quorum: Vec<QuorumDoc>,
    /// What an automatic failover (in a cluster, `crate::cluster`) may promote.
    #[serde(default, skip_serializing_if = "FailoverPolicy::is_default")]
    pub failover: FailoverPolicy,
}

/// Which replicas an automatic failover may promote.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverPolicy {
    /// Only a synchronous standby, chosen so that no acknowledged write is lost.
    #[default]
    SyncOnly,
    /// Also an asynchronous replica (the most advanced of the live ones): writes it had
    /// not received are lost, and the failover record says how many it knew of.
    AsyncAllowed,
}

impl FailoverPolicy {
    fn is_default(&self) -> bool {
        *self == FailoverPolicy::SyncOnly
    }
}

/// The quorum of one replicated database: a commit on its primary waits until `k` of
/// its synchronous links confirmed it, at most `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuorumDoc {
    /// The primary: a node of the document and its database.
    pub node: String,
    pub database: String,
    pub k: usize,
    #[serde(default = "default_quorum_timeout")]
    pub timeout_ms: u64,
}

fn default_quorum_timeout() -> u64 {
    node::quorum::DEFAULT_TIMEOUT_MS
}

impl QuorumDoc {
    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            node: self.node.clone(),
            database: self.database.clone(),
        }
    }
}

impl Topology {
    /// The document as answers show it: every PostgreSQL password masked.
    pub fn masked(&self) -> Topology {
        let mut doc = self.clone();
        for l in &mut doc.links {
            l.to = l.to.masked();
        }
        doc
    }

    /// The synchronous links from `from`.
    pub(crate) fn sync_links_from(&self, from: &Endpoint) -> usize {
        self.links
            .iter()
            .filter(|l| &l.from == from && l.options.mode == Mode::Sync)
            .count()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRef {
    /// The node's API, `http://host:port`.
    pub url: String,
    /// Where links to this node connect instead of the replication address it
    /// advertises (a proxy, an address translated on the way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<String>,
}

#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub node: String,
    pub database: String,
}

/// Where a link of a document goes: a database on one of its nodes
/// (`{"node", "database"}`), or a schema of a PostgreSQL database (SPEC G9,
/// `{"postgres": conn, "schema": s}`, applied by the source node: see
/// `transport::postgres`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "TargetFields", into = "TargetFields")]
pub enum LinkTarget {
    Node(Endpoint),
    Postgres(PostgresTarget),
}

/// One of the two forms, each with its own fields only, as [`TargetFields`] reads them.
impl schemars::JsonSchema for LinkTarget {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LinkTarget".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let node = generator.subschema_for::<Endpoint>();
        schemars::json_schema!({
            "description": "A database on one of the document's nodes, or a schema of a PostgreSQL database.",
            "oneOf": [
                node,
                {
                    "type": "object",
                    "properties": {
                        "postgres": {"type": "string", "description": "A connection string; answers show its password masked."},
                        "schema": {"type": ["string", "null"], "description": "`public` when not given."}
                    },
                    "required": ["postgres"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// A PostgreSQL target of a document's link. The stored document keeps the connection
/// string with its password (a link made again, or re-pointed by a failover, needs
/// it); every answer shows it masked ([`Topology::masked`]), and a document sent back
/// with the masked string keeps the stored password ([`keep_passwords`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PostgresTarget {
    pub postgres: String,
    /// `public` when not given.
    pub schema: Option<String>,
}

impl PostgresTarget {
    fn schema(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }

    /// How labels and people name it: the masked connection string and the schema.
    pub fn shown(&self) -> String {
        format!("{} ({})", mask_password(&self.postgres), self.schema())
    }

    fn same(&self, other: &PostgresTarget) -> bool {
        self.postgres == other.postgres && self.schema() == other.schema()
    }
}

/// A link target as JSON has it: the fields of either form (`node` and `database`, or
/// `postgres` and an optional `schema`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    postgres: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<String>,
}

impl TryFrom<TargetFields> for LinkTarget {
    type Error = String;

    fn try_from(f: TargetFields) -> Result<LinkTarget, String> {
        match f {
            TargetFields {
                node: Some(node),
                database: Some(database),
                postgres: None,
                schema: None,
            } => Ok(LinkTarget::Node(Endpoint { node, database })),
            TargetFields {
                node: None,
                database: None,
                postgres: Some(postgres),
                schema,
            } => Ok(LinkTarget::Postgres(PostgresTarget { postgres, schema })),
            _ => Err(
                "a link goes to a node's database ({\"node\", \"database\"}) or to \
                      PostgreSQL ({\"postgres\": connection string, \"schema\"}), with \
                      the fields of one of them only"
                    .into(),
            ),
        }
    }
}

impl From<LinkTarget> for TargetFields {
    fn from(t: LinkTarget) -> TargetFields {
        match t {
            LinkTarget::Node(e) => TargetFields {
                node: Some(e.node),
                database: Some(e.database),
                postgres: None,
                schema: None,
            },
            LinkTarget::Postgres(p) => TargetFields {
                node: None,
                database: None,
                postgres: Some(p.postgres),
                schema: p.schema,
            },
        }
    }
}

impl LinkTarget {
    /// The node's database, for a target that is one.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        match self {
            LinkTarget::Node(e) => Some(e),
            LinkTarget::Postgres(_) => None,
        }
    }

    /// As answers show it: a PostgreSQL password masked.
    pub fn masked(&self) -> LinkTarget {
        match self {
            LinkTarget::Postgres(p) => LinkTarget::Postgres(PostgresTarget {
                postgres: mask_password(&p.postgres),
                schema: p.schema.clone(),
            }),
            other => other.clone(),
        }
    }
}

impl PartialEq<Endpoint> for LinkTarget {
    fn eq(&self, other: &Endpoint) -> bool {
        self.endpoint() == Some(other)
    }
}

/// One link of a topology: its two ends, and how it replicates
/// ([`LinkOptions`], flat in the JSON, as in a link request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkDoc {
    pub from: Endpoint,
    pub to: LinkTarget,
    /// The target may hold other data or follow another source: the link takes it over,
    /// by serial where the logs' histories allow, else from a snapshot (set by a
    /// failover for re-pointed links and the old primary).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
    #[serde(flatten)]
    pub options: LinkOptions,
}

impl LinkDoc {
    /// How the plan and the stored state name the link.
    pub fn label(&self) -> String {
        match &self.to {
            LinkTarget::Node(to) => format!(
                "{}/{} -> {}/{}",
                self.from.node, self.from.database, to.node, to.database
            ),
            LinkTarget::Postgres(p) => {
                format!("{}/{} -> {}", self.from.node, self.from.database, p.shown())
            }
        }
    }

    /// The link as its source node's API takes it. A PostgreSQL link has no resync:
    /// re-pointed by a failover, it continues from its own position or bootstraps
    /// (`transport::postgres`).
    pub(crate) fn spec(&self, doc: &Topology) -> LinkSpec {
        let target = match &self.to {
            LinkTarget::Node(to) => {
                let node = &doc.nodes[&to.node];
                TargetSpec {
                    url: node.url.trim_end_matches('/').to_string(),
                    database: to.database.clone(),
                    token: None,
                    replication: node.replication.clone(),
                    resync: self.resync,
                    postgres: None,
                    schema: None,
                }
            }
            LinkTarget::Postgres(p) => TargetSpec {
                url: String::new(),
                database: String::new(),
                token: None,
                replication: None,
                // A failover's re-pointed link takes over the old one's position
                // (`transport::postgres`).
                resync: self.resync,
                postgres: Some(p.postgres.clone()),
                schema: p.schema.clone(),
            },
        };
        LinkSpec {
            database: self.from.database.clone(),
            target,
            options: self.options.clone(),
        }
    }

    /// Whether another link of `doc` creates this link's source database (a chain).
    fn fed(&self, doc: &Topology) -> bool {
        doc.links.iter().any(|l| l.to == self.from)
    }

    /// What differs from `old` that only a new link can change (None: nothing).
    fn replaced_because(&self, old: &LinkDoc) -> Option<String> {
        let mut what = Vec::new();
        if self.options.mode != old.options.mode {
            what.push("mode");
        }
        if self.options.apply != old.options.apply {
            what.push("apply");
        }
        if self.options.on_error != old.options.on_error {
            what.push("on_error");
        }
        if self.options.b_log != old.options.b_log {
            what.push("b_log");
        }
        if self.options.conflicts != old.options.conflicts {
            what.push("conflicts");
        }
        if self.options.create_tables != old.options.create_tables {
            what.push("create_tables");
        }
        if let (LinkTarget::Postgres(new), LinkTarget::Postgres(was)) = (&self.to, &old.to) {
            if !new.same(was) {
                what.push("the PostgreSQL connection");
            }
        }
        (!what.is_empty()).then(|| format!("{} changed", what.join(", ")))
    }
}

/// A problem with a document, at the part it concerns (`links[2].to`, `nodes.b`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        path: path.into(),
        message: message.into(),
    }
}

/// A document sent back as it was shown keeps the stored PostgreSQL passwords: a
/// link's connection string that carries none and reads as the stored one of the same
/// link masked takes the stored string back (as a link credential, the password is
/// given once and never has to be shown again).
pub fn keep_passwords(doc: &mut Topology, stored: &Topology) {
    for l in &mut doc.links {
        let label = l.label();
        let LinkTarget::Postgres(p) = &mut l.to else {
            continue;
        };
        if mask_password(&p.postgres) != p.postgres {
            continue;
        }
        let old = stored
            .links
            .iter()
            .find(|o| o.label() == label)
            .map(|o| &o.to);
        if let Some(LinkTarget::Postgres(old)) = old {
            if mask_password(&old.postgres) == p.postgres {
                p.postgres = old.postgres.clone();
            }
        }
    }
}

/// The checks that need no other node.
pub fn validate(doc: &Topology) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Err(e) = node::check_name("topology", &doc.name) {
        out.push(problem("name", e.to_string()));
    }
    if doc.nodes.is_empty() {
        out.push(problem("nodes", "declare at least one node"));
    }
    for (name, n) in &doc.nodes {
        if name.is_empty() {
            out.push(problem("nodes", "a node name is empty"));
        }
        if !n.url.starts_with("http://") {
            out.push(problem(
                format!("nodes.{name}.url"),
                format!("'{}' is not the node's API as http://host:port", n.url),
            ));
        }
    }
    // A target database follows one source, unless every link into it is logical
    // (many-to-one consolidation, SPEC F2).
    let mut targets: BTreeMap<&Endpoint, usize> = BTreeMap::new();
    let consolidated = |to: &Endpoint| {
        doc.links
            .iter()
            .filter(|l| &l.to == to)
            .all(|l| l.options.apply == Apply::Logical)
    };
    for (i, l) in doc.links.iter().enumerate() {
        let to = match &l.to {
            LinkTarget::Node(to) => to,
            LinkTarget::Postgres(_) => {
                out.extend(check_postgres(doc, i));
                continue;
            }
        };
        for (side, end) in [("from", &l.from), ("to", to)] {
            if !doc.nodes.contains_key(&end.node) {
                out.push(problem(
                    format!("links[{i}].{side}.node"),
                    format!(
                        "unknown node '{}'; the document declares {}",
                        end.node,
                        names(doc.nodes.keys())
                    ),
                ));
            }
            if let Err(e) = node::check_name("database", &end.database) {
                out.push(problem(
                    format!("links[{i}].{side}.database"),
                    e.to_string(),
                ));
            }
        }
        if l.from == *to {
            out.push(problem(
                format!("links[{i}]"),
                "a link cannot copy a database onto itself",
            ));
        }
        if let Some(first) = targets.insert(to, i).filter(|_| !consolidated(to)) {
            out.push(problem(
                format!("links[{i}].to"),
                format!(
                    "database '{}' on node '{}' is already the target of links[{first}]; a \
                     mirror follows one source (several sources consolidate into one \
                     database through logical links, with a namespace transform each)",
                    to.database, to.node
                ),
            ));
        }
    }
    out.extend(check_mutual(doc));
    out.extend(check_quorum(doc));
    // A PostgreSQL target sends nothing on: it closes no cycle.
    let ordinary: Vec<LinkDoc> = doc
        .links
        .iter()
        .filter(|l| l.options.conflicts.is_none() && l.to.endpoint().is_some())
        .cloned()
        .collect();
    if let Some((i, cycle)) = find_cycle(&ordinary) {
        let i = doc
            .links
            .iter()
            .position(|l| *l == ordinary[i])
            .unwrap_or(i);
        out.push(problem(
            format!("links[{i}]"),
            format!(
                "closes the cycle {cycle}: updates would go round it forever (links \
                 that write both ways are mutual links: give each \"conflicts\")"
            ),
        ));
    }
    out
}

/// A link into PostgreSQL: its source node is declared, and its source node would take
/// it (`transport::postgres::check_spec`: the connection string parses, a logical async
/// link with a row-mapping stage, a plain schema name).
fn check_postgres(doc: &Topology, i: usize) -> Vec<Problem> {
    let l = &doc.links[i];
    let mut out = Vec::new();
    if !doc.nodes.contains_key(&l.from.node) {
        out.push(problem(
            format!("links[{i}].from.node"),
            format!(
                "unknown node '{}'; the document declares {}",
                l.from.node,
                names(doc.nodes.keys())
            ),
        ));
        return out;
    }
    if let Err(e) = node::check_name("database", &l.from.database) {
        out.push(problem(format!("links[{i}].from.database"), e.to_string()));
    }
    if let Err(e) = crate::transport::postgres::check_spec(&l.spec(doc)) {
        let message = match e {
            node::Error::Malformed(m) => m,
            other => other.to_string(),
        };
        out.push(problem(format!("links[{i}].to"), message));
    }
    out
}

/// Each quorum names a primary of the document once, with at least `k` synchronous
/// links, and a wait of 1 ms to 10 minutes.
fn check_quorum(doc: &Topology) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, q) in doc.quorum.iter().enumerate() {
        if !doc.nodes.contains_key(&q.node) {
            out.push(problem(
                format!("quorum[{i}].node"),
                format!(
                    "unknown node '{}'; the document declares {}",
                    q.node,
                    names(doc.nodes.keys())
                ),
            ));
        }
        if !seen.insert(q.endpoint()) {
            out.push(problem(
                format!("quorum[{i}]"),
                format!(
                    "database '{}' on node '{}' has a quorum already",
                    q.database, q.node
                ),
            ));
        }
        let sync = doc.sync_links_from(&q.endpoint());
        if q.k == 0 {
            out.push(problem(format!("quorum[{i}].k"), "k must be at least 1"));
        } else if q.k > sync {
            out.push(problem(
                format!("quorum[{i}].k"),
                format!(
                    "k = {} but database '{}' on node '{}' is the source of {sync} \
                     synchronous link(s)",
                    q.k, q.database, q.node
                ),
            ));
        }
        if q.timeout_ms == 0 || q.timeout_ms > 600_000 {
            out.push(problem(
                format!("quorum[{i}].timeout_ms"),
                "timeout_ms must be between 1 and 600000",
            ));
        }
    }
    out
}

/// Mutual links (SPEC F4) ship only the writes of their own node, so every pair of a
/// mutual group must be linked both ways; and a database written through mutual
/// links takes no ordinary logical link in (its writes would carry no version).
fn check_mutual(doc: &Topology) -> Vec<Problem> {
    let mut out = Vec::new();
    let mutual = |from: &Endpoint, to: &Endpoint| {
        doc.links
            .iter()
            .any(|l| l.options.conflicts.is_some() && &l.from == from && &l.to == to)
    };
    for (i, l) in doc.links.iter().enumerate() {
        // A PostgreSQL target is never mutual (`check_postgres`).
        let Some(to) = l.to.endpoint() else {
            continue;
        };
        if l.options.conflicts.is_none() {
            let into_mutual = doc
                .links
                .iter()
                .any(|m| m.options.conflicts.is_some() && (m.to == *to || m.from == *to));
            if into_mutual && l.options.apply == Apply::Logical {
                out.push(problem(
                    format!("links[{i}]"),
                    format!(
                        "database '{}' on node '{}' is written through mutual links; a \
                         logical link into it must be mutual too (give it \"conflicts\")",
                        to.database, to.node
                    ),
                ));
            }
            continue;
        }
        if l.options.apply != Apply::Logical {
            out.push(problem(
                format!("links[{i}].apply"),
                "a mutual link applies by key: give \"apply\": \"logical\"",
            ));
        }
        if !mutual(to, &l.from) {
            out.push(problem(
                format!("links[{i}]"),
                format!(
                    "a mutual link needs its way back: add a mutual link {}/{} -> {}/{}",
                    to.node, to.database, l.from.node, l.from.database
                ),
            ));
        }
        // Full mesh: whoever this link's target sends to, this link's source must
        // send to as well, since the target forwards nothing it did not write.
        for m_to in doc
            .links
            .iter()
            .filter(|m| m.options.conflicts.is_some() && m.from == *to)
            .filter_map(|m| m.to.endpoint())
        {
            if *m_to != l.from && !mutual(&l.from, m_to) {
                out.push(problem(
                    format!("links[{i}]"),
                    format!(
                        "mutual sites form a full mesh (each ships only its own writes): \
                         add a mutual link {}/{} -> {}/{}",
                        l.from.node, l.from.database, m_to.node, m_to.database
                    ),
                ));
            }
        }
    }
    out
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<String> = it.map(|n| format!("'{n}'")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The first link (by index) that closes a cycle, with the cycle spelled out.
fn find_cycle(links: &[LinkDoc]) -> Option<(usize, String)> {
    // Add links one by one; a link closes a cycle when its target already reaches its
    // source through the links before it.
    for (i, l) in links.iter().enumerate() {
        let Some(to) = l.to.endpoint() else {
            continue;
        };
        let mut path = vec![to];
        if let Some(found) = reach(&links[..i], to, &l.from, &mut path, &mut BTreeSet::new()) {
            let mut names: Vec<String> = std::iter::once(&l.from)
                .chain(found.iter().copied())
                .map(|e| format!("{}/{}", e.node, e.database))
                .collect();
            names.dedup();
            return Some((i, names.join(" -> ")));
        }
    }
    None
}

fn reach<'a>(
    links: &'a [LinkDoc],
    at: &'a Endpoint,
    goal: &Endpoint,
    path: &mut Vec<&'a Endpoint>,
    seen: &mut BTreeSet<&'a Endpoint>,
) -> Option<Vec<&'a Endpoint>> {
    if at == goal {
        return Some(path.clone());
    }
    if !seen.insert(at) {
        return None;
    }
    for to in links
        .iter()
        .filter(|l| &l.from == at)
        .filter_map(|l| l.to.endpoint())
    {
        path.push(to);
        if let Some(found) = reach(links, to, goal, path, seen) {
            return Some(found);
        }
        path.pop();
    }
    None
}

/// A link this topology created, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// The source node's name in the document.
    pub node: String,
    /// The link's id on its source node.
    pub id: String,
    pub link: LinkDoc,
}

/// The document after a failover from `old` to `to`: the old primary's links come from
/// the promoted database, the link between them turns round (async: a node that is
/// down must not hold the new primary's commits; make it sync again once it has caught
/// up), and the old primary's quorum moves to the promoted one, `k` capped at its
/// synchronous links (dropped when it has none).
pub(crate) fn after_failover(doc: &Topology, old: &Endpoint, to: &Endpoint) -> Topology {
    let mut next = doc.clone();
    next.links = doc
        .links
        .iter()
        .map(|l| {
            if &l.from == old && &l.to == to {
                LinkDoc {
                    from: to.clone(),
                    to: LinkTarget::Node(old.clone()),
                    resync: true,
                    options: LinkOptions {
                        mode: Mode::Async,
                        ..l.options.clone()
                    },
                }
            } else if &l.from == old {
                LinkDoc {
                    from: to.clone(),
                    resync: true,
                    ..l.clone()
                }
            } else {
                l.clone()
            }
        })
        .collect();
    let sync = next.sync_links_from(to);
    next.quorum = doc
        .quorum
        .iter()
        .filter(|q| q.endpoint() != *to)
        .filter_map(|q| {
            if q.endpoint() != *old {
                return Some(q.clone());
            }
            (sync > 0).then(|| QuorumDoc {
                node: to.node.clone(),
                database: to.database.clone(),
                k: q.k.min(sync),
                timeout_ms: q.timeout_ms,
            })
        })
        .collect();
    next
}

/// What is stored per topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub doc: Topology,
    /// Label → the live link.
    pub links: BTreeMap<String, Applied>,
    pub applied_ms: u64,
    /// Links to delete whose node did not answer (an old primary that is down): the
    /// next apply deletes them.
    #[serde(default)]
    pub stale: Vec<Applied>,
    /// The last failover of this topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverRecord>,
}

/// What a failover did: who was promoted, at which serial, the epoch its log opened
/// (`transport::history`). `GET` of the topology adds each follower's live figures.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FailoverRecord {
    pub promoted: Endpoint,
    pub old_primary: Endpoint,
    /// The promoted database's last serial when it was promoted: its followers keep
    /// what they hold up to it and discard what they hold beyond.
    pub serial: u64,
    pub epoch: u64,
    pub at_ms: u64,
    /// The failover call's duration (promotion and re-pointing).
    pub took_ms: u64,
}

/// What a plan's step does.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
enum StepAction {
    Keep,
    Create,
    UpdateStages,
    Replace,
    Delete,
}

/// A topology as `GET …/topologies` lists it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Summary {
    pub name: String,
    /// Its nodes.
    pub nodes: usize,
    /// Its links.
    pub links: usize,
    /// When it was last applied (a node's own topologies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_ms: Option<u64>,
    /// Its revision (a cluster's topologies, kept in etcd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// A document applied, or checked with `?dry_run=true`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ApplyAnswer {
    /// Nothing was changed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    pub name: String,
    /// What was (or would be) done, link by link (a node's own topologies; in a
    /// cluster each member carries out its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<Step>")]
    pub plan: Option<Vec<Step>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_ms: Option<u64>,
    /// The revision stored (in a cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Kept by the cluster (etcd) rather than this node.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
}

/// A topology as `GET …/topologies/{name}` shows it: its document and the live state
/// of each of its links.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Shown {
    pub name: String,
    /// The document, PostgreSQL passwords masked.
    pub document: Topology,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_ms: Option<u64>,
    /// Its revision (in a cluster: give it back to apply a change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Kept by the cluster (etcd).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// The last failover (`null`: none), with what each follower of the promoted
    /// database did.
    pub failover: Option<FailoverView>,
    pub links: Vec<LinkShown>,
    /// Links an apply or failover could not delete (their node was down), deleted by
    /// the next apply.
    pub stale: Vec<StaleLink>,
}

/// A link of a shown topology.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct LinkShown {
    /// `from → to` as the document names them.
    pub link: String,
    pub from: Endpoint,
    pub to: LinkTarget,
    pub mode: Mode,
    pub apply: Apply,
    pub stages: Vec<crate::transport::links::StageSpec>,
    /// The live link's id on its source node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its live state, as its source node shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::transport::links::LinkStatus>")]
    pub status: Option<Value>,
    /// Why there is no status (not applied, its node does not answer, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LinkShown {
    pub fn of(l: &LinkDoc) -> LinkShown {
        LinkShown {
            link: l.label(),
            from: l.from.clone(),
            to: l.to.masked(),
            mode: l.options.mode,
            apply: l.options.apply,
            stages: l.options.stages.clone(),
            id: None,
            status: None,
            error: None,
        }
    }
}

/// A link a topology could not delete yet.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StaleLink {
    pub link: String,
    /// Its source node.
    pub node: String,
    pub id: String,
}

/// The last failover of a shown topology.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FailoverView {
    #[serde(flatten)]
    pub record: FailoverRecord,
    pub followers: Vec<Follower>,
}

/// A follower of the promoted database after a failover: how it was continued (by
/// serial from `started_at`, or by snapshot), the entries of a diverged tail it
/// discarded, the bytes sent to it (`null` where its link's status is not known).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Follower {
    pub to: LinkTarget,
    pub link: String,
    #[schemars(with = "Option<crate::transport::links::LinkState>")]
    pub state: Value,
    pub bootstraps: Option<u64>,
    pub started_at: Option<u64>,
    pub resumed_by_serial: Option<u64>,
    pub discarded_entries: Option<u64>,
    pub bytes_sent: Option<u64>,
    pub error: Option<String>,
}

/// A failover done (`POST …/topologies/{name}/failover`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FailoverAnswer {
    /// What the promoted node answered.
    #[schemars(with = "crate::transport::target::Promoted")]
    pub promoted: Value,
    pub old_primary: Endpoint,
    /// The document after the failover, applied.
    pub applied: ApplyAnswer,
    pub failover: FailoverRecord,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Step {
    /// keep, create, update-stages, replace or delete.
    #[schemars(with = "StepAction")]
    pub action: &'static str,
    pub link: String,
    /// The source node.
    pub node: String,
    /// The live link's id (kept, updated, replaced or deleted links).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The link's index in the document (every action but delete).
    #[serde(skip)]
    pub index: Option<usize>,
}

/// How many links of `doc` lead to link `i`'s source (0 for a head): a chain's links are
/// created head first, so that each source database exists when its link is made.
fn depth(doc: &Topology, i: usize) -> usize {
    let mut at = &doc.links[i].from;
    let mut n = 0;
    while let Some(up) = doc.links.iter().find(|l| &l.to == at) {
        n += 1;
        at = &up.from;
        if n > doc.links.len() {
            break; // a cycle; validation refuses it
        }
    }
    n
}

/// Compare the document with what was applied; `exists(applied)` says whether a live
/// link is still there. Deletes come first (they free target databases), then links
/// in chain order.
pub fn plan(
    doc: &Topology,
    before: Option<&Stored>,
    mut exists: impl FnMut(&Applied) -> bool,
) -> Vec<Step> {
    let empty = BTreeMap::new();
    let old = before.map_or(&empty, |s| &s.links);
    let mut steps = Vec::new();
    let mut wanted = BTreeSet::new();
    for (i, l) in doc.links.iter().enumerate() {
        let label = l.label();
        wanted.insert(label.clone());
        let step = |action, id: Option<&String>, reason: Option<String>| Step {
            action,
            link: label.clone(),
            node: l.from.node.clone(),
            id: id.cloned(),
            reason,
            index: Some(i),
        };
        steps.push(match old.get(&label) {
            None => step("create", None, None),
            Some(a) if !exists(a) => step(
                "create",
                None,
                Some(format!("link {} is gone from its source node", a.id)),
            ),
            Some(a) => {
                // A target node that moved is another link.
                let moved = before.is_some_and(|b| {
                    let to_moved =
                        l.to.endpoint()
                            .is_some_and(|to| b.doc.nodes.get(&to.node) != doc.nodes.get(&to.node));
                    to_moved || b.doc.nodes.get(&l.from.node) != doc.nodes.get(&l.from.node)
                });
                match (moved, l.replaced_because(&a.link)) {
                    (true, _) => step(
                        "replace",
                        Some(&a.id),
                        Some("a node's address changed".into()),
                    ),
                    (false, Some(reason)) => step("replace", Some(&a.id), Some(reason)),
                    (false, None) if l.options.stages != a.link.options.stages => {
                        step("update-stages", Some(&a.id), None)
                    }
                    (false, None) => step("keep", Some(&a.id), None),
                }
            }
        });
    }
    let mut deletes: Vec<Step> = before
        .map(|b| b.stale.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|a| Step {
            action: "delete",
            link: a.link.label(),
            node: a.node.clone(),
            id: Some(a.id.clone()),
            reason: Some("left behind while its node was down".into()),
            index: None,
        })
        .collect();
    for (label, a) in old {
        if !wanted.contains(label) {
            deletes.push(Step {
                action: "delete",
                link: label.clone(),
                node: a.node.clone(),
                id: Some(a.id.clone()),
                reason: None,
                index: None,
            });
        }
    }
    steps.sort_by_key(|s| s.index.map_or(0, |i| depth(doc, i)));
    deletes.extend(steps);
    deletes
}

/// What a step leaves.
enum Outcome {
    Live(Applied),
    Gone,
    /// A link to delete whose node did not answer.
    Stale(Applied),
}

/// A stale link's description when neither document has it any more.
fn unknown_link(step: &Step) -> LinkDoc {
    let (from, to) = step.link.split_once(" -> ").unwrap_or((&step.link, ""));
    let end = |s: &str| {
        let (node, database) = s.split_once('/').unwrap_or((s, ""));
        Endpoint {
            node: node.to_string(),
            database: database.to_string(),
        }
    };
    LinkDoc {
        from: end(from),
        to: LinkTarget::Node(end(to)),
        resync: false,
        options: LinkOptions::default(),
    }
}

/// Why applying a topology failed.
#[derive(Debug)]
pub enum TopologyError {
    /// The document is wrong; nothing was changed.
    Invalid(Vec<Problem>),
    /// A step failed; the steps before it were carried out and are stored.
    Failed {
        detail: String,
        done: Vec<Step>,
    },
    Node(node::Error),
}

impl From<node::Error> for TopologyError {
    fn from(e: node::Error) -> Self {
        TopologyError::Node(e)
    }
}

/// A client for calls to the nodes' APIs (absolute URLs), with the caller's
/// authorization: a topology is carried out with the rights of whoever applies it.
fn caller(authorization: Option<String>) -> Client {
    Client::new("")
        .with_timeout(CALL_TIMEOUT)
        .with_authorization(authorization)
}

/// Wait (bounded) until a chained link's source database exists on its node: the link
/// into it creates it when its source registers the replica, as it first connects.
fn wait_for_database(
    tenant: &str,
    doc: &Topology,
    l: &LinkDoc,
    remote: &Client,
) -> Result<(), String> {
    let url = format!(
        "{}/v1/tenants/{tenant}/databases/{}",
        doc.nodes[&l.from.node].url.trim_end_matches('/'),
        l.from.database
    );
    let deadline = std::time::Instant::now() + CHAIN_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        match remote.call("GET", &url, None) {
            Ok(_) => return Ok(()),
            Err(RemoteError::NotFound { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(e) if e.is_unreachable() => return Err(e.to_string()),
            Err(e) => {
                return Err(format!(
                    "database '{}' on node '{}' did not appear (the link into it is not \
                     connected?): {}",
                    l.from.database,
                    l.from.node,
                    e.detail()
                ))
            }
        }
    }
}

/// The tenant's topologies, in the node's `config` tree.
pub struct Topologies {
    node: Arc<Node>,
}

impl Topologies {
    pub fn new(node: Arc<Node>) -> Topologies {
        Topologies { node }
    }

    fn key(tenant: &str, name: &str) -> String {
        format!("{PREFIX}{tenant}/{name}")
    }

    fn load(&self, tenant: &str, name: &str) -> Result<Option<Stored>, node::Error> {
        self.node
            .config_value(&Self::key(tenant, name))?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| node::Error::Unavailable(e.to_string()))
            })
            .transpose()
    }

    fn save(&self, tenant: &str, stored: &Stored) -> Result<(), node::Error> {
        let bytes =
            serde_json::to_vec(stored).map_err(|e| node::Error::Unavailable(e.to_string()))?;
        self.node
            .set_config_value(&Self::key(tenant, &stored.doc.name), &bytes)
    }

    /// The stored topology, or NotFound.
    pub fn get(&self, tenant: &str, name: &str) -> Result<Stored, node::Error> {
        self.load(tenant, name)?
            .ok_or_else(|| node::Error::NotFound(format!("topology '{name}'")))
    }

    /// The tenant's topologies: name, nodes, links and when they were applied.
    pub fn list(&self, tenant: &str) -> Result<Vec<Summary>, node::Error> {
        let prefix = format!("{PREFIX}{tenant}/");
        let mut out = Vec::new();
        for (_, v) in self.node.config_scan(&prefix)? {
            let s: Stored =
                serde_json::from_slice(&v).map_err(|e| node::Error::Unavailable(e.to_string()))?;
            out.push(Summary {
                name: s.doc.name,
                nodes: s.doc.nodes.len(),
                links: s.doc.links.len(),
                applied_ms: Some(s.applied_ms),
                revision: None,
            });
        }
        Ok(out)
    }

    /// Validate, plan and (unless `dry_run`) apply a document. Blocking: it calls the
    /// nodes' APIs.
    pub fn apply(
        &self,
        tenant: &str,
        doc: Topology,
        dry_run: bool,
        authorization: Option<String>,
    ) -> Result<ApplyAnswer, TopologyError> {
        let mut doc = doc;
        let before = self.load(tenant, &doc.name)?;
        if let Some(b) = &before {
            keep_passwords(&mut doc, &b.doc);
        }
        let problems = validate(&doc);
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(problems));
        }
        let remote = caller(authorization);
        // The primaries the stored document gave sync links to: their floor of expected
        // links follows what this document gives them.
        let old_primaries = before
            .as_ref()
            .map(|b| sync_sources(&b.doc))
            .unwrap_or_default();
        // Links to delete may be on nodes the new document no longer names.
        let mut urls: BTreeMap<String, String> = BTreeMap::new();
        for nodes in before.iter().map(|b| &b.doc.nodes).chain([&doc.nodes]) {
            for (name, n) in nodes {
                urls.insert(name.clone(), n.url.trim_end_matches('/').to_string());
            }
        }
        let link_url =
            |node: &str, rest: &str| format!("{}/v1/tenants/{tenant}/links{rest}", urls[node]);
        let mut problems = Vec::new();
        let steps = plan(&doc, before.as_ref(), |a| {
            let url = before
                .as_ref()
                .and_then(|b| b.doc.nodes.get(&a.node))
                .map(|n| {
                    format!(
                        "{}/v1/tenants/{tenant}/links/{}",
                        n.url.trim_end_matches('/'),
                        a.id
                    )
                });
            // Unreachable or unknown: assume it is there rather than doubling it.
            url.is_none_or(|u| {
                !matches!(
                    remote.call("GET", &u, None),
                    Err(RemoteError::NotFound { .. })
                )
            })
        });
        // Every node that has to act must answer, and every new link's target: a node
        // that is down is most likely a mistake. Not so for an old primary after a
        // failover: it only loses links (deleted when it is back) and is the target of
        // a resync link (which waits for it).
        let mut acting: BTreeSet<&str> = BTreeSet::new();
        for s in steps
            .iter()
            .filter(|s| !matches!(s.action, "keep" | "delete"))
        {
            acting.insert(s.node.as_str());
            if let Some(to) = s
                .index
                .map(|i| &doc.links[i])
                .filter(|l| !l.resync)
                .and_then(|l| l.to.endpoint())
            {
                acting.insert(to.node.as_str());
            }
        }
        // A primary whose quorum is set.
        for q in &doc.quorum {
            acting.insert(q.node.as_str());
        }
        for name in acting {
            let url = format!("{}/v1/node", urls[name]);
            match remote.call("GET", &url, None) {
                Ok(_) => {}
                Err(e) if e.is_unreachable() => {
                    problems.push(problem(format!("nodes.{name}"), e.to_string()))
                }
                Err(e) => problems.push(problem(
                    format!("nodes.{name}"),
                    format!("{url} answered: {}", e.detail()),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(problems));
        }
        // The source nodes check what is to be created (a stage swap is checked by the
        // swap itself: same loading path).
        for step in steps
            .iter()
            .filter(|s| matches!(s.action, "create" | "replace"))
        {
            let i = step.index.expect("a created link is in the document");
            let spec = serde_json::to_value(doc.links[i].spec(&doc)).expect("a spec is JSON");
            let query = if doc.links[i].fed(&doc) {
                "?dry_run=true&source_pending=true"
            } else {
                "?dry_run=true"
            };
            match remote.call("POST", &link_url(&step.node, query), Some(&spec)) {
                Ok(_) => {}
                // A replacement's old link still targets the database.
                Err(RemoteError::Conflict { .. }) if step.action == "replace" => {}
                Err(e) if e.is_unreachable() => {
                    problems.push(problem(format!("links[{i}]"), e.to_string()))
                }
                Err(e) => problems.push(problem(
                    format!("links[{i}]"),
                    format!("node '{}' refuses it: {}", step.node, e.detail()),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(problems));
        }
        if dry_run {
            return Ok(ApplyAnswer {
                dry_run: true,
                name: doc.name,
                plan: Some(steps),
                applied_ms: None,
                revision: None,
                cluster: false,
            });
        }
        let mut stored = Stored {
            doc: doc.clone(),
            links: BTreeMap::new(),
            applied_ms: wall_ms(),
            stale: Vec::new(),
            failover: before.as_ref().and_then(|b| b.failover.clone()),
        };
        let mut done = Vec::new();
        let old_links = before.map(|b| b.links).unwrap_or_default();
        for step in &steps {
            let result = self.carry_out(tenant, &doc, step, &old_links, &remote, &link_url);
            match result {
                Ok(Outcome::Live(applied)) => {
                    stored.links.insert(step.link.clone(), applied);
                }
                Ok(Outcome::Stale(applied)) => stored.stale.push(applied),
                Ok(Outcome::Gone) => {}
                Err(detail) => {
                    // Keep what is live: the old links not reached yet, the new ones made.
                    for later in steps.iter().skip(done.len()) {
                        if let Some(a) = old_links.get(&later.link) {
                            stored.links.entry(later.link.clone()).or_insert(a.clone());
                        }
                    }
                    self.save(tenant, &stored)?;
                    return Err(TopologyError::Failed {
                        detail: format!("{} {}: {detail}", step.action, step.link),
                        done,
                    });
                }
            }
            done.push(step.clone());
        }
        self.save(tenant, &stored)?;
        // Each primary's quorum, with the synchronous links it has now been given.
        for q in &doc.quorum {
            let url = format!(
                "{}/v1/tenants/{tenant}/databases/{}/quorum",
                urls[&q.node], q.database
            );
            let body = json!({"k": q.k, "timeout_ms": q.timeout_ms,
                              "sync_links": doc.sync_links_from(&q.endpoint())});
            if let Err(e) = remote.call("PUT", &url, Some(&body)) {
                return Err(TopologyError::Failed {
                    detail: format!("quorum of {}/{}: {}", q.node, q.database, e.detail()),
                    done,
                });
            }
        }
        let covered: BTreeSet<Endpoint> = doc.quorum.iter().map(|q| q.endpoint()).collect();
        for e in old_primaries.union(&sync_sources(&doc)) {
            if !covered.contains(e) {
                follow_sync_links(&remote, &urls, tenant, e, doc.sync_links_from(e));
            }
        }
        Ok(ApplyAnswer {
            dry_run: false,
            name: doc.name,
            plan: Some(steps),
            applied_ms: Some(stored.applied_ms),
            revision: None,
            cluster: false,
        })
    }

    /// One step, and the link it leaves.
    fn carry_out(
        &self,
        tenant: &str,
        doc: &Topology,
        step: &Step,
        old: &BTreeMap<String, Applied>,
        remote: &Client,
        link_url: &dyn Fn(&str, &str) -> String,
    ) -> Result<Outcome, String> {
        let said = |e: RemoteError| e.detail();
        let live = |id: String, i: usize| {
            Outcome::Live(Applied {
                node: step.node.clone(),
                id,
                link: doc.links[i].clone(),
            })
        };
        let old_id = || step.id.clone().ok_or("no live link to change");
        match step.action {
            "keep" => Ok(live(old_id()?, step.index.expect("in the document"))),
            "delete" => {
                let id = old_id()?;
                match remote.call("DELETE", &link_url(&step.node, &format!("/{id}")), None) {
                    Ok(_) | Err(RemoteError::NotFound { .. }) => Ok(Outcome::Gone),
                    // Its node is down: delete it when the node is back.
                    Err(e) if e.is_unreachable() => Ok(Outcome::Stale(Applied {
                        node: step.node.clone(),
                        id,
                        link: old
                            .get(&step.link)
                            .map(|a| a.link.clone())
                            .or_else(|| doc.links.iter().find(|l| l.label() == step.link).cloned())
                            .unwrap_or_else(|| unknown_link(step)),
                    })),
                    Err(e) => Err(said(e)),
                }
            }
            "update-stages" => {
                let i = step.index.expect("in the document");
                let id = old_id()?;
                let stages = serde_json::to_value(&doc.links[i].options.stages).expect("JSON");
                remote
                    .call(
                        "PUT",
                        &link_url(&step.node, &format!("/{id}/stages")),
                        Some(&stages),
                    )
                    .map_err(said)?;
                Ok(live(id, i))
            }
            _ => {
                if step.action == "replace" {
                    let id = old_id()?;
                    match remote.call("DELETE", &link_url(&step.node, &format!("/{id}")), None) {
                        Ok(_) | Err(RemoteError::NotFound { .. }) => {}
                        Err(e) => return Err(said(e)),
                    }
                }
                let i = step.index.expect("in the document");
                let l = &doc.links[i];
                if l.fed(doc) {
                    wait_for_database(tenant, doc, l, remote)?;
                }
                let spec = serde_json::to_value(l.spec(doc)).expect("JSON");
                let body = remote
                    .call("POST", &link_url(&step.node, ""), Some(&spec))
                    .map_err(said)?;
                let id = body["id"]
                    .as_str()
                    .ok_or("the source node answered without a link id")?
                    .to_string();
                Ok(live(id, i))
            }
        }
    }

    /// The document with the live state of each of its links (asked of its source
    /// node; `"status": null` and `"error"` when that node does not answer).
    pub fn show(
        &self,
        tenant: &str,
        name: &str,
        authorization: Option<String>,
    ) -> Result<Shown, node::Error> {
        let stored = self.get(tenant, name)?;
        let remote = caller(authorization);
        let mut links = Vec::new();
        for l in &stored.doc.links {
            let mut entry = LinkShown::of(l);
            match stored.links.get(&entry.link) {
                None => entry.error = Some("not applied".into()),
                Some(a) => {
                    entry.id = Some(a.id.clone());
                    let url = format!(
                        "{}/v1/tenants/{tenant}/links/{}",
                        stored.doc.nodes[&a.node].url.trim_end_matches('/'),
                        a.id
                    );
                    match remote.call("GET", &url, None) {
                        Ok(body) => entry.status = Some(body["status"].clone()),
                        Err(e) => entry.error = Some(e.detail()),
                    }
                }
            }
            links.push(entry);
        }
        // The last failover, with what each follower of the promoted database did: how
        // it was continued (by serial from `started_at`, or by snapshot), the entries of
        // a diverged tail it discarded, the bytes sent to it.
        let failover = stored.failover.as_ref().map(|f| {
            let followers: Vec<Follower> = stored
                .doc
                .links
                .iter()
                .zip(&links)
                .filter(|(l, _)| l.from == f.promoted)
                .map(|(l, entry)| {
                    let st = entry.status.clone().unwrap_or_default();
                    let n = |k: &str| st[k].as_u64();
                    Follower {
                        to: l.to.masked(),
                        link: entry.link.clone(),
                        state: st["state"].clone(),
                        bootstraps: n("bootstraps"),
                        started_at: n("started_at"),
                        resumed_by_serial: n("resumed_by_serial"),
                        discarded_entries: n("discarded_entries"),
                        bytes_sent: n("bytes_sent"),
                        error: entry.error.clone(),
                    }
                })
                .collect();
            FailoverView {
                record: f.clone(),
                followers,
            }
        });
        Ok(Shown {
            name: stored.doc.name.clone(),
            document: stored.doc.masked(),
            applied_ms: Some(stored.applied_ms),
            revision: None,
            cluster: false,
            failover,
            links,
            stale: stored
                .stale
                .iter()
                .map(|a| StaleLink {
                    link: a.link.label(),
                    node: a.node.clone(),
                    id: a.id.clone(),
                })
                .collect(),
        })
    }

    /// Fail over to a replica (SPEC G4): promote database `to` (the target of a link of
    /// this topology), then re-point: the links from the old primary to the other
    /// replicas come from the promoted one instead, and a new link from it makes the old
    /// primary a replica again (async) whenever it is back. The old primary's quorum
    /// moves to the promoted one (`k` capped at its synchronous links) and is in force
    /// before it takes a write, counting the links still to be made: a commit waits
    /// (within the quorum's timeout) until they are in place and confirmed it. Each
    /// re-pointed replica continues by serial where its log is a prefix of the promoted
    /// one's (`transport::history`). Links the old primary's node cannot delete while
    /// it is down stay as `stale` until the next apply. The failover record is stored
    /// with the topology. Blocking.
    pub fn failover(
        &self,
        tenant: &str,
        name: &str,
        to: Endpoint,
        force: bool,
        authorization: Option<String>,
    ) -> Result<FailoverAnswer, TopologyError> {
        let started = std::time::Instant::now();
        let stored = self.get(tenant, name)?;
        let doc = &stored.doc;
        let Some(old_link) = doc.links.iter().find(|l| l.to == to) else {
            return Err(TopologyError::Invalid(vec![problem(
                "database",
                format!(
                    "no link of topology '{name}' has {}/{} as its target: only a replica \
                     can be promoted",
                    to.node, to.database
                ),
            )]));
        };
        let old = old_link.from.clone();
        let remote = caller(authorization.clone());
        let Some(node) = doc.nodes.get(&to.node) else {
            return Err(TopologyError::Invalid(vec![problem(
                "node",
                format!("unknown node '{}'", to.node),
            )]));
        };
        let next = after_failover(doc, &old, &to);
        let problems = validate(&next);
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(problems));
        }
        let quorum = next.quorum.iter().find(|q| q.endpoint() == to).map(|q| {
            json!({"k": q.k, "timeout_ms": q.timeout_ms,
                   "sync_links": next.sync_links_from(&to)})
        });
        let url = format!(
            "{}/v1/tenants/{tenant}/databases/{}/promote",
            node.url.trim_end_matches('/'),
            to.database
        );
        // Without a quorum of its own, the promoted database still waits for its sync
        // links (k of them as it has it, its own timeout) before it acknowledges a write.
        let body = json!({"force": force, "quorum": quorum,
                          "sync_links": next.sync_links_from(&to)});
        let promoted = match remote.call("POST", &url, Some(&body)) {
            Ok(body) => body,
            Err(e) => {
                return Err(TopologyError::Failed {
                    detail: format!("promote {}/{}: {}", to.node, to.database, e.detail()),
                    done: Vec::new(),
                })
            }
        };
        let applied = self.apply(tenant, next, false, authorization)?;
        let record = FailoverRecord {
            promoted: to.clone(),
            old_primary: old.clone(),
            serial: promoted["serial"].as_u64().unwrap_or(0),
            epoch: promoted["epoch"].as_u64().unwrap_or(0),
            at_ms: wall_ms(),
            took_ms: started.elapsed().as_millis() as u64,
        };
        let mut now = self.get(tenant, name)?;
        now.failover = Some(record.clone());
        self.save(tenant, &now)?;
        Ok(FailoverAnswer {
            promoted,
            old_primary: old,
            applied,
            failover: record,
        })
    }

    /// Delete a topology and the links it made.
    pub fn delete(
        &self,
        tenant: &str,
        name: &str,
        authorization: Option<String>,
    ) -> Result<(), TopologyError> {
        let mut stored = self.get(tenant, name)?;
        let empty = Topology {
            name: stored.doc.name.clone(),
            nodes: stored.doc.nodes.clone(),
            links: Vec::new(),
            quorum: Vec::new(),
            failover: stored.doc.failover,
        };
        let remote = caller(authorization);
        let steps = plan(&empty, Some(&stored), |_| true);
        let link_url = |node: &str, rest: &str| {
            format!(
                "{}/v1/tenants/{tenant}/links{rest}",
                stored.doc.nodes[node].url.trim_end_matches('/')
            )
        };
        let old = stored.links.clone();
        let mut done = Vec::new();
        for step in &steps {
            if let Err(detail) = self.carry_out(tenant, &empty, step, &old, &remote, &link_url) {
                for d in &done {
                    let d: &Step = d;
                    stored.links.remove(&d.link);
                }
                self.save(tenant, &stored)?;
                return Err(TopologyError::Failed {
                    detail: format!("delete {}: {detail}", step.link),
                    done,
                });
            }
            done.push(step.clone());
        }
        let urls: BTreeMap<String, String> = stored
            .doc
            .nodes
            .iter()
            .map(|(n, r)| (n.clone(), r.url.trim_end_matches('/').to_string()))
            .collect();
        for e in sync_sources(&stored.doc) {
            follow_sync_links(&remote, &urls, tenant, &e, 0);
        }
        self.node.remove_config_value(&Self::key(tenant, name))?;
        Ok(())
    }
}

/// The databases of `doc` that are the source of a synchronous link.
fn sync_sources(doc: &Topology) -> BTreeSet<Endpoint> {
    doc.links
        .iter()
        .filter(|l| l.options.mode == Mode::Sync)
        .map(|l| l.from.clone())
        .collect()
}

/// Keep primary `e`'s `k` and timeout and set the sync links it waits for to `n` (a
/// database the topology no longer gives sync links must not wait for them). A node
/// that does not answer (an old primary that is down) is left as it is.
fn follow_sync_links(
    remote: &Client,
    urls: &BTreeMap<String, String>,
    tenant: &str,
    e: &Endpoint,
    n: usize,
) {
    let Some(base) = urls.get(&e.node) else {
        return;
    };
    let url = format!("{base}/v1/tenants/{tenant}/databases/{}/quorum", e.database);
    if let Ok(q) = remote.call("GET", &url, None) {
        if q["expected_links"].as_u64() != Some(n as u64) {
            let body = json!({"k": q["k"], "timeout_ms": q["timeout_ms"], "sync_links": n});
            let _ = remote.call("PUT", &url, Some(&body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::links::{ConflictSpec, OnError, StageSpec};

    fn doc(links: &[(&str, &str, &str, &str)]) -> Topology {
        let mut nodes = BTreeMap::new();
        for n in ["a", "b", "c"] {
            nodes.insert(
                n.to_string(),
                NodeRef {
                    url: format!("http://{n}:7070"),
                    replication: None,
                },
            );
        }
        Topology {
            name: "t".into(),
            nodes,
            links: links
                .iter()
                .map(|(fnode, fdb, tnode, tdb)| LinkDoc {
                    from: Endpoint {
                        node: fnode.to_string(),
                        database: fdb.to_string(),
                    },
                    to: LinkTarget::Node(Endpoint {
                        node: tnode.to_string(),
                        database: tdb.to_string(),
                    }),
                    resync: false,
                    options: LinkOptions {
                        mode: Mode::Async,
                        apply: Apply::Mirror,
                        on_error: OnError::Stop,
                        ..LinkOptions::default()
                    },
                })
                .collect(),
            quorum: Vec::new(),
            failover: FailoverPolicy::SyncOnly,
        }
    }

    #[test]
    fn a_documents_link_reads_its_options_flat_and_refuses_unknown_fields() {
        let nodes = json!({"a": {"url": "http://a:1"}, "b": {"url": "http://b:1"}});
        let link = json!({"from": {"node": "a", "database": "d"},
                          "to": {"node": "b", "database": "d"},
                          "mode": "sync", "b_log": false});
        let doc: Topology =
            serde_json::from_value(json!({"name": "t", "nodes": nodes, "links": [link]})).unwrap();
        let options = &doc.links[0].options;
        assert_eq!((options.mode, options.b_log), (Mode::Sync, false));
        // The request to the source node carries the same options, flat as well.
        let spec = serde_json::to_value(doc.links[0].spec(&doc)).unwrap();
        assert_eq!(
            (spec["mode"].clone(), spec["b_log"].clone()),
            (json!("sync"), json!(false))
        );
        assert_eq!(spec["target"]["url"], "http://b:1");
        let mut typo = link.clone();
        typo["on_eror"] = json!("stop");
        let err = serde_json::from_value::<Topology>(
            json!({"name": "t", "nodes": nodes, "links": [typo]}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `on_eror`"), "{err}");
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn a_chain_and_a_fan_out_are_valid() {
        let d = doc(&[
            ("a", "shop", "b", "shop"),
            ("b", "shop", "c", "shop"),
            ("a", "shop", "c", "copy"),
        ]);
        assert_eq!(validate(&d), vec![]);
    }

    #[test]
    fn problems_point_at_the_part_they_concern() {
        let mut d = doc(&[
            ("a", "shop", "x", "shop"),
            ("a", "shop", "b", "shop"),
            ("c", "shop", "b", "shop"),
            ("b", "s", "b", "s"),
        ]);
        d.nodes.get_mut("c").unwrap().url = "ftp://c".into();
        let p = validate(&d);
        assert_eq!(
            paths(&p),
            vec![
                "nodes.c.url",
                "links[0].to.node",
                "links[2].to",
                "links[3]",
                "links[3]"
            ],
            "{p:?}"
        );
        assert!(p[1].message.contains("unknown node 'x'"), "{p:?}");
        assert!(
            p[2].message.contains("already the target of links[1]"),
            "{p:?}"
        );
        assert!(p[3].message.contains("onto itself"), "{p:?}");
    }

    #[test]
    fn a_cycle_is_refused_at_the_link_that_closes_it() {
        let d = doc(&[
            ("a", "shop", "b", "shop"),
            ("b", "shop", "c", "shop"),
            ("c", "shop", "a", "shop"),
        ]);
        let p = validate(&d);
        assert_eq!(paths(&p), vec!["links[2]"]);
        assert!(
            p[0].message
                .contains("c/shop -> a/shop -> b/shop -> c/shop"),
            "{p:?}"
        );
    }

    #[test]
    fn mutual_links_may_cycle_but_need_their_way_back_and_a_full_mesh() {
        let mut doc = doc(&[
            ("a", "d", "b", "d"),
            ("b", "d", "a", "d"),
            ("b", "d", "c", "d"),
            ("c", "d", "b", "d"),
        ]);
        for l in &mut doc.links {
            l.options.apply = Apply::Logical;
            l.options.conflicts = Some(ConflictSpec {
                strategy: Default::default(),
                priority: Vec::new(),
                resolver: None,
                exclusive: false,
            });
        }
        let problems = validate(&doc);
        assert!(
            problems.iter().all(|p| !p.message.contains("cycle")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.path == "links[0]" && p.message.contains("a/d -> c/d")),
            "{problems:?}"
        );
        doc.links[3].options.conflicts = None;
        let problems = validate(&doc);
        assert!(
            problems.iter().any(|p| p.message.contains("its way back")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.path == "links[3]" && p.message.contains("must be mutual too")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_plan_changes_only_the_differences() {
        let v1 = doc(&[
            ("a", "shop", "b", "shop"),
            ("a", "shop", "c", "shop"),
            ("a", "orders", "b", "orders"),
        ]);
        let mut stored = Stored {
            doc: v1.clone(),
            links: BTreeMap::new(),
            applied_ms: 0,
            stale: Vec::new(),
            failover: None,
        };
        for (i, l) in v1.links.iter().enumerate() {
            stored.links.insert(
                l.label(),
                Applied {
                    node: l.from.node.clone(),
                    id: format!("id{i}"),
                    link: l.clone(),
                },
            );
        }
        let mut v2 = doc(&[
            ("a", "shop", "b", "shop"),
            ("a", "shop", "c", "shop"),
            ("a", "orders", "b", "orders"),
            ("b", "shop", "c", "copy"),
        ]);
        v2.links[1].options.mode = Mode::Sync;
        v2.links[2].options.stages = vec![StageSpec {
            plugin: "parent-rule@1".into(),
            config: json!({}),
        }];
        v2.links.remove(0);
        let steps = plan(&v2, Some(&stored), |a| a.id != "id2");
        let got: Vec<(&str, &str)> = steps.iter().map(|s| (s.action, s.link.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("delete", "a/shop -> b/shop"),
                ("replace", "a/shop -> c/shop"),
                ("create", "a/orders -> b/orders"),
                ("create", "b/shop -> c/copy"),
            ]
        );
        assert_eq!(steps[1].reason.as_deref(), Some("mode changed"));
        assert!(steps[2].reason.as_ref().unwrap().contains("gone"));
        let steps = plan(&v2, Some(&stored), |_| true);
        assert_eq!(steps[2].action, "update-stages");
        assert_eq!(
            plan(&v1, Some(&stored), |_| true)
                .iter()
                .filter(|s| s.action == "keep")
                .count(),
            3
        );
    }

    fn postgres_doc(conn: &str) -> Topology {
        let nodes = json!({"a": {"url": "http://a:1"}});
        serde_json::from_value(json!({"name": "t", "nodes": nodes, "links": [
            {"from": {"node": "a", "database": "shop"},
             "to": {"postgres": conn, "schema": "sales"},
             "apply": "logical", "create_tables": true,
             "stages": [{"plugin": "json-columns@1.0.0", "config": {}}]}]}))
        .unwrap()
    }

    #[test]
    fn a_postgres_target_reads_writes_and_shows_its_password_masked() {
        let doc = postgres_doc("postgresql://doppel:s3cret@127.0.0.1:5432/shop");
        assert_eq!(validate(&doc), vec![]);
        let l = &doc.links[0];
        assert_eq!(
            l.label(),
            "a/shop -> postgresql://doppel:***@127.0.0.1:5432/shop (sales)"
        );
        // The stored form keeps the password; what answers show does not.
        let stored = serde_json::to_string(&doc).unwrap();
        assert!(stored.contains("s3cret"), "{stored}");
        let shown = serde_json::to_string(&doc.masked()).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(r#""to":{"postgres":"postgresql://doppel:***@127.0.0.1:5432/shop","schema":"sales"}"#), "{shown}");
        // The source node gets the connection string, schema and options.
        let spec = serde_json::to_value(l.spec(&doc)).unwrap();
        assert_eq!(
            spec["target"],
            json!({"postgres": "postgresql://doppel:s3cret@127.0.0.1:5432/shop", "schema": "sales"})
        );
        assert_eq!(spec["create_tables"], json!(true));
        // Sent back as shown, the document keeps the stored password: nothing to do.
        let mut again: Topology = serde_json::from_str(&shown).unwrap();
        keep_passwords(&mut again, &doc);
        assert_eq!(again, doc);
        let stored = Stored {
            doc: doc.clone(),
            links: BTreeMap::from([(
                l.label(),
                Applied {
                    node: "a".into(),
                    id: "a-1".into(),
                    link: l.clone(),
                },
            )]),
            applied_ms: 0,
            stale: Vec::new(),
            failover: None,
        };
        let actions = |d: &Topology| {
            plan(d, Some(&stored), |_| true)
                .into_iter()
                .map(|s| (s.action, s.reason))
                .collect::<Vec<_>>()
        };
        assert_eq!(actions(&again), vec![("keep", None)]);
        // A new password is a new connection: the link is made again with it.
        let other = postgres_doc("postgresql://doppel:n3w@127.0.0.1:5432/shop");
        assert_eq!(
            actions(&other),
            vec![("replace", Some("the PostgreSQL connection changed".into()))]
        );
    }

    #[test]
    fn a_postgres_target_is_refused_at_its_link_when_its_source_would_refuse_it() {
        let mut doc = postgres_doc("postgresql://doppel:pw@127.0.0.1:5432/shop");
        doc.links[0].options.apply = Apply::Mirror;
        let p = validate(&doc);
        assert_eq!(paths(&p), vec!["links[0].to"], "{p:?}");
        assert!(p[0].message.contains("\"apply\": \"logical\""), "{p:?}");
        let doc = postgres_doc("not a connection string");
        let p = validate(&doc);
        assert_eq!(paths(&p), vec!["links[0].to"], "{p:?}");
        assert!(
            p[0].message.contains("not a PostgreSQL connection string"),
            "{p:?}"
        );
        // One form or the other, not a mix.
        let nodes = json!({"a": {"url": "http://a:1"}});
        let err = serde_json::from_value::<Topology>(json!({"name": "t", "nodes": nodes,
            "links": [{"from": {"node": "a", "database": "shop"},
                       "to": {"node": "a", "database": "x", "postgres": "postgresql://h/d"}}]}))
        .unwrap_err();
        assert!(err.to_string().contains("or to PostgreSQL"), "{err}");
    }
}
