//! API errors as problem+json (RFC 9457), and extractors whose rejections use it.
//!
//! Every error a client can meet has a stable `code`, a status, a title and a precise
//! `detail`. Extractor rejections (bad JSON, bad query, oversized body) go through the
//! same type, so no route answers with a plain-text error.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::node::Error;
use crate::store::StoreError;
use crate::txn::locks::LockError;

/// A problem to report to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub op_index: Option<usize>,
    /// More members of the problem object (e.g. a topology's `errors`).
    pub extra: Option<serde_json::Map<String, Value>>,
    /// Seconds for the `Retry-After` header (a rate quota's refusal).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            op_index: None,
            extra: None,
            retry_after_secs: None,
        }
    }

    /// 429 `rate-limited`, with `Retry-After` in whole seconds (rounded up, at least 1).
    pub fn rate_limited(detail: impl Into<String>, wait: std::time::Duration) -> ApiError {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail);
        e.retry_after_secs = Some(wait.as_secs() + 1);
        e
    }

    /// Add a member to the problem object.
    pub fn with(mut self, key: &str, value: Value) -> ApiError {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), value);
        self
    }

    /// 400 `malformed-request`: the body, query or path does not parse into the route's
    /// types, or breaks a bound the OpenAPI document states.
    pub fn malformed(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed-request", detail)
    }

    /// 422 `invalid-request`: the request parsed and meets its schema, but is refused on
    /// meaning (a rule between fields, or what it names cannot take it).
    pub fn invalid(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", detail)
    }
}

