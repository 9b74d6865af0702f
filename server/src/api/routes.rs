//! The REST handlers: tenants, databases, records, transactions, snapshots, log and
//! checksums. Each handler parses, calls the node, and shapes the JSON answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::batch::Ops;
use super::error::{ApiError, Body, Path, Query};
use super::AppState;
use crate::node::database::Committed;
use crate::node::records::{OpInput, OpName, OpRef, RecordView};
use crate::node::{logview, Database, DatabaseSpec};
use crate::tenancy::auth::Claims;
use crate::tenancy::quota::{Limits, RateQuota};

type Result<T> = std::result::Result<T, ApiError>;
type App = State<Arc<AppState>>;

/// Most records one scan or lookup returns.
const MAX_LIMIT: usize = 10_000;

// ---- answers (their schemas are the document's) ----

/// `GET /v1/health`.
#[derive(Serialize, JsonSchema)]
pub struct Health {
    /// Always `ok` while the node answers.
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// What the caller's role allows (`GET /v1/whoami`).
#[derive(Serialize, JsonSchema)]
pub struct May {
    pub read: bool,
    pub write: bool,
    pub operate: bool,
    pub manage: bool,
    pub node_admin: bool,
}

/// `GET /v1/whoami`.
#[derive(Serialize, JsonSchema)]
pub struct WhoAmI {
    pub sub: String,
    /// The tenant the token acts for, or `*` for every tenant.
    pub tenant: String,
    pub role: crate::tenancy::roles::Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The tenants the token covers.
    pub tenants: Vec<String>,
    pub may: May,
}

/// A tenant, as created and listed.
#[derive(Serialize, JsonSchema)]
pub struct TenantName {
    pub name: String,
}

/// The oldest point a point-in-time restore reaches.
#[derive(Serialize, JsonSchema)]
pub struct RestoreReach {
    pub oldest_serial: u64,
    pub oldest_timestamp_us: Option<u64>,
}

/// A database as every route shows it.
#[derive(Serialize, JsonSchema)]
pub struct DatabaseAnswer {
    #[serde(flatten)]
    pub info: crate::node::database::DatabaseInfo,
    pub restore_reach: RestoreReach,
}

/// A written record: the transaction and the serial of its update.
#[derive(Serialize, JsonSchema)]
pub struct Written {
    pub txn: u64,
    pub serial: u64,
}

/// `PUT …/records/{key}`.
#[derive(Serialize, JsonSchema)]
pub struct Upserted {
    pub txn: u64,
    pub serial: u64,
    /// The key did not exist before.
    pub created: bool,
}

/// A page of a scan.
#[derive(Serialize, JsonSchema)]
pub struct Scan {
    pub records: Vec<RecordView>,
    /// The key to scan `from` for the next page; `null` at the end.
    pub next: Option<String>,
}

/// Records found by an alternate key.
#[derive(Serialize, JsonSchema)]
pub struct Records {
    pub records: Vec<RecordView>,
}

/// `POST …/txns`: the open transaction's number.
#[derive(Serialize, JsonSchema)]
pub struct Begun {
    pub txn: u64,
}

/// An open transaction.
#[derive(Serialize, JsonSchema)]
pub struct OpenTxn {
    pub txn: u64,
    /// Operations added and not committed yet.
    pub pending: usize,
    /// Always `open` (a committed or cancelled transaction is 404).
    pub state: String,
}

/// Operations added to an open transaction.
#[derive(Serialize, JsonSchema)]
pub struct Pending {
    pub txn: u64,
    pub pending: usize,
}

/// A cancelled transaction.
#[derive(Serialize, JsonSchema)]
pub struct Cancelled {
    pub txn: u64,
    pub cancelled: bool,
}

/// A stored snapshot.
#[derive(Serialize, JsonSchema)]
pub struct SnapshotAnswer {
    /// The last serial the snapshot includes.
    pub serial: u64,
    pub size_bytes: u64,
    pub blocks: usize,
    pub created_ms: u64,
}

pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

pub async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

/// `GET /problems`: every problem code with its title and what the caller should do;
/// a problem's `type` (`/problems#{code}`) is its entry here.
pub async fn problems() -> Response {
    fn escape(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Doppel problem codes</title></head><body><h1>Problem codes</h1>\
         <p>Every error of the API is a problem (RFC 9457, application/problem+json) \
         with a stable <code>code</code>; its <code>type</code> is this page's entry.</p><dl>",
    );
    for (code, title, advice) in super::error::PROBLEMS {
        html.push_str(&format!(
            "<dt id=\"{code}\"><code>{code}</code>: {}</dt><dd>{}</dd>",
            escape(title),
            escape(advice)
        ));
    }
    html.push_str("</dl></body></html>");
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; frame-ancestors 'none'",
            ),
        ],
        html,
    )
        .into_response()
}

