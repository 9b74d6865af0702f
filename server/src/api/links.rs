//! The replication routes: this node's identity, links (source side), replicas (target
//! side) and a database's synchronous quorum.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{blocking, ApiError, Body, Path, Query};
use super::AppState;
use crate::tenancy::auth::Claims;
use crate::tenancy::roles::{check, Permission};
use crate::transport::links::{LinkSpec, ReplicaRequest};
use crate::transport::redrive::{RedriveError, RedriveRequest};
use crate::transport::verify::{Repair, RepairRequest, RepairScope, Report, Verified};

type Result<T> = std::result::Result<T, ApiError>;
type App = State<Arc<AppState>>;

/// This node: id, version, replication address; for the node administrator also its
/// footprint (memory and disk are every tenant's together, so a tenant's token does not
/// see them: they would tell it how much its neighbours hold).
/// The node's name for people (`doppel serve --name`, or `name` in the config file).
#[derive(Clone)]
pub struct NodeName(pub Option<String>);

pub async fn node(
    State(app): App,
    Extension(claims): Extension<Claims>,
    name: Option<Extension<NodeName>>,
) -> Result<Json<crate::transport::NodeInfo>> {
    let mut info = app.replication.node_info();
    info.name = name.and_then(|Extension(NodeName(n))| n);
    if check(&claims, Permission::NodeAdmin, None).is_ok() {
        let node = app.node.clone();
        info.footprint = Some(blocking(move || Ok(node.footprint())).await?);
        info.worker_threads = Some(tokio::runtime::Handle::current().metrics().num_workers());
        info.refused_databases = app.node.refused_databases();
    }
    Ok(Json(info))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    /// Check the request and answer what would be created, creating nothing.
    #[serde(default)]
    dry_run: bool,
    /// With `dry_run`: the source database does not exist yet because another link
    /// will create it (a chain); check everything else.
    #[serde(default)]
    source_pending: bool,
}

pub async fn create(
    State(app): App,
    Path(tenant): Path<String>,
    Query(q): Query<CreateQuery>,
    Body(spec): Body<LinkSpec>,
) -> Result<Response> {
    app.node.databases(&tenant)?;
    if q.dry_run {
        let spec = app
            .replication
            .check_link(&tenant, spec, q.source_pending)?;
        return Ok(Json(LinkDryRun {
            dry_run: true,
            link: spec,
        })
        .into_response());
    }
    let link = app.replication.create_link(&tenant, spec)?;
    Ok((StatusCode::CREATED, Json(link)).into_response())
}

/// A link request checked with `?dry_run=true`: the link it would create, normalised.
#[derive(Serialize, schemars::JsonSchema)]
pub struct LinkDryRun {
    dry_run: bool,
    link: LinkSpec,
}

/// `POST …/links`: 201 with the link, or 200 with a dry run's check.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Created {
    Link(Box<crate::transport::source::LinkView>),
    DryRun(Box<LinkDryRun>),
}

pub async fn list(State(app): App, Path(tenant): Path<String>) -> Result<Json<Value>> {
    app.node.databases(&tenant)?;
    Ok(Json(Value::Array(app.replication.list_links(&tenant))))
}

pub async fn show(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
) -> Result<Json<Value>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.show_link(&tenant, &link)?))
}

pub async fn delete(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
) -> Result<StatusCode> {
    app.node.databases(&tenant)?;
    app.replication.delete_link(&tenant, &link)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn pause(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
) -> Result<Json<Value>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.set_paused(&tenant, &link, true)?))
}

pub async fn resume(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
) -> Result<Json<Value>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.set_paused(&tenant, &link, false)?))
}

pub async fn list_replicas(
    State(app): App,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<crate::transport::target::ReplicaView>>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.list_replicas(&tenant)))
}

pub async fn register_replica(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
    Body(req): Body<ReplicaRequest>,
) -> Result<Json<crate::transport::target::Registered>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.register_replica(&tenant, &link, req)?))
}

