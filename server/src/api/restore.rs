//! The point-in-time restore routes (SPEC G2): start a restore (or preview it with
//! `dry_run`), and follow it as an operation (`GET …/restores/{id}`); and the replay
//! with corrected logic (SPEC G7). The work itself is in [`crate::node::restore`] and
//! [`crate::replay`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::{blocking, ApiError, Body, Path};
use super::AppState;
use crate::node::restore::{self, Method, Point, Request};

type Result<T> = std::result::Result<T, ApiError>;
type App = State<Arc<AppState>>;

/// `POST …/restore`.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(transform = one_point)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// The point: a serial, or `timestamp_us` (one of the two).
    serial: Option<u64>,
    timestamp_us: Option<u64>,
    /// Restore into a new database of this name (absent: in place).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    into: Option<String>,
    method: Option<Method>,
    #[serde(default)]
    dry_run: bool,
}

/// A restore names its point by serial or by time, never both.
fn one_point(schema: &mut schemars::Schema) {
    schema.insert(
        "oneOf".into(),
        json!([
            {"required": ["serial"], "properties": {"serial": {"type": "integer"}}},
            {"required": ["timestamp_us"], "properties": {"timestamp_us": {"type": "integer"}}}
        ]),
    );
}

impl RestoreBody {
    fn request(self) -> Result<(Request, bool)> {
        let point = match (self.serial, self.timestamp_us) {
            (Some(serial), None) => Point::Serial(serial),
            (None, Some(ts)) => Point::TimestampUs(ts),
            (Some(_), Some(_)) => {
                return Err(ApiError::malformed(
                    "give either serial or timestamp_us, not both",
                ))
            }
            (None, None) => {
                return Err(ApiError::malformed(
                    "give the point to restore to: serial or timestamp_us",
                ))
            }
        };
        Ok((
            Request {
                point,
                into: self.into,
                method: self.method,
            },
            self.dry_run,
        ))
    }
}

fn joined<T>(result: std::result::Result<T, tokio::task::JoinError>) -> Result<T> {
    result.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the restore task failed: {e}"),
        )
    })
}

/// Start a restore: 202 with the operation (and its `Location`), or with `dry_run` 200
/// with the preview. Refusals (bad point, outside retention, a replica in place, a busy
/// database) come at once as problems.
pub async fn start(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
    Body(body): Body<RestoreBody>,
) -> Result<Response> {
    let (request, dry_run) = body.request()?;
    let node = app.node.clone();
    if dry_run {
        let preview = joined(
            tokio::task::spawn_blocking(move || restore::preview(&node, &tenant, &name, &request))
                .await,
        )??;
        return Ok(Json(preview).into_response());
    }
    let location = format!("/v1/tenants/{tenant}/databases/{name}/restores");
    let prepared = joined(
        tokio::task::spawn_blocking(move || restore::prepare(&node, &tenant, &name, &request))
            .await,
    )??;
    let op = prepared.operation();
    let view = op.view();
    let node = app.node.clone();
    tokio::spawn(async move {
        let target = prepared.target();
        let task = {
            let node = node.clone();
            tokio::task::spawn_blocking(move || restore::run(&node, prepared))
        };
        if let Err(e) = task.await {
            tracing::error!(restore = op.id, error = %e, "restore task died");
            restore::abandon(&node, &op, &target);
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("{location}/{}", view.id))],
        Json(view),
    )
        .into_response())
}

/// `GET …/restores`: this database's restores since the node started, oldest first.
pub async fn list(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<Restores>> {
    app.node.database(&tenant, &name)?;
    let restores: Vec<_> = app
        .node
        .restores
        .list(&tenant, &name)
        .iter()
        .map(|op| op.view())
        .collect();
    Ok(Json(Restores { restores }))
}

/// `GET …/restores`: the database's restores, oldest first.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Restores {
    restores: Vec<restore::OperationView>,
}

/// `POST …/restore`: 202 with the operation, or 200 with a dry run's preview.
#[derive(serde::Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Started {
    Operation(restore::OperationView),
    Preview(restore::Preview),
}

/// `GET …/restores/{id}`: one restore's state and progress.
pub async fn show(
    State(app): App,
    Path((tenant, name, id)): Path<(String, String, u64)>,
) -> Result<Json<restore::OperationView>> {
    app.node.database(&tenant, &name)?;
    Ok(Json(app.node.restores.get(&tenant, &name, id)?.view()))
}

/// `POST …/replay`: restore to `from_serial`, then replay the T log through a corrected
/// transform.
pub async fn replay(
    State(app): App,
    Path((tenant, db)): Path<(String, String)>,
    Body(req): Body<crate::replay::ReplayRequest>,
) -> Result<Json<crate::replay::Replay>> {
    app.node.databases(&tenant)?;
    let out = blocking(move || {
        crate::replay::replay(&app.node, &app.plugins, &tenant, &db, req).map_err(|e| match e {
            crate::replay::ReplayError::Node(e) => e.into(),
            crate::replay::ReplayError::Rejected(detail) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "replay-rejected", detail)
            }
        })
    })
    .await?;
    Ok(Json(out))
}