pub async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-route",
        "no route matches this path",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this path does not take this method",
    )
}

// ---- tenants ----

/// The caller as its (verified) token says, for clients such as the console that show
/// or hide actions by role. The server still checks every route itself.
pub async fn whoami(State(app): App, Extension(claims): Extension<Claims>) -> Json<WhoAmI> {
    use crate::tenancy::auth::ANY_TENANT;
    use crate::tenancy::roles::{allows, Permission as P};
    let tenants: Vec<String> = app
        .node
        .tenants()
        .into_iter()
        .filter(|name| claims.covers(name))
        .collect();
    let node_admin =
        claims.tenant == ANY_TENANT && claims.role == crate::tenancy::roles::Role::Admin;
    Json(WhoAmI {
        may: May {
            read: allows(claims.role, P::Read),
            write: allows(claims.role, P::Write),
            operate: allows(claims.role, P::Operate),
            manage: allows(claims.role, P::Manage),
            node_admin,
        },
        sub: claims.sub,
        tenant: claims.tenant,
        role: claims.role,
        exp: claims.exp,
        tenants,
    })
}

/// The tenants the caller's token covers (all of them for the node administrator).
pub async fn list_tenants(
    State(app): App,
    Extension(claims): Extension<Claims>,
) -> Json<Vec<TenantName>> {
    let tenants = app
        .node
        .tenants()
        .into_iter()
        .filter(|name| claims.covers(name))
        .map(|name| TenantName { name })
        .collect();
    Json(tenants)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub(crate) name: String,
}

pub async fn create_tenant(State(app): App, Body(body): Body<NewTenant>) -> Result<Response> {
    app.node.create_tenant(&body.name)?;
    Ok((StatusCode::CREATED, Json(TenantName { name: body.name })).into_response())
}

// ---- usage, quotas, audit ----

fn ns_to_ms(ns: u64) -> f64 {
    (ns / 1_000) as f64 / 1_000.0
}

/// Used so far against a quota (`limit` `null`: unlimited).
#[derive(Serialize, schemars::JsonSchema)]
pub struct Used {
    used: u64,
    limit: Option<u64>,
}

/// A quota with no usage figure.
#[derive(Serialize, schemars::JsonSchema)]
pub struct LimitOnly {
    limit: Option<u64>,
}

/// The request rate quota and the tokens left in its bucket.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RequestRate {
    per_sec: Option<u32>,
    burst: Option<u32>,
    available: Option<u64>,
}

/// The write-operation rate quota, its bucket, and what the databases wrote.
#[derive(Serialize, schemars::JsonSchema)]
pub struct OperationRate {
    per_sec: Option<u32>,
    burst: Option<u32>,
    available: Option<i64>,
    last_second: u64,
    total: u64,
}

/// The written-bytes rate quota and its bucket.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ByteRate {
    per_sec: Option<u64>,
    burst: Option<u64>,
    /// Bytes the tenant could write at once now (negative: in debt).
    available: Option<i64>,
}

/// CPU milliseconds of the databases' writes and replica applies.
#[derive(Serialize, schemars::JsonSchema)]
pub struct CpuMs {
    last_second: f64,
    total: f64,
}

/// Concurrent writes: the quota and the writes waiting for a turn.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ConcurrentWrites {
    limit: Option<u32>,
    waiting: usize,
}