/// Every problem `code`: its title, and what the caller should do. `GET /problems`
/// shows it (each code an entry `#code`), and every problem's `type` points there.
pub const PROBLEMS: &[(&str, &str, &str)] = &[
    (
        "malformed-request",
        "The request is malformed",
        "Fix the request as `detail` says: the body, query or path does not parse into what the route takes, or a value is out of the bounds the OpenAPI document states for it.",
    ),
    (
        "invalid-request",
        "The request is invalid",
        "The request parsed and meets its schema, but is refused on meaning: a rule between its fields (e.g. memory_quota_bytes below block_size, a PostgreSQL target with a sync mode), or what it names cannot take it (an alternate key its file does not have, a serial outside the log, a plugin of the wrong role). Change the request as `detail` says; sending it again unchanged fails again.",
    ),
    (
        "empty-key",
        "The key is empty",
        "Give a unique key of 1 to 1024 bytes.",
    ),
    (
        "key-too-long",
        "The key is too long",
        "Keys and alternate-key values are at most 1024 bytes; shorten it.",
    ),
    (
        "not-found",
        "Not found",
        "The tenant, database, file, record, link, plugin or transaction named in the path does not exist (or no longer does): create it first, or check the name.",
    ),
    (
        "no-route",
        "No such route",
        "No route has this path: see GET /v1/openapi.json for the routes.",
    ),
    (
        "method-not-allowed",
        "Method not allowed",
        "The path exists but not with this method: see GET /v1/openapi.json.",
    ),
    (
        "already-exists",
        "Already exists",
        "Something of that name exists already: use another name, or read or delete the existing one.",
    ),
    (
        "duplicate-key",
        "Duplicate unique key",
        "A record with that key exists: use PUT to replace it, or another key.",
    ),
    (
        "lock-timeout",
        "Lock wait timed out",
        "Another transaction held a record this one needed for longer than lock_timeout_ms: retry, or commit open transactions sooner.",
    ),
    (
        "deadlock",
        "Deadlock detected",
        "This transaction was chosen to break a deadlock and was cancelled: retry it.",
    ),
    (
        "payload-too-large",
        "The request body is too large",
        "Bodies are at most 16 MiB: split the batch.",
    ),
    (
        "record-too-large",
        "The record is larger than a block",
        "A record must fit in one block: make it smaller, or use a database with a larger block_size.",
    ),
    (
        "quota-exceeded",
        "Quota exceeded",
        "The database's memory quota or the tenant's quota is used up: delete data, or ask the node administrator for a larger quota (PUT …/quotas).",
    ),
    (
        "disk-full",
        "The node's disk is full",
        "The node could not write the log: nothing of this request was written and the database is as before it. Reads go on; writes succeed again once the node's administrator frees space.",
    ),
    (
        "missing-token",
        "A bearer token is needed",
        "Send Authorization: Bearer <token> (doppel token makes one).",
    ),
    (
        "invalid-token",
        "The token is not valid",
        "The token is not a JWT this node can read: get a new one.",
    ),
    (
        "bad-signature",
        "The token's signature does not verify",
        "The token was not signed by a key of this node's [auth] keys: get one signed by it.",
    ),
    (
        "algorithm-not-allowed",
        "The token's algorithm is not allowed",
        "Sign the token with the algorithm its key is configured with (HS256 or EdDSA).",
    ),
    (
        "unknown-key",
        "The token's key is unknown",
        "The token's kid names no key of this node's [auth] keys: use a key the node has.",
    ),
    (
        "token-expired",
        "The token has expired",
        "Get a new token.",
    ),
    (
        "token-not-yet-valid",
        "The token is not valid yet",
        "The token's nbf is in the future: check the clocks, or wait.",
    ),
    (
        "wrong-audience",
        "The token is for another audience",
        "Get a token whose aud is this node's audience.",
    ),
    (
        "wrong-issuer",
        "The token is from another issuer",
        "Get a token whose iss is this node's issuer.",
    ),
    (
        "forbidden",
        "The role does not allow this",
        "The token's role or tenant does not cover this route: use a token with the permission the route's x-permission names.",
    ),
    (
        "rate-limited",
        "Too many requests",
        "The tenant is over its request or operation rate: wait Retry-After seconds and retry.",
    ),
    (
        "unavailable",
        "Service unavailable",
        "The node cannot serve this now (its log or a peer failed): retry later, and look at the node's log.",
    ),
    (
        "plugin-rejected",
        "The plugin was rejected",
        "The upload is not a valid plugin component for its role (contract version, exports, size): rebuild it with doppel plugin build.",
    ),
    (
        "plugin-config-rejected",
        "The plugin rejected its configuration",
        "The stage's config does not match the plugin's config schema (GET the plugin shows it): fix the config.",
    ),
    (
        "plugin-stopped",
        "The plugin was stopped",
        "The plugin ran out of its time, memory or output limits, or trapped: fix the plugin or its input.",
    ),
    (
        "unsupported-media-type",
        "Unsupported media type",
        "Send the body with the media type the route takes (application/json; a plugin upload application/wasm).",
    ),
    (
        "not-a-replica",
        "Not a replica",
        "The operation is a replica's (promote), and the database takes writes already: nothing to do, or name the replica's database on its own node.",
    ),
    (
        "link-not-streaming",
        "The link is not streaming",
        "The operation needs the link streaming (verify and repair compare the replica at one serial): resume a paused or stopped link (POST …/links/{link}/resume), or fix what its last error names, then send it again.",
    ),
    (
        "transactions-open",
        "Transactions open",
        "The database has open interactive transactions whose locks the operation would wait for: commit or cancel them (or let them expire), then send it again.",
    ),
    (
        "read-only-replica",
        "The database is a replica",
        "Write to the link's source database, or detach or promote the replica first.",
    ),
    (
        "replication-timeout",
        "The synchronous replicas did not confirm in time",
        "The write is committed here, but the quorum of synchronous replicas did not confirm it within its timeout: check the links.",
    ),
    (
        "link-refused",
        "The target node refused the link",
        "The target node answered the link with a problem (in detail): fix the target (its tenant, database, token) and retry.",
    ),
    (
        "not-caught-up",
        "The replica has not applied everything its source sent",
        "Wait until the replica caught up, or promote with force (losing what it has not applied).",
    ),
    (
        "replay-rejected",
        "The corrected transform rejects a replayed record",
        "The corrected transform fails on a record of the range: fix the transform, or replay a smaller range.",
    ),
    (
        "redrive-rejected",
        "The link's stages reject the re-driven record",
        "Edit the dead letter's record so that the stages accept it, or drop it.",
    ),
    (
        "topology-invalid",
        "The topology document is not valid",
        "Fix the parts that errors names (path and message).",
    ),
    (
        "topology-apply-failed",
        "Applying the topology failed part way",
        "Some links were not made: errors says which and why; fix and apply the document again (it is idempotent).",
    ),
    (
        "restore-in-progress",
        "A point-in-time restore is in progress",
        "Wait until the database's restore finished (GET …/restores).",
    ),
    (
        "outside-retention",
        "The point is outside the retained log",
        "Choose a point at or after oldest_serial / oldest_timestamp_us (in the problem).",
    ),
    (
        "point-in-future",
        "The point is after the database's last update",
        "Choose a point at or before the database's last serial.",
    ),
    (
        "log-backlog",
        "The database's log is too far ahead of the disk",
        "Slow down: retry after Retry-After seconds.",
    ),
    (
        "not-primary",
        "This node may not acknowledge writes of the database now",
        "In a cluster, this node's lease or fence does not allow writes now: write to primary (in the problem), or retry.",
    ),
    (
        "misdirected-write",
        "The database is a replica here: write to its primary",
        "Send the write to the node primary (in the problem) names.",
    ),
    (
        "revision-conflict",
        "The document changed since the revision given",
        "Read the topology again and apply it with its current revision.",
    ),
    (
        "not-clustered",
        "This node is not a member of a cluster",
        "Cluster routes and revisions need a node with [cluster] in its config.",
    ),
    (
        "automatic-failover",
        "Failover is automatic in a cluster",
        "In a cluster the members fail over by themselves: do not call failover.",
    ),
    (
        "builtin-plugin",
        "The name is a built-in plugin's",
        "Built-in plugins cannot be uploaded over or deleted: use another name.",
    ),
    (
        "internal",
        "Internal error",
        "A bug: report it with the node's log.",
    ),
];

