//! The topology routes (SPEC F6): apply (or dry-run) a document, list, show with the
//! live state of its links, delete. The work is in [`crate::topology`]; it calls the
//! nodes' APIs with the caller's own authorization, so a topology can change only what
//! the caller may change on each node.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{blocking, ApiError, Body, Path, Query};
use super::AppState;
use crate::topology::{
    ApplyAnswer, FailoverAnswer, LinkShown, Shown, Summary, Topology, TopologyError,
};

type Result<T> = std::result::Result<T, ApiError>;
type App = State<Arc<AppState>>;

impl From<TopologyError> for ApiError {
    fn from(e: TopologyError) -> ApiError {
        match e {
            TopologyError::Invalid(problems) => {
                let first = problems
                    .first()
                    .map_or(String::new(), |p| format!("{}: {}", p.path, p.message));
                let more = match problems.len() {
                    0 | 1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "topology-invalid",
                    format!("{first}{more}"),
                )
                .with("errors", json!(problems))
            }
            TopologyError::Failed { detail, done } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "topology-apply-failed", detail)
                    .with("done", json!(done))
            }
            TopologyError::Node(e) => e.into(),
        }
    }
}

fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyQuery {
    /// Validate and answer the plan, changing nothing.
    #[serde(default)]
    dry_run: bool,
    /// In a cluster: the revision of the document the caller read (0: it must not
    /// exist yet). A document changed since is refused with 409 `revision-conflict`.
    #[serde(default)]
    revision: Option<i64>,
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> ApiError {
        match e {
            crate::cluster::ClusterError::Stale { given, current } => ApiError::new(
                StatusCode::CONFLICT,
                "revision-conflict",
                format!(
                    "the document is at revision {current}, not {given}: read it again \
                     and apply your change to that"
                ),
            )
            .with("revision", json!(current)),
            crate::cluster::ClusterError::Node(e) => e.into(),
        }
    }
}

/// In a cluster the documents live in etcd: validated here, stored with
/// compare-and-set, and carried out by each member for its own links.
fn apply_clustered(
    cluster: &crate::cluster::Cluster,
    tenant: &str,
    mut doc: Topology,
    q: &ApplyQuery,
) -> Result<ApplyAnswer> {
    if let Ok((stored, _)) = cluster.topology(tenant, &doc.name) {
        crate::topology::keep_passwords(&mut doc, &stored);
    }
    let problems = crate::topology::validate(&doc);
    if !problems.is_empty() {
        return Err(TopologyError::Invalid(problems).into());
    }
    let revision = match q.dry_run {
        true => None,
        false => Some(cluster.store_topology(tenant, &doc, q.revision)?),
    };
    Ok(ApplyAnswer {
        dry_run: q.dry_run,
        name: doc.name,
        plan: None,
        applied_ms: None,
        revision,
        cluster: true,
    })
}

pub async fn apply(
    State(app): App,
    Path(tenant): Path<String>,
    Query(q): Query<ApplyQuery>,
    headers: HeaderMap,
    Body(doc): Body<Topology>,
) -> Result<Json<ApplyAnswer>> {
    app.node.databases(&tenant)?;
    let auth = authorization(&headers);
    let result = blocking(move || {
        if let Some(cluster) = &app.cluster {
            return apply_clustered(cluster, &tenant, doc, &q);
        }
        if q.revision.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not-clustered",
                "revision is for a node of a cluster ([cluster] in its config); this node \
                 keeps its topologies itself",
            ));
        }
        app.topologies
            .apply(&tenant, doc, q.dry_run, auth)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(result))
}

pub async fn list(State(app): App, Path(tenant): Path<String>) -> Result<Json<Vec<Summary>>> {
    app.node.databases(&tenant)?;
    if let Some(cluster) = app.cluster.clone() {
        let list = blocking(move || Ok(cluster.topologies(&tenant)?)).await?;
        return Ok(Json(list));
    }
    Ok(Json(app.topologies.list(&tenant)?))
}

pub async fn show(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Shown>> {
    app.node.databases(&tenant)?;
    let auth = authorization(&headers);
    let shown = blocking(move || {
        if let Some(cluster) = &app.cluster {
            let (doc, revision) = cluster.topology(&tenant, &name)?;
            // Each link as the non-clustered answer shows it; id and live status for the
            // ones this member made (the others are made by their source members).
            let mine: std::collections::BTreeMap<String, Value> = cluster
                .local_links(&tenant, &name)
                .into_iter()
                .filter_map(|l| Some((l["link"].as_str()?.to_string(), l)))
                .collect();
            let links: Vec<LinkShown> = doc
                .links
                .iter()
                .map(|l| {
                    let mut entry = LinkShown::of(l);
                    match mine.get(&entry.link) {
                        Some(m) => {
                            entry.id = m["id"].as_str().map(str::to_string);
                            entry.status = Some(m["status"].clone());
                        }
                        None => {
                            entry.error = Some(format!(
                                "made by member '{}': its status is on that node",
                                l.from.node
                            ))
                        }
                    }
                    entry
                })
                .collect();
            return Ok(Shown {
                name: doc.name.clone(),
                document: doc.masked(),
                applied_ms: None,
                revision: Some(revision),
                cluster: true,
                failover: None,
                links,
                stale: Vec::new(),
            });
        }
        app.topologies
            .show(&tenant, &name, auth)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(shown))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverBody {
    /// The replica to promote: a node of the topology and its database.
    node: String,
    database: String,
    #[serde(default)]
    force: bool,
}

pub async fn failover(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body<FailoverBody>,
) -> Result<Json<FailoverAnswer>> {
    app.node.databases(&tenant)?;
    let auth = authorization(&headers);
    let to = crate::topology::Endpoint {
        node: body.node,
        database: body.database,
    };
    let result = blocking(move || {
        if app.cluster.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "automatic-failover",
                "in a cluster failover is automatic: a standby takes over when the \
                 primary's leader key expires (see GET /v1/cluster)",
            ));
        }
        app.topologies
            .failover(&tenant, &name, to, body.force, auth)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(result))
}

pub async fn delete(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode> {
    app.node.databases(&tenant)?;
    let auth = authorization(&headers);
    blocking(move || {
        if let Some(cluster) = &app.cluster {
            return Ok(cluster.delete_topology(&tenant, &name)?);
        }
        app.topologies
            .delete(&tenant, &name, auth)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/cluster`: members, the primary of each replicated database, failovers; a
/// caller sees the databases of the tenants its token covers.
pub async fn cluster(
    State(app): App,
    axum::Extension(claims): axum::Extension<crate::tenancy::auth::Claims>,
) -> Result<Json<crate::cluster::ClusterView>> {
    let Some(cluster) = &app.cluster else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-clustered",
            "this node is not a member of a cluster (no [cluster] in its config)",
        ));
    };
    Ok(Json(cluster.show(|t| claims.covers(t))))
}