pub async fn detach_replica(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
) -> Result<StatusCode> {
    app.node.databases(&tenant)?;
    app.replication.detach_replica(&tenant, &link)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A database's synchronous quorum, as `GET` and `PUT …/quorum` answer it.
#[derive(Serialize, schemars::JsonSchema)]
pub struct QuorumView {
    /// The synchronous links a commit waits for.
    k: usize,
    /// The synchronous links registered now.
    sync_links: usize,
    /// What a commit waits for now: `k`, at most the links there are or are expected.
    effective_k: usize,
    /// How long a commit waits for the quorum.
    timeout_ms: u64,
    /// The synchronous links the topology gives the database (0: not set).
    expected_links: usize,
}

fn quorum_json(app: &AppState, tenant: &str, db: &str) -> Result<QuorumView> {
    let database = app.node.database(tenant, db)?;
    let info = database.quorum.info();
    Ok(QuorumView {
        k: info.k,
        sync_links: info.sync_links,
        effective_k: info.k.min(info.sync_links.max(info.expected_links)),
        timeout_ms: info.timeout_ms,
        expected_links: info.expected_links,
    })
}

pub async fn get_quorum(
    State(app): App,
    Path((tenant, db)): Path<(String, String)>,
) -> Result<Json<QuorumView>> {
    Ok(Json(quorum_json(&app, &tenant, &db)?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuorumBody {
    #[schemars(range(min = 1))]
    k: usize,
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 600_000))]
    timeout_ms: u64,
    /// The synchronous links the database's topology gives it: commits wait for those
    /// not in place yet (a topology sets it; absent: 0, only the links registered).
    #[serde(default)]
    sync_links: usize,
}

impl QuorumBody {
    /// The problem with the settings, if any.
    fn check(&self) -> Result<()> {
        if self.k == 0 {
            return Err(ApiError::malformed("k must be at least 1"));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 600_000 {
            return Err(ApiError::malformed(
                "timeout_ms must be between 1 and 600000",
            ));
        }
        Ok(())
    }
}

fn default_timeout() -> u64 {
    crate::node::quorum::DEFAULT_TIMEOUT_MS
}

pub async fn set_quorum(
    State(app): App,
    Path((tenant, db)): Path<(String, String)>,
    Body(body): Body<QuorumBody>,
) -> Result<Json<QuorumView>> {
    body.check()?;
    let database = app.node.database(&tenant, &db)?;
    database.quorum.configure(body.k, body.timeout_ms);
    database.quorum.expect_links(body.sync_links);
    app.replication
        .save_quorum(&tenant, &db, body.k, body.timeout_ms)?;
    Ok(Json(quorum_json(&app, &tenant, &db)?))
}

pub async fn set_stages(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
    Body(stages): Body<Vec<crate::transport::links::StageSpec>>,
) -> Result<Json<Value>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.set_stages(&tenant, &link, stages)?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockRequest {
    holder: (u64, u64),
    keys: Vec<String>,
    #[serde(default = "default_lock_ms")]
    timeout_ms: u64,
}

fn default_lock_ms() -> u64 {
    5_000
}

pub async fn take_locks(
    State(app): App,
    Path((tenant, db)): Path<(String, String)>,
    Body(req): Body<LockRequest>,
) -> Result<Json<Locked>> {
    let db = app.node.database(&tenant, &db)?;
    let keys: Vec<Vec<u8>> = req.keys.into_iter().map(String::into_bytes).collect();
    let timeout = std::time::Duration::from_millis(req.timeout_ms.min(60_000));
    app.replication
        .exclusive
        .acquire(db.def.uid, &keys, req.holder, timeout)
        .await
        .map_err(|e| ApiError::from(crate::node::Error::Lock(e)))?;
    Ok(Json(Locked {
        held: keys.len(),
        lease_ms: crate::transport::parallel::LEASE.as_millis() as u64,
    }))
}

/// Records locked for a transaction of another site.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Locked {
    /// The records locked.
    held: usize,
    /// How long the locks last unless released or renewed.
    lease_ms: u64,
}

pub async fn release_locks(
    State(app): App,
    Path((tenant, db, holder)): Path<(String, String, String)>,
) -> Result<StatusCode> {
    app.node.database(&tenant, &db)?;
    let gid = holder
        .split_once('.')
        .and_then(|(t, o)| Some((t.parse().ok()?, o.parse().ok()?)))
        .ok_or_else(|| ApiError::malformed("holder is time.origin, as two numbers"))?;
    app.replication.exclusive.release(gid);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConflictsQuery {
    #[serde(default = "default_conflicts")]
    limit: usize,
}

fn default_conflicts() -> usize {
    100
}

/// The conflicts mutual links met in a database.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Conflicts {
    database: String,
    /// Every conflict it met (the oldest are not kept).
    count: u64,
    /// The newest, at most `limit`.
    conflicts: Vec<crate::transport::mutual::ConflictEntry>,
}

pub async fn conflicts(
    State(app): App,
    Path((tenant, db)): Path<(String, String)>,
    Query(q): Query<ConflictsQuery>,
) -> Result<Json<Conflicts>> {
    let db = app.node.database(&tenant, &db)?;
    let log = &app.replication.conflicts;
    let list = log
        .list(db.def.uid, q.limit.min(1000))
        .map_err(|e| ApiError::from(crate::node::Error::Log(e)))?;
    Ok(Json(Conflicts {
        database: db.name().to_string(),
        count: log.count(db.def.uid),
        conflicts: list,
    }))
}

pub async fn dead_letters(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
) -> Result<Json<Vec<crate::transport::logical::DeadLetter>>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.dead_letters(&tenant, &link, 1000)?))
}