/// A problem's title (`Internal error` for a code without an entry).
pub(crate) fn title(code: &str) -> &'static str {
    PROBLEMS
        .iter()
        .find(|(c, ..)| *c == code)
        .map(|(_, title, _)| *title)
        .unwrap_or("Internal error")
}

impl From<Error> for ApiError {
    fn from(err: Error) -> ApiError {
        let detail = err.to_string();
        if let Error::AtOp { index, err } = err {
            return ApiError {
                detail,
                op_index: Some(index),
                ..ApiError::from(*err)
            };
        }
        if let Error::OutsideRetention {
            oldest_serial,
            oldest_timestamp_us,
            ..
        } = &err
        {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "outside-retention",
                detail,
            )
            .with("oldest_serial", json!(oldest_serial))
            .with("oldest_timestamp_us", json!(oldest_timestamp_us));
        }
        if let Error::NotPrimary { primary, .. } | Error::Misdirected { primary, .. } = &err {
            let (status, code) = match err {
                Error::NotPrimary { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not-primary"),
                _ => (StatusCode::MISDIRECTED_REQUEST, "misdirected-write"),
            };
            return ApiError::new(status, code, detail).with("primary", json!(primary));
        }
        if let Error::LogBacklog {
            retry_after_secs, ..
        } = &err
        {
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "log-backlog", detail);
            e.retry_after_secs = Some(*retry_after_secs);
            return e;
        }
        let (status, code) = match &err {
            Error::AtOp { .. } => unreachable!("handled above"),
            Error::LogBacklog { .. } => unreachable!("handled above"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Error::AlreadyExists(_) => (StatusCode::CONFLICT, "already-exists"),
            Error::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed-request"),
            Error::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
            Error::NotAReplica(_) => (StatusCode::CONFLICT, "not-a-replica"),
            Error::TransactionsOpen(_) => (StatusCode::CONFLICT, "transactions-open"),
            Error::LinkRefused(_) => (StatusCode::CONFLICT, "link-refused"),
            Error::LinkNotStreaming(_) => (StatusCode::CONFLICT, "link-not-streaming"),
            Error::Store(err) => match err {
                StoreError::EmptyKey => (StatusCode::BAD_REQUEST, "empty-key"),
                StoreError::KeyTooLong { .. } => (StatusCode::BAD_REQUEST, "key-too-long"),
                StoreError::DuplicateKey => (StatusCode::CONFLICT, "duplicate-key"),
                StoreError::NotFound | StoreError::UnknownFile(_) => {
                    (StatusCode::NOT_FOUND, "not-found")
                }
                StoreError::RecordTooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "record-too-large")
                }
                StoreError::QuotaExceeded { .. } => {
                    (StatusCode::INSUFFICIENT_STORAGE, "quota-exceeded")
                }
                StoreError::Malformed | StoreError::BadReorg { .. } => {
                    (StatusCode::BAD_REQUEST, "malformed-request")
                }
            },
            Error::Lock(LockError::Timeout { .. } | LockError::SiteTimeout(_)) => {
                (StatusCode::CONFLICT, "lock-timeout")
            }
            Error::Lock(LockError::Deadlock { .. } | LockError::SiteDeadlock(_)) => {
                (StatusCode::CONFLICT, "deadlock")
            }
            Error::Log(crate::log::LogError::NoSpace(_)) => {
                (StatusCode::INSUFFICIENT_STORAGE, "disk-full")
            }
            Error::Log(_) | Error::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Error::ReadOnlyReplica(_) => (StatusCode::CONFLICT, "read-only-replica"),
            Error::ReplicationTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "replication-timeout"),
            Error::NotCaughtUp(_) => (StatusCode::CONFLICT, "not-caught-up"),
            Error::RestoreInProgress(_) => (StatusCode::CONFLICT, "restore-in-progress"),
            Error::OutsideRetention { .. }
            | Error::NotPrimary { .. }
            | Error::Misdirected { .. } => unreachable!("handled above"),
            Error::PointInFuture(_) => (StatusCode::UNPROCESSABLE_ENTITY, "point-in-future"),
        };
        ApiError {
            status,
            code,
            detail,
            op_index: None,
            extra: None,
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("/problems#{}", self.code),
            "title": title(self.code),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let Some(index) = self.op_index {
            body["op_index"] = json!(index);
        }
        for (k, v) in self.extra.unwrap_or_default() {
            body[k] = v;
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

/// A JSON body whose rejections are problems.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !media_type(req.headers()).as_deref().is_some_and(is_json) {
            return Err(ApiError::malformed(
                "expected a body with Content-Type: application/json",
            ));
        }
        parse_json(&read_body(req, state).await?).map(Body)
    }
}

