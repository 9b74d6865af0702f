//! The REST API (SPEC H1): axum routes under `/v1`, problem+json errors and the
//! OpenAPI document. Every data path is tenant-scoped from the start.
//!
//! [`ROUTES`](openapi::ROUTES) is the one list of routes: the router is built from it
//! and the OpenAPI document describes it, so the two cannot drift apart.

pub mod batch;
pub mod console;
pub mod error;
pub mod events;
pub mod guard;
pub mod links;
pub mod metrics;
pub mod openapi;
pub mod plugins;
pub mod reference;
pub mod restore;
pub mod routes;
pub mod topologies;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::MethodFilter;
use axum::Router;

use crate::node::Node;
use crate::plugins::Registry;
use crate::tenancy::Tenancy;
use crate::transport::Replication;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What every handler can reach.
pub struct AppState {
    pub node: Arc<Node>,
    pub tenancy: Arc<Tenancy>,
    pub plugins: Arc<Registry>,
    pub replication: Arc<Replication>,
    pub topologies: Arc<crate::topology::Topologies>,
    /// The cluster this node is a member of (`[cluster]`), if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The router for a node. Every matched route passes through [`guard::guard`].
pub fn router(
    node: Arc<Node>,
    tenancy: Arc<Tenancy>,
    plugins: Arc<Registry>,
    replication: Arc<Replication>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> Router {
    let state = Arc::new(AppState {
        cluster,
        topologies: Arc::new(crate::topology::Topologies::new(node.clone())),
        node,
        tenancy,
        plugins,
        replication,
    });
    let mut router = Router::new();
    for route in openapi::ROUTES {
        let filter = match route.method {
            "get" => MethodFilter::GET,
            "post" => MethodFilter::POST,
            "put" => MethodFilter::PUT,
            "delete" => MethodFilter::DELETE,
            other => unreachable!("route table has method {other}"),
        };
        router = router.route(route.path, (route.handler)(filter));
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

type Handler = fn(MethodFilter) -> axum::routing::MethodRouter<Arc<AppState>>;

macro_rules! handler {
    ($f:path) => {
        (|filter| axum::routing::on(filter, $f)) as Handler
    };
}
pub(crate) use handler;