pub async fn drop_dead_letter(
    State(app): App,
    Path((tenant, link, id)): Path<(String, String, u64)>,
) -> Result<StatusCode> {
    app.node.databases(&tenant)?;
    app.replication.drop_dead_letter(&tenant, &link, id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveBody {
    /// The record as an operator edited it; absent re-drives the stored one.
    #[serde(default)]
    #[schemars(with = "Option<crate::transport::redrive::EditedRecord>")]
    record: Option<Value>,
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// Promote even if the source announced updates the replica has not applied.
    #[serde(default)]
    force: bool,
    /// The quorum the promoted database applies before it takes its first write (a
    /// failover passes its topology's).
    #[serde(default)]
    quorum: Option<QuorumBody>,
    /// The synchronous links it will have (a failover passes its topology's): commits
    /// wait for them even before they exist. `quorum.sync_links` says the same.
    #[serde(default)]
    sync_links: usize,
}

/// (target side) Promote a replica database to a primary.
pub async fn promote(
    State(app): App,
    Path((tenant, db)): Path<(String, String)>,
    Body(body): Body<PromoteBody>,
) -> Result<Json<crate::transport::target::Promoted>> {
    app.node.databases(&tenant)?;
    if let Some(q) = &body.quorum {
        q.check()?;
    }
    let sync_links = body
        .quorum
        .as_ref()
        .map_or(body.sync_links, |q| q.sync_links.max(body.sync_links));
    let quorum = body.quorum.map(|q| (q.k, q.timeout_ms));
    Ok(Json(
        app.replication
            .promote(&tenant, &db, body.force, quorum, sync_links)?,
    ))
}

/// Verify a mirror link: its replica's blocks against the source's, at one serial.
pub async fn verify(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
) -> Result<Json<Report>> {
    app.node.databases(&tenant)?;
    match blocking(move || Ok(app.replication.verify(&tenant, &link, None)?)).await? {
        Verified::Report(report) => Ok(Json(report)),
        Verified::Repair(_) => unreachable!("a verification without a scope repairs nothing"),
    }
}

/// Repair the blocks of a mirror link's replica that differ (body: {file?, blocks?}).
pub async fn repair(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
    Body(scope): Body<RepairScope>,
) -> Result<Json<Repair>> {
    app.node.databases(&tenant)?;
    match blocking(move || Ok(app.replication.verify(&tenant, &link, Some(scope))?)).await? {
        Verified::Repair(repair) => Ok(Json(repair)),
        Verified::Report(_) => unreachable!("a verification with a scope repairs"),
    }
}

/// (target side) Repair one block file of a mirror replica from its source's blocks.
pub async fn apply_repair(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
    Body(req): Body<RepairRequest>,
) -> Result<Json<crate::transport::verify::Replaced>> {
    app.node.databases(&tenant)?;
    Ok(Json(
        app.replication.apply_repair(&tenant, &link, req).await?,
    ))
}

/// Which block a fault flips a byte of.
#[cfg(feature = "fault-injection")]
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorruptBlock {
    file: String,
    block: u32,
}

/// Fault injection: flip a byte of one block (test builds only).
#[cfg(feature = "fault-injection")]
pub async fn corrupt_block(
    State(app): App,
    Path((tenant, db)): Path<(String, String)>,
    Body(body): Body<CorruptBlock>,
) -> Result<StatusCode> {
    app.node
        .database(&tenant, &db)?
        .corrupt_block(&body.file, body.block)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Re-drive a dead letter through the link's stages to its replica.
pub async fn redrive(
    State(app): App,
    Path((tenant, link, id)): Path<(String, String, u64)>,
    Body(body): Body<RedriveBody>,
) -> Result<Json<crate::transport::redrive::Redriven>> {
    app.node.databases(&tenant)?;
    let record = body.record;
    let out = blocking(move || {
        app.replication
            .redrive(&tenant, &link, id, record)
            .map_err(|e| match e {
                RedriveError::Node(e) => e.into(),
                RedriveError::Rejected(detail) => {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "redrive-rejected", detail)
                }
            })
    })
    .await?;
    Ok(Json(out))
}

/// (target side) Apply re-driven operations on a logical replica.
pub async fn apply_redrive(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
    Body(req): Body<RedriveRequest>,
) -> Result<Json<crate::transport::redrive::AppliedRedrive>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.apply_redrive(&tenant, &link, req)?))
}

pub async fn suspend_replica(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
) -> Result<Json<crate::transport::target::Suspension>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.set_suspended(&tenant, &link, true)?))
}

pub async fn release_replica(
    State(app): App,
    Path((tenant, link)): Path<(String, String)>,
) -> Result<Json<crate::transport::target::Suspension>> {
    app.node.databases(&tenant)?;
    Ok(Json(app.replication.set_suspended(&tenant, &link, false)?))
}