/// The request's body, whatever its type (413 `payload-too-large` over the limit).
pub async fn read_body<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::malformed(r.body_text())
            }
        })
}

/// A JSON body as every route reads it (the fuzz target `rest_body` too): serde's
/// deserializer, refusing a struct written as an array of its fields (serde takes one;
/// the document says object), and taking a whole number written as a float (`3.0`) as
/// the integer it is to a JSON Schema validator.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let array = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if array && !std::any::type_name::<T>().starts_with("alloc::vec::Vec<") {
        return Err(ApiError::malformed("expected a JSON object"));
    }
    match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(value)) => Ok(value),
        Err(rejection) => {
            if let Some(fixed) = integral_floats_as_integers(bytes) {
                if let Ok(axum::Json(value)) = axum::Json::<T>::from_bytes(&fixed) {
                    return Ok(value);
                }
            }
            Err(json_rejection(rejection))
        }
    }
}

/// The request's media type without its parameters, lowercased (`None`: no readable
/// `Content-Type`).
pub fn media_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// `application/json`, or another JSON type (`application/…+json`).
pub fn is_json(essence: &str) -> bool {
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body again with every number written as a float that is a whole number within
/// 64 bits (`3.0`, `1e3`) written as an integer; `None` if there is none (or it is not
/// JSON).
fn integral_floats_as_integers(bytes: &[u8]) -> Option<Vec<u8>> {
    fn fix(v: &mut Value) -> bool {
        match v {
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f >= i64::MIN as f64 && f < u64::MAX as f64 {
                    *v = if f < 0.0 {
                        json!(f as i64)
                    } else {
                        json!(f as u64)
                    };
                    true
                } else {
                    false
                }
            }
            Value::Array(items) => items.iter_mut().fold(false, |c, v| fix(v) | c),
            Value::Object(map) => map.values_mut().fold(false, |c, v| fix(v) | c),
            _ => false,
        }
    }
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    fix(&mut value).then(|| value.to_string().into_bytes())
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        format!(
            "the request body is over the limit of {} bytes",
            super::MAX_BODY_BYTES
        ),
    )
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    let detail = match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a body with Content-Type: application/json".to_string()
        }
        other => other.body_text(),
    };
    ApiError::malformed(detail)
}

/// Query parameters whose rejections are problems.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r: QueryRejection| ApiError::malformed(r.body_text()))
    }
}

/// Path parameters whose rejections are problems.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r: PathRejection| ApiError::malformed(r.body_text()))
    }
}

/// Run blocking work (waiting on other nodes, large copies) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

#[cfg(test)]
mod body_tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Quorum {
        k: u32,
        timeout_ms: Option<u64>,
    }

    #[test]
    fn whole_floats_are_integers_and_structs_are_objects() {
        let q: Quorum = parse_json(br#"{"k": 2.0, "timeout_ms": 1e3}"#).unwrap();
        assert_eq!(
            q,
            Quorum {
                k: 2,
                timeout_ms: Some(1000)
            }
        );
        let half = parse_json::<Quorum>(br#"{"k": 2.5}"#).unwrap_err();
        assert_eq!(half.code, "malformed-request");
        assert!(half.detail.contains("k: invalid type"), "{}", half.detail);
        let array = parse_json::<Quorum>(b" [2, null]").unwrap_err();
        assert_eq!(array.detail, "expected a JSON object");
        let list: Vec<Quorum> = parse_json(br#"[{"k": 1}]"#).unwrap();
        assert_eq!(
            list,
            vec![Quorum {
                k: 1,
                timeout_ms: None
            }]
        );
    }
}
