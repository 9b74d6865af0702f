//! The live stream of a tenant's figures (SPEC H2, the console's overview and charts):
//! `GET /v1/tenants/{tenant}/events`, Server-Sent Events. Every `interval_ms` (default
//! 1000) it pushes one `snapshot` event whose data is a JSON object:
//!
//! ```json
//! {"at_ms": 1795314724621, "tenant": "default",
//!  "links": [link, ...],          // exactly as GET …/links answers (status with lag, throughput, last_error)
//!  "databases": [info, ...],      // exactly as GET …/databases answers (records, memory_bytes, quota)
//!  "replicas": [replica, ...]}    // exactly as GET …/replicas answers
//! ```
//!
//! The route is tenant-scoped and needs `read`, like every other tenant route; the guard
//! checks the `authorization` header before the stream starts. The token is never taken
//! from the URL: the console reads the stream with `fetch()` (which can send the header)
//! rather than `EventSource` (which cannot), so no secret lands in access logs, proxies or
//! browser history. `limit` ends the stream after that many snapshots (for scripts and
//! tests); otherwise it runs until the client goes away or the node shuts down
//! ([`close_streams`], called by `serve` when the shutdown signal arrives, so a graceful
//! shutdown never waits on an open stream).

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::error::{ApiError, Path, Query};
use super::AppState;
use crate::txn::clock::wall_ms;

/// Shortest and longest interval between snapshots.
const MIN_INTERVAL_MS: u64 = 250;
const MAX_INTERVAL_MS: u64 = 60_000;

/// Set once the node shuts down: every open stream ends.
static CLOSING: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::channel(false).0);

/// Ends every open event stream (the node is shutting down).
pub fn close_streams() {
    CLOSING.send_replace(true);
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[schemars(range(min = 250, max = 60_000))]
    interval_ms: Option<u64>,
    #[schemars(range(min = 1))]
    limit: Option<u64>,
}

/// One snapshot of the tenant's links, databases and replicas.
pub fn snapshot(app: &AppState, tenant: &str) -> Result<Value, ApiError> {
    let databases: Vec<_> = app
        .node
        .databases(tenant)?
        .iter()
        .map(|db| db.info())
        .collect();
    Ok(json!({
        "at_ms": wall_ms(),
        "tenant": tenant,
        "links": app.replication.list_links(tenant),
        "databases": databases,
        "replicas": app.replication.list_replicas(tenant),
    }))
}

struct Stream {
    app: Arc<AppState>,
    tenant: String,
    tick: tokio::time::Interval,
    closing: watch::Receiver<bool>,
    left: Option<u64>,
}

pub async fn events(
    State(app): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let interval = q.interval_ms.unwrap_or(1000);
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval) {
        return Err(ApiError::malformed(format!(
            "interval_ms must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS}, got {interval}"
        )));
    }
    if q.limit == Some(0) {
        return Err(ApiError::malformed("limit must be at least 1"));
    }
    // An absent tenant is a 404 before the stream starts.
    snapshot(&app, &tenant)?;
    let mut tick = tokio::time::interval(Duration::from_millis(interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let state = Stream {
        app,
        tenant,
        tick,
        closing: CLOSING.subscribe(),
        left: q.limit,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.left == Some(0) {
            return None;
        }
        tokio::select! {
            _ = st.tick.tick() => {}
            _ = st.closing.wait_for(|closing| *closing) => return None,
        }
        // The tenant may have gone meanwhile: the stream ends.
        let data = snapshot(&st.app, &st.tenant).ok()?;
        st.left = st.left.map(|n| n - 1);
        let event = Event::default().event("snapshot").data(data.to_string());
        Some((Ok::<_, Infallible>(event), st))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
