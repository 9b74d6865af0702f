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
use crate::topology::{Topology, TopologyError};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyQuery {
    /// Validate and answer the plan, changing nothing.
    #[serde(default)]
    dry_run: bool,
}

pub async fn apply(
    State(app): App,
    Path(tenant): Path<String>,
    Query(q): Query<ApplyQuery>,
    headers: HeaderMap,
    Body(doc): Body<Topology>,
) -> Result<Json<Value>> {
    app.node.databases(&tenant)?;
    let auth = authorization(&headers);
    let result = blocking(move || {
        app.topologies
            .apply(&tenant, doc, q.dry_run, auth)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(result))
}

pub async fn list(State(app): App, Path(tenant): Path<String>) -> Result<Json<Value>> {
    app.node.databases(&tenant)?;
    Ok(Json(Value::Array(app.topologies.list(&tenant)?)))
}

pub async fn show(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    app.node.databases(&tenant)?;
    let auth = authorization(&headers);
    let shown = blocking(move || {
        app.topologies
            .show(&tenant, &name, auth)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(shown))
}

#[derive(Deserialize)]
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
) -> Result<Json<Value>> {
    app.node.databases(&tenant)?;
    let auth = authorization(&headers);
    let to = crate::topology::Endpoint {
        node: body.node,
        database: body.database,
    };
    let result = blocking(move || {
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
        app.topologies
            .delete(&tenant, &name, auth)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