/// `GET …/usage`: a tenant's usage against its quotas.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Usage {
    tenant: String,
    databases: usize,
    memory_bytes: Used,
    storage_bytes: Used,
    plugins: Used,
    plugin_bytes: Used,
    plugin_cpu_ms_per_sec: LimitOnly,
    requests: RequestRate,
    operations: OperationRate,
    bytes: ByteRate,
    cpu_ms: CpuMs,
    log_backlog_bytes: u64,
    disk_bytes: u64,
    concurrent_writes: ConcurrentWrites,
}

pub async fn usage(State(app): App, Path(tenant): Path<String>) -> Result<Json<Usage>> {
    let databases = app.node.databases(&tenant)?;
    let quotas = &app.tenancy.quotas;
    let limits = quotas.limits(&tenant);
    let memory: u64 = databases.iter().map(|db| db.memory_bytes()).sum();
    let stored = crate::tenancy::quota::Quotas::storage_used(&app.node, &tenant);
    let plugins = app.plugins.list(&tenant)?;
    Ok(Json(Usage {
        databases: databases.len(),
        memory_bytes: Used {
            used: memory,
            limit: limits.memory_bytes,
        },
        storage_bytes: Used {
            used: stored,
            limit: limits.storage_bytes,
        },
        plugins: Used {
            used: plugins.len() as u64,
            limit: limits.plugins,
        },
        plugin_bytes: Used {
            used: plugins.iter().map(|p| p.size as u64).sum::<u64>(),
            limit: limits.plugin_bytes,
        },
        plugin_cpu_ms_per_sec: LimitOnly {
            limit: limits.plugin_cpu_ms_per_sec,
        },
        requests: RequestRate {
            per_sec: limits.requests_per_sec,
            burst: limits.burst,
            available: quotas.available_requests(&tenant),
        },
        operations: OperationRate {
            per_sec: limits.operations_per_sec,
            burst: limits.operations_burst,
            available: quotas.available_operations(&tenant),
            last_second: databases
                .iter()
                .map(|db| db.usage.operations.last_second())
                .sum::<u64>(),
            total: databases
                .iter()
                .map(|db| db.usage.operations.total())
                .sum::<u64>(),
        },
        bytes: ByteRate {
            per_sec: limits.bytes_per_sec,
            burst: limits.bytes_burst,
            available: quotas.available_bytes(&tenant),
        },
        cpu_ms: CpuMs {
            last_second: ns_to_ms(
                databases
                    .iter()
                    .map(|db| db.usage.cpu_ns.last_second())
                    .sum(),
            ),
            total: ns_to_ms(databases.iter().map(|db| db.usage.cpu_ns.total()).sum()),
        },
        log_backlog_bytes: databases.iter().map(|db| db.log_backlog()).sum::<u64>(),
        disk_bytes: databases.iter().map(|db| db.disk_bytes()).sum::<u64>(),
        concurrent_writes: ConcurrentWrites {
            limit: limits.concurrent_writes,
            waiting: quotas.writes_waiting(&tenant),
        },
        tenant,
    }))
}

pub async fn set_quotas(
    State(app): App,
    Path(tenant): Path<String>,
    Body(limits): Body<Limits>,
) -> Result<Json<TenantQuotas>> {
    app.node.databases(&tenant)?;
    app.tenancy.quotas.set(&app.node, &tenant, limits)?;
    Ok(Json(TenantQuotas {
        tenant,
        quotas: limits,
    }))
}

/// `PUT …/quotas`: the tenant's quotas as set (`null`: the node default).
#[derive(Serialize, schemars::JsonSchema)]
pub struct TenantQuotas {
    tenant: String,
    quotas: Limits,
}

/// Entries of a log (the audit log, a database's A/B/T log), oldest first.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Entries<T> {
    entries: Vec<T>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    after: Option<u64>,
    #[schemars(range(min = 1, max = 10_000))]
    limit: Option<usize>,
}

