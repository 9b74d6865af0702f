//! Topology documents (SPEC F6): nodes, databases and the links between them, declared in
//! one JSON document per tenant and name, validated, planned and applied.
//!
//! A document names its nodes by API URL and lists links `from {node, database}` →
//! `to {node, database}` with the link's mode, apply form, stages, error policy and
//! B-log choice. Applying it on any node:
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
use crate::transport::links::{Apply, LinkOptions, LinkSpec, Mode, TargetSpec};
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

/// One link of a topology: its two ends, and how it replicates
/// ([`LinkOptions`], flat in the JSON, as in a link request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkDoc {
    pub from: Endpoint,
    pub to: Endpoint,
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
        format!(
            "{}/{} -> {}/{}",
            self.from.node, self.from.database, self.to.node, self.to.database
        )
    }

    /// The link as its source node's API takes it.
    pub(crate) fn spec(&self, doc: &Topology) -> LinkSpec {
        let target = &doc.nodes[&self.to.node];
        LinkSpec {
            database: self.from.database.clone(),
            target: TargetSpec {
                url: target.url.trim_end_matches('/').to_string(),
                database: self.to.database.clone(),
                token: None,
                replication: target.replication.clone(),
                resync: self.resync,
                postgres: None,
                schema: None,
            },
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
        for (side, end) in [("from", &l.from), ("to", &l.to)] {
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
        if l.from == l.to {
            out.push(problem(
                format!("links[{i}]"),
                "a link cannot copy a database onto itself",
            ));
        }
        if let Some(first) = targets.insert(&l.to, i).filter(|_| !consolidated(&l.to)) {
            out.push(problem(
                format!("links[{i}].to"),
                format!(
                    "database '{}' on node '{}' is already the target of links[{first}]; a \
                     mirror follows one source (several sources consolidate into one \
                     database through logical links, with a namespace transform each)",
                    l.to.database, l.to.node
                ),
            ));
        }
    }
    out.extend(check_mutual(doc));
    out.extend(check_quorum(doc));
    let ordinary: Vec<LinkDoc> = doc
        .links
        .iter()
        .filter(|l| l.options.conflicts.is_none())
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
        if l.options.conflicts.is_none() {
            let into_mutual = doc
                .links
                .iter()
                .any(|m| m.options.conflicts.is_some() && (m.to == l.to || m.from == l.to));
            if into_mutual && l.options.apply == Apply::Logical {
                out.push(problem(
                    format!("links[{i}]"),
                    format!(
                        "database '{}' on node '{}' is written through mutual links; a \
                         logical link into it must be mutual too (give it \"conflicts\")",
                        l.to.database, l.to.node
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
        if !mutual(&l.to, &l.from) {
            out.push(problem(
                format!("links[{i}]"),
                format!(
                    "a mutual link needs its way back: add a mutual link {}/{} -> {}/{}",
                    l.to.node, l.to.database, l.from.node, l.from.database
                ),
            ));
        }
        // Full mesh: whoever this link's target sends to, this link's source must
        // send to as well, since the target forwards nothing it did not write.
        for m in doc
            .links
            .iter()
            .filter(|m| m.options.conflicts.is_some() && m.from == l.to)
        {
            if m.to != l.from && !mutual(&l.from, &m.to) {
                out.push(problem(
                    format!("links[{i}]"),
                    format!(
                        "mutual sites form a full mesh (each ships only its own writes): \
                         add a mutual link {}/{} -> {}/{}",
                        l.from.node, l.from.database, m.to.node, m.to.database
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
        let mut path = vec![&l.to];
        if let Some(found) = reach(&links[..i], &l.to, &l.from, &mut path, &mut BTreeSet::new()) {
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
    for l in links.iter().filter(|l| &l.from == at) {
        path.push(&l.to);
        if let Some(found) = reach(links, &l.to, goal, path, seen) {
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
                    to: old.clone(),
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// keep, create, update-stages, replace or delete.
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
                    b.doc.nodes.get(&l.to.node) != doc.nodes.get(&l.to.node)
                        || b.doc.nodes.get(&l.from.node) != doc.nodes.get(&l.from.node)
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
        to: end(to),
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
    pub fn list(&self, tenant: &str) -> Result<Vec<Value>, node::Error> {
        let prefix = format!("{PREFIX}{tenant}/");
        let mut out = Vec::new();
        for (_, v) in self.node.config_scan(&prefix)? {
            let s: Stored =
                serde_json::from_slice(&v).map_err(|e| node::Error::Unavailable(e.to_string()))?;
            out.push(json!({
                "name": s.doc.name,
                "nodes": s.doc.nodes.len(),
                "links": s.doc.links.len(),
                "applied_ms": s.applied_ms,
            }));
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
    ) -> Result<Value, TopologyError> {
        let problems = validate(&doc);
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(problems));
        }
        let remote = caller(authorization);
        let before = self.load(tenant, &doc.name)?;
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
            if let Some(l) = s.index.map(|i| &doc.links[i]).filter(|l| !l.resync) {
                acting.insert(l.to.node.as_str());
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
        let plan_json = serde_json::to_value(&steps).expect("steps are JSON");
        if dry_run {
            return Ok(json!({"dry_run": true, "name": doc.name, "plan": plan_json}));
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
        Ok(json!({"name": doc.name, "plan": plan_json, "applied_ms": stored.applied_ms}))
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
    ) -> Result<Value, node::Error> {
        let stored = self.get(tenant, name)?;
        let remote = caller(authorization);
        let mut links = Vec::new();
        for l in &stored.doc.links {
            let label = l.label();
            let mut entry = json!({"link": label, "from": l.from, "to": l.to, "mode": l.options.mode,
                                   "apply": l.options.apply, "stages": l.options.stages});
            match stored.links.get(&label) {
                None => entry["error"] = json!("not applied"),
                Some(a) => {
                    entry["id"] = json!(a.id);
                    let url = format!(
                        "{}/v1/tenants/{tenant}/links/{}",
                        stored.doc.nodes[&a.node].url.trim_end_matches('/'),
                        a.id
                    );
                    match remote.call("GET", &url, None) {
                        Ok(body) => entry["status"] = body["status"].clone(),
                        Err(e) => entry["error"] = json!(e.detail()),
                    }
                }
            }
            links.push(entry);
        }
        // The last failover, with what each follower of the promoted database did: how
        // it was continued (by serial from `started_at`, or by snapshot), the entries of
        // a diverged tail it discarded, the bytes sent to it.
        let failover = stored.failover.as_ref().map(|f| {
            let followers: Vec<Value> = stored
                .doc
                .links
                .iter()
                .zip(&links)
                .filter(|(l, _)| l.from == f.promoted)
                .map(|(l, entry)| {
                    let st = &entry["status"];
                    json!({"to": l.to, "link": entry["link"], "state": st["state"],
                           "bootstraps": st["bootstraps"], "started_at": st["started_at"],
                           "resumed_by_serial": st["resumed_by_serial"],
                           "discarded_entries": st["discarded_entries"],
                           "bytes_sent": st["bytes_sent"], "error": entry.get("error")})
                })
                .collect();
            json!({"promoted": f.promoted, "old_primary": f.old_primary, "serial": f.serial,
                   "epoch": f.epoch, "at_ms": f.at_ms, "took_ms": f.took_ms,
                   "followers": followers})
        });
        Ok(json!({
            "name": stored.doc.name,
            "document": stored.doc,
            "applied_ms": stored.applied_ms,
            "failover": failover,
            "links": links,
            "stale": stored.stale.iter().map(|a| json!({"link": a.link.label(), "node": a.node, "id": a.id})).collect::<Vec<_>>(),
        }))
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
    ) -> Result<Value, TopologyError> {
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
        Ok(
            json!({"promoted": promoted, "old_primary": old, "applied": applied,
                  "failover": record}),
        )
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
                    to: Endpoint {
                        node: tnode.to_string(),
                        database: tdb.to_string(),
                    },
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
}
