//! The guard: one axum middleware, run on every matched route, that authenticates the
//! caller and applies the route's permission from [`ROUTES`](super::openapi::ROUTES)
//! through [`roles::check`]. Handlers never check permissions themselves; the claims the
//! guard accepted are left in the request's extensions for handlers that need to know
//! who is calling.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::openapi::{Route, ROUTES};
use super::AppState;
use crate::tenancy::audit::{result_of, Entry};
use crate::tenancy::auth::{now_secs, AuthError, Claims, ANY_TENANT};
use crate::tenancy::roles::{self, Denied, Permission, Role};
use crate::txn::clock::wall_ms;

fn route_of(method: &str, path: &str) -> Option<&'static Route> {
    static INDEX: OnceLock<HashMap<(&'static str, &'static str), &'static Route>> = OnceLock::new();
    let index = INDEX.get_or_init(|| ROUTES.iter().map(|r| ((r.method, r.path), r)).collect());
    index.get(&(method, path)).copied()
}

/// The caller when auth is disabled: the node administrator.
fn anonymous_admin() -> Claims {
    Claims {
        sub: "anonymous".into(),
        tenant: ANY_TENANT.into(),
        role: Role::Admin,
        iss: String::new(),
        aud: String::new(),
        exp: u64::MAX,
        nbf: 0,
        iat: now_secs(),
    }
}

fn unauthorized(err: AuthError) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, err.code(), err.detail()).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"doppel\""),
    );
    response
}

/// The bearer token of a request, if it has an `authorization` header.
fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let text = value
        .to_str()
        .map_err(|_| AuthError::Invalid("the authorization header is not text".into()))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AuthError::Invalid(
            "the authorization header must be 'Bearer <token>'".into(),
        )),
    }
}

/// The middleware.
pub async fn guard(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Some(route) = parts
        .extensions
        .get::<MatchedPath>()
        .and_then(|m| route_of(&parts.method.as_str().to_ascii_lowercase(), m.as_str()))
    else {
        // Only matched routes reach a route layer; a route outside the table is a bug.
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "no-route",
            "no route matches this path",
        )
        .into_response();
    };
    if route.permission == Permission::Public {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let claims = match &app.tenancy.keyring {
        None => anonymous_admin(),
        Some(keyring) => match bearer(&parts.headers).and_then(|t| keyring.verify(t)) {
            Ok(claims) => claims,
            Err(err) => return drained(body, unauthorized(err)).await,
        },
    };
    let tenant = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => params
            .iter()
            .find(|(name, _)| *name == "tenant")
            .map(|(_, value)| value.to_string()),
        Err(_) => None,
    };
    let audited = route.permission.audited() && parts.method != axum::http::Method::GET;
    let audit = |status: StatusCode| {
        if audited {
            record(
                &app,
                route,
                &claims,
                tenant.as_deref(),
                parts.uri.path(),
                status,
            );
        }
    };
    if let Err(denied) = roles::check(&claims, route.permission, tenant.as_deref()) {
        let response = match denied {
            Denied::NotFound(detail) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", detail).into_response()
            }
            Denied::Forbidden(detail) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail).into_response()
            }
        };
        audit(response.status());
        return drained(body, response).await;
    }
    // Quotas, charged to the tenant of the path (or of the caller).
    let charged = tenant
        .as_deref()
        .or((claims.tenant != ANY_TENANT).then_some(claims.tenant.as_str()));
    if let Some(charged) = charged {
        // The node administrator is not throttled by the tenants it looks after.
        let limited = claims.tenant != ANY_TENANT;
        let taken = match limited {
            true => app.tenancy.quotas.take_request(charged),
            false => Ok(()),
        };
        if let Err(wait) = taken {
            let secs = wait.as_secs() + 1;
            let response = ApiError::rate_limited(
                format!("tenant '{charged}' is over its request rate; retry in {secs} s"),
                wait,
            )
            .into_response();
            audit(response.status());
            return drained(body, response).await;
        }
        let frees_space = parts.method == axum::http::Method::DELETE;
        if matches!(route.permission, Permission::Write | Permission::Operate) && !frees_space {
            let quotas = &app.tenancy.quotas;
            let refusal = match quotas.check_memory(&app.node, charged) {
                Err((used, limit)) if route.permission == Permission::Write => Some(format!(
                    "tenant '{charged}' holds {used} bytes of blocks, at its memory quota of {limit}"
                )),
                _ => quotas.check_storage(&app.node, charged).err().map(|(used, limit)| {
                    format!(
                        "tenant '{charged}' stores {used} bytes of log and snapshots, at its storage quota of {limit}"
                    )
                }),
            };
            if let Some(detail) = refusal {
                let response =
                    ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "quota-exceeded", detail)
                        .into_response();
                audit(response.status());
                return drained(body, response).await;
            }
        }
    }
    let path = parts.uri.path().to_string();
    parts.extensions.insert(claims.clone());
    let body = match buffered(body).await {
        Ok(body) => body,
        Err(refusal) => {
            audit(refusal.status());
            return refusal;
        }
    };
    // A tenant's writes take turns (`concurrent_writes`), so one tenant's flood cannot
    // hold every worker while a neighbour's put waits.
    let _turn = match tenant.as_deref() {
        Some(t) if takes_turn(route) => app.tenancy.quotas.write_turn(t).await,
        _ => None,
    };
    let response = next.run(Request::from_parts(parts, body)).await;
    if audited {
        record(
            &app,
            route,
            &claims,
            tenant.as_deref(),
            &path,
            response.status(),
        );
    }
    response
}