pub async fn audit(
    State(app): App,
    Path(tenant): Path<String>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Entries<crate::tenancy::audit::Entry>>> {
    if tenant != crate::tenancy::auth::ANY_TENANT {
        app.node.databases(&tenant)?;
    }
    let entries = app
        .tenancy
        .audit
        .read(&tenant, q.after.unwrap_or(0), limit(q.limit)?)?;
    Ok(Json(Entries { entries }))
}

// ---- databases ----

fn db(app: &AppState, tenant: &str, name: &str) -> Result<Arc<Database>> {
    Ok(app.node.database(tenant, name)?)
}

/// A database's info as every route shows it, with the oldest point a restore reaches.
fn info(db: &Database) -> Result<DatabaseAnswer> {
    let oldest = crate::node::restore::oldest_point(db)?;
    Ok(DatabaseAnswer {
        info: db.info(),
        restore_reach: RestoreReach {
            oldest_serial: oldest.serial,
            oldest_timestamp_us: oldest.timestamp_us,
        },
    })
}

pub async fn create_database(
    State(app): App,
    Path(tenant): Path<String>,
    Body(spec): Body<DatabaseSpec>,
) -> Result<Response> {
    let db = app.node.create_database(&tenant, spec)?;
    Ok((StatusCode::CREATED, Json(info(&db)?)).into_response())
}

pub async fn list_databases(
    State(app): App,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<DatabaseAnswer>>> {
    let infos: Vec<_> = app
        .node
        .databases(&tenant)?
        .iter()
        .map(|db| info(db))
        .collect::<Result<_>>()?;
    Ok(Json(infos))
}

pub async fn get_database(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<DatabaseAnswer>> {
    let db = db(&app, &tenant, &name)?;
    Ok(Json(info(&db)?))
}

pub async fn delete_database(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    app.node.delete_database(&tenant, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- records ----

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordBody {
    #[serde(default)]
    pub(crate) alt: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    /// 1 to 1024 bytes.
    #[schemars(length(min = 1, max = 1024))]
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) alt: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
}

type RecordPath = Path<(String, String, String, String)>;

fn lock_timeout(app: &AppState, ms: Option<u64>) -> Duration {
    Duration::from_millis(ms.unwrap_or(app.node.settings.lock_timeout_ms).min(600_000))
}

/// Charge written operations to `tenant`'s operation and byte quotas (a batch counts
/// each of its operations and their bytes); the node administrator is not limited.
/// Refused: nothing is written.
fn charge(app: &AppState, claims: &Claims, tenant: &str, ops: &[OpRef<'_>]) -> Result<()> {
    if claims.tenant == crate::tenancy::auth::ANY_TENANT {
        return Ok(());
    }
    let n = ops.len();
    let bytes: u64 = ops.iter().map(OpRef::written_bytes).sum();
    app.tenancy
        .quotas
        .take_write(tenant, n, bytes)
        .map_err(|(wait, which)| {
            let asked = match which {
                RateQuota::Operations => format!("operation rate ({n} operations asked)"),
                RateQuota::Bytes => format!("byte rate ({bytes} bytes asked)"),
            };
            ApiError::rate_limited(
                format!(
                    "tenant '{tenant}' is over its {asked}; retry in {} s",
                    wait.as_secs() + 1
                ),
                wait,
            )
        })
}

async fn run_one(
    app: &AppState,
    claims: &Claims,
    db: &Database,
    op: OpInput,
) -> Result<crate::node::database::Committed> {
    let op = [op.as_ref()];
    charge(app, claims, &db.def.tenant, &op)?;
    let ops = db.resolve(&op).map_err(strip_index)?;
    db.execute(ops, lock_timeout(app, None))
        .await
        .map_err(strip_index)
}

/// Single-record calls report errors without an operation index.
fn strip_index(err: crate::node::Error) -> ApiError {
    match err {
        crate::node::Error::AtOp { err, .. } => (*err).into(),
        other => other.into(),
    }
}

pub async fn put_record(
    State(app): App,
    Extension(claims): Extension<Claims>,
    Path((tenant, name, file, key)): RecordPath,
    Body(body): Body<RecordBody>,
) -> Result<Json<Upserted>> {
    let db = db(&app, &tenant, &name)?;
    let existed = db.get(&file, &key).is_ok();
    let op = OpInput {
        op: OpName::Upsert,
        file,
        key,
        alt: body.alt,
        data: body.data,
    };
    let done = run_one(&app, &claims, &db, op).await?;
    Ok(Json(Upserted {
        txn: done.txn,
        serial: done.first_serial,
        created: !existed,
    }))
}

pub async fn insert_record(
    State(app): App,
    Extension(claims): Extension<Claims>,
    Path((tenant, name, file)): Path<(String, String, String)>,
    Body(body): Body<NewRecord>,
) -> Result<Response> {
    let db = db(&app, &tenant, &name)?;
    let op = OpInput {
        op: OpName::Insert,
        file,
        key: body.key,
        alt: body.alt,
        data: body.data,
    };
    let done = run_one(&app, &claims, &db, op).await?;
    Ok((
        StatusCode::CREATED,
        Json(Written {
            txn: done.txn,
            serial: done.first_serial,
        }),
    )
        .into_response())
}

pub async fn get_record(
    State(app): App,
    Path((tenant, name, file, key)): RecordPath,
) -> Result<Json<RecordView>> {
    Ok(Json(db(&app, &tenant, &name)?.get(&file, &key)?))
}

pub async fn delete_record(
    State(app): App,
    Extension(claims): Extension<Claims>,
    Path((tenant, name, file, key)): RecordPath,
) -> Result<Json<Written>> {
    let db = db(&app, &tenant, &name)?;
    let op = OpInput {
        op: OpName::Delete,
        file,
        key,
        alt: BTreeMap::new(),
        data: None,
    };
    let done = run_one(&app, &claims, &db, op).await?;
    Ok(Json(Written {
        txn: done.txn,
        serial: done.first_serial,
    }))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    from: Option<String>,
    to: Option<String>,
    #[schemars(range(min = 1, max = 10_000))]
    limit: Option<usize>,
}

fn limit(requested: Option<usize>) -> Result<usize> {
    match requested.unwrap_or(100) {
        0 => Err(ApiError::malformed("limit must be at least 1")),
        n if n > MAX_LIMIT => Err(ApiError::malformed(format!(
            "limit must be at most {MAX_LIMIT}"
        ))),
        n => Ok(n),
    }
}

pub async fn scan_records(
    State(app): App,
    Path((tenant, name, file)): Path<(String, String, String)>,
    Query(q): Query<ScanQuery>,
) -> Result<Json<Scan>> {
    let db = db(&app, &tenant, &name)?;
    let (records, next) = db.scan(
        &file,
        q.from.as_deref().unwrap_or(""),
        q.to.as_deref(),
        limit(q.limit)?,
    )?;
    Ok(Json(Scan { records, next }))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    #[schemars(range(min = 1, max = 10_000))]
    limit: Option<usize>,
}

pub async fn lookup_alt(
    State(app): App,
    Path((tenant, name, file, alt, value)): Path<(String, String, String, String, String)>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Records>> {
    let db = db(&app, &tenant, &name)?;
    let records = db.lookup_alt(&file, &alt, &value, limit(q.limit.or(Some(MAX_LIMIT)))?)?;
    Ok(Json(Records { records }))
}

// ---- transactions ----

/// The JSON body of the transaction routes; they take a binary batch too
/// ([`super::batch`]), which decodes into the same operations.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsBody {
    /// At most `MAX_TXN_OPS` (100000), in one request as in an interactive transaction.
    #[schemars(length(min = 1, max = 100_000))]
    pub(crate) ops: Vec<OpInput>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockQuery {
    /// At most 600000 (longer waits are cut to it).
    lock_timeout_ms: Option<u64>,
}

pub async fn transaction(
    State(app): App,
    Extension(claims): Extension<Claims>,
    Path((tenant, name)): Path<(String, String)>,
    Query(q): Query<LockQuery>,
    ops: Ops,
) -> Result<Json<Committed>> {
    let ops = ops.read()?;
    let db = db(&app, &tenant, &name)?;
    charge(&app, &claims, &tenant, &ops)?;
    let ops = db.resolve(&ops)?;
    let done = db
        .execute(ops, lock_timeout(&app, q.lock_timeout_ms))
        .await?;
    Ok(Json(done))
}

pub async fn begin(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Response> {
    let txn = db(&app, &tenant, &name)?.begin()?;
    Ok((StatusCode::CREATED, Json(Begun { txn })).into_response())
}

type TxnPath = Path<(String, String, u64)>;

pub async fn add_ops(
    State(app): App,
    Extension(claims): Extension<Claims>,
    Path((tenant, name, txn)): TxnPath,
    Query(q): Query<LockQuery>,
    ops: Ops,
) -> Result<Json<Pending>> {
    let ops = ops.read()?;
    let db = db(&app, &tenant, &name)?;
    charge(&app, &claims, &tenant, &ops)?;
    let ops = db.resolve(&ops)?;
    let pending = db
        .add(txn, ops, lock_timeout(&app, q.lock_timeout_ms))
        .await?;
    Ok(Json(Pending { txn, pending }))
}

pub async fn get_txn(State(app): App, Path((tenant, name, txn)): TxnPath) -> Result<Json<OpenTxn>> {
    let pending = db(&app, &tenant, &name)?.pending(txn).await?;
    Ok(Json(OpenTxn {
        txn,
        pending,
        state: "open".into(),
    }))
}

pub async fn commit(
    State(app): App,
    Path((tenant, name, txn)): TxnPath,
) -> Result<Json<Committed>> {
    let done = db(&app, &tenant, &name)?.commit(txn).await?;
    Ok(Json(done))
}

pub async fn cancel(
    State(app): App,
    Path((tenant, name, txn)): TxnPath,
) -> Result<Json<Cancelled>> {
    db(&app, &tenant, &name)?.cancel(txn)?;
    Ok(Json(Cancelled {
        txn,
        cancelled: true,
    }))
}

// ---- snapshots, log, checksums ----

fn snapshot_json(meta: &crate::log::durable::SnapshotMeta) -> SnapshotAnswer {
    SnapshotAnswer {
        serial: meta.serial,
        size_bytes: meta.size_bytes,
        blocks: meta.layout.block_count(),
        created_ms: meta.created_ms,
    }
}

pub async fn take_snapshot(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Response> {
    let meta = db(&app, &tenant, &name)?.snapshot().await?;
    Ok((StatusCode::CREATED, Json(snapshot_json(&meta))).into_response())
}

pub async fn list_snapshots(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<Vec<SnapshotAnswer>>> {
    let metas = db(&app, &tenant, &name)?.snapshots()?;
    Ok(Json(metas.iter().map(snapshot_json).collect()))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    from: Option<u64>,
    #[schemars(range(min = 1, max = 10_000))]
    limit: Option<usize>,
}

pub async fn read_log(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Entries<logview::LogEntryView>>> {
    let db = db(&app, &tenant, &name)?;
    let entries = logview::read(&db, q.from.unwrap_or(1), limit(q.limit)?)?;
    Ok(Json(Entries { entries }))
}

/// `GET …/checksums`: each file's blocks with their checksums.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Checksums {
    files: Vec<FileChecksums>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct FileChecksums {
    name: String,
    blocks: Vec<BlockChecksum>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct BlockChecksum {
    block: u32,
    /// The block's xxh3 checksum, 16 hex digits.
    checksum: String,
}

pub async fn checksums(
    State(app): App,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<Checksums>> {
    let files = db(&app, &tenant, &name)?
        .checksums()
        .into_iter()
        .map(|(name, blocks)| FileChecksums {
            name,
            blocks: blocks
                .into_iter()
                .map(|(block, sum)| BlockChecksum {
                    block,
                    checksum: format!("{sum:016x}"),
                })
                .collect(),
        })
        .collect();
    Ok(Json(Checksums { files }))
}