/// Whether `route` is a write that takes a turn: batches and single-record writes, which
/// never wait for one another. Not interactive transactions (an `…/ops` call waiting
/// for a record lock would hold a turn the lock holder needs to commit) nor the
/// cross-site lock routes of parallel databases (a site's batch holds its turn while it
/// asks the other sites).
fn takes_turn(route: &Route) -> bool {
    route.permission == Permission::Write
        && (route.path.ends_with("/transactions") || route.path.contains("/records"))
}

/// The whole request body, read before the handler runs. A handler that takes no body
/// would otherwise leave it unread, and hyper then closes the connection once it has
/// answered, often while the client already reuses it for its next request (which
/// then fails: an "unexpected EOF" for a request the server never saw). Handlers that
/// take a body read it from this buffer without another copy.
async fn buffered(body: axum::body::Body) -> Result<axum::body::Body, Response> {
    match axum::body::to_bytes(body, super::MAX_BODY_BYTES).await {
        Ok(bytes) => Ok(axum::body::Body::from(bytes)),
        Err(e) if e.to_string().contains("length limit") => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!(
                "the request body is over the limit of {} bytes",
                super::MAX_BODY_BYTES
            ),
        )
        .into_response()),
        Err(e) => Err(
            ApiError::malformed(format!("the request body could not be read: {e}")).into_response(),
        ),
    }
}

/// Reads (and drops) what the client sent before answering a refusal, so its
/// keep-alive connection stays usable; a body over 1 MiB is left for the server to
/// close the connection on.
async fn drained(body: axum::body::Body, response: Response) -> Response {
    let _ = axum::body::to_bytes(body, 1 << 20).await;
    response
}

/// Records an admin or operator action in the audit log of the tenant it was aimed at
/// (or, when that is not the caller's, of the caller's own tenant).
fn record(
    app: &AppState,
    route: &Route,
    claims: &Claims,
    tenant: Option<&str>,
    path: &str,
    status: StatusCode,
) {
    let log = match tenant {
        Some(t) if claims.covers(t) => t,
        _ => claims.tenant.as_str(),
    };
    app.tenancy.audit.record(
        log,
        Entry {
            id: 0,
            at_ms: wall_ms(),
            who: claims.sub.clone(),
            caller_tenant: claims.tenant.clone(),
            role: claims.role.name().into(),
            action: format!("{} {}", route.method.to_ascii_uppercase(), route.path),
            path: path.to_string(),
            status: status.as_u16(),
            result: result_of(status.as_u16()).into(),
        },
    );
}
