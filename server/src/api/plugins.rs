//! The plugin registry routes (tenant-scoped): upload, list, show, delete, dry-run.
//! Handlers parse and shape JSON; `crate::plugins` does the work. Plugin code runs on
//! the blocking pool, never on an async worker.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use doppel_sdk::abi::{bit, no_base, BatchBuilder, Op, OwnedRecord, Record};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, Body, Path, Query};
use super::AppState;
use crate::plugins::registry::RegistryError;
use crate::plugins::runtime::Resolution;
use crate::plugins::{PluginError, PluginInfo, Role};

type Result<T> = std::result::Result<T, ApiError>;
type App = State<Arc<AppState>>;

/// Most records one dry-run takes.
const MAX_DRY_RUN_RECORDS: usize = 10_000;

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        let (status, code) = match &e {
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            RegistryError::Conflict(_) => (StatusCode::CONFLICT, "already-exists"),
            RegistryError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed-request"),
            RegistryError::Builtin(_) => (StatusCode::CONFLICT, "builtin-plugin"),
            RegistryError::Plugin(p) => return p.clone().into(),
            RegistryError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> ApiError {
        let (status, code) = match &e {
            PluginError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "plugin-rejected"),
            PluginError::Config { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "plugin-config-rejected")
            }
            PluginError::Stopped { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "plugin-stopped"),
            PluginError::Host { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A plugin version as the API shows it (list, show, upload, delete).
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct PluginView {
    name: String,
    version: String,
    #[schemars(with = "RoleName")]
    role: Role,
    /// SHA-256 of the wasm bytes, hex.
    sha256: String,
    size: usize,
    /// The compilation's time (a built-in's: its first; 0 before it).
    compile_ms: u64,
    /// The functions its role's world exports.
    exports: [&'static str; 4],
    /// Carried by the server, in every tenant's registry (not deletable).
    builtin: bool,
    description: String,
    /// The JSON Schema of its config (`GET` of one version only).
    #[serde(skip_serializing_if = "Option::is_none")]
    config_schema: Option<Value>,
}

fn info_json(info: &PluginInfo) -> PluginView {
    PluginView {
        name: info.name.clone(),
        version: info.version.clone(),
        role: info.role,
        sha256: info.sha256.clone(),
        size: info.size,
        compile_ms: info.compile_ms,
        exports: info.role.exports(),
        builtin: info.builtin,
        description: info.description.clone(),
        config_schema: None,
    }
}

/// `DELETE` of a plugin version: what was deleted.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Deleted {
    deleted: PluginView,
}

/// Runs plugin work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("plugin task failed: {e}"),
        )
    })?
}

pub async fn list(State(app): App, Path(tenant): Path<String>) -> Result<Json<Vec<PluginView>>> {
    app.node.databases(&tenant)?;
    // The built-ins first (every tenant has them), then the tenant's uploads.
    let list = app
        .plugins
        .builtins()
        .into_iter()
        .chain(app.plugins.list(&tenant)?);
    Ok(Json(list.map(|p| info_json(&p)).collect()))
}

pub async fn show(
    State(app): App,
    Path((tenant, name, version)): Path<(String, String, String)>,
) -> Result<Json<PluginView>> {
    app.node.databases(&tenant)?;
    let plugins = app.plugins.clone();
    // The template first: a built-in's first load sets its compile time.
    let (info, schema) = blocking(move || {
        let template = plugins.template(&tenant, &name, &version)?;
        // The schema comes from an unconfigured instance: configure may need values.
        Ok((plugins.get(&tenant, &name, &version)?, template.schema()?))
    })
    .await?;
    let mut v = info_json(&info);
    v.config_schema = Some(serde_json::from_str(&schema).unwrap_or(Value::String(schema)));
    Ok(Json(v))
}

/// A plugin's role, as an upload names it.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // the document's only
pub enum RoleName {
    Filter,
    Transform,
    Rule,
    Resolver,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Required (its absence is answered with a precise problem).
    #[schemars(with = "RoleName")]
    role: Option<String>,
}

pub async fn upload(
    State(app): App,
    Path((tenant, name, version)): Path<(String, String, String)>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    app.node.databases(&tenant)?;
    let role = q.role.as_deref().ok_or_else(|| {
        ApiError::malformed("give the plugin's role: ?role=filter|transform|rule|resolver")
    })?;
    let role = Role::parse(role).ok_or_else(|| {
        ApiError::malformed(format!(
            "unknown role '{role}': filter, transform, rule or resolver"
        ))
    })?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/wasm") && !ct.starts_with("application/octet-stream") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "a plugin upload is the raw wasm, Content-Type: application/wasm (got '{ct}')"
                ),
            ));
        }
    }
    let wasm = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!(
                    "the request body is over the limit of {} bytes",
                    super::MAX_BODY_BYTES
                ),
            )
        } else {
            ApiError::malformed(r.body_text())
        }
    })?;
    check_plugin_quota(&app, &tenant, &name, &version, wasm.len())?;
    let plugins = app.plugins.clone();
    let (info, created) =
        blocking(move || Ok(plugins.put(&tenant, &name, &version, role, &wasm)?)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info_json(&info))).into_response())
}

/// A new plugin version must fit the tenant's plugin count and size quotas (re-uploading
/// an existing version is not a new one). Answers 507 quota-exceeded otherwise.
fn check_plugin_quota(
    app: &AppState,
    tenant: &str,
    name: &str,
    version: &str,
    size: usize,
) -> Result<()> {
    let limits = app.tenancy.quotas.limits(tenant);
    if limits.plugins.is_none() && limits.plugin_bytes.is_none() {
        return Ok(());
    }
    let existing = app.plugins.list(tenant)?;
    if existing
        .iter()
        .any(|p| p.name == name && p.version == version)
    {
        return Ok(());
    }
    let count = existing.len() as u64;
    let bytes: u64 = existing.iter().map(|p| p.size as u64).sum();
    let refuse = |detail: String| {
        Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "quota-exceeded",
            detail,
        ))
    };
    if let Some(max) = limits.plugins.filter(|max| count + 1 > *max) {
        return refuse(format!(
            "tenant '{tenant}' has {count} plugin versions and a quota of {max}; delete one first"
        ));
    }
    if let Some(max) = limits.plugin_bytes.filter(|max| bytes + size as u64 > *max) {
        return refuse(format!(
            "tenant '{tenant}' holds {bytes} bytes of plugins; {size} more would pass its quota of {max}"
        ));
    }
    Ok(())
}

pub async fn delete(
    State(app): App,
    Path((tenant, name, version)): Path<(String, String, String)>,
) -> Result<Json<Deleted>> {
    app.node.databases(&tenant)?;
    let info = app.plugins.delete(&tenant, &name, &version)?;
    Ok(Json(Deleted {
        deleted: info_json(&info),
    }))
}

/// Runs `f` when dropped (charges a dry-run's plugin time, however it ended).
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn scopeguard<F: FnOnce()>(f: F) -> OnDrop<F> {
    OnDrop(Some(f))
}

/// One record of a dry-run body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRecord {
    #[schemars(extend("enum" = ["insert", "update", "delete", "read"]))]
    op: String,
    file: String,
    key: String,
    #[serde(default)]
    alt: BTreeMap<String, String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    before: Option<Value>,
    #[serde(default)]
    origin: u64,
    #[serde(default)]
    serial: u64,
    #[serde(default)]
    timestamp: u64,
    #[serde(default)]
    txn: u64,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRun {
    #[serde(default)]
    config: Option<Value>,
    #[schemars(length(max = 10_000))]
    records: Vec<DryRecord>,
    /// A resolver's incoming versions: `remote[i]` conflicts with `records[i]` (local).
    #[serde(default)]
    remote: Option<Vec<DryRecord>>,
    /// A resolver's base versions, `base[i]` the one both overwrote (`null`: none).
    /// Absent: no base for any record.
    #[serde(default)]
    base: Option<Vec<Option<DryRecord>>>,
}

/// One dry-run record; `what` names it in errors (`records[2]`).
fn to_record(r: DryRecord, what: &str) -> Result<OwnedRecord> {
    let op = Op::from_name(&r.op).ok_or_else(|| {
        ApiError::malformed(format!(
            "{what}.op '{}': insert, update, delete or read",
            r.op
        ))
    })?;
    let bytes = |v: Option<Value>| v.map(|v| v.to_string().into_bytes());
    Ok(OwnedRecord {
        op,
        origin: r.origin,
        serial: r.serial,
        timestamp: r.timestamp,
        txn: r.txn,
        file: r.file,
        key: r.key,
        data: bytes(r.data).unwrap_or_default(),
        before: bytes(r.before),
        alt: r.alt.into_iter().collect(),
    })
}

fn to_batch(records: Vec<DryRecord>, field: &str) -> Result<BatchBuilder> {
    let mut b = BatchBuilder::new();
    for (i, r) in records.into_iter().enumerate() {
        b.push(&to_record(r, &format!("{field}[{i}]"))?);
    }
    Ok(b)
}

/// A batch of the records of a dry-run body's `records` (JSON): what `doppel plugin
/// test --bench` measures with.
pub fn records_batch(records: Value) -> Result<BatchBuilder> {
    let records: Vec<DryRecord> = serde_json::from_value(records)
        .map_err(|e| ApiError::malformed(format!("records: {e}")))?;
    to_batch(records, "records")
}

fn record_json(r: &Record<'_>) -> Value {
    let data = |b: &[u8]| {
        serde_json::from_slice(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()))
    };
    let mut v = json!({
        "op": r.op.name(),
        "file": r.file,
        "key": r.key,
        "alt": r.alt().collect::<BTreeMap<_, _>>(),
        "data": if r.data.is_empty() { Value::Null } else { data(r.data) },
    });
    if let Some(b) = r.before {
        v["before"] = data(b);
    }
    v
}

/// What a dry run answers: the plugin's errors and log lines, and per role what it did
/// (a filter: `kept` and `records`; a transform: `records`; a rule: `depends`; a
/// resolver: `decisions`).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct DryRunAnswer {
    /// `name@version`.
    plugin: String,
    #[schemars(with = "RoleName")]
    role: Role,
    /// Records the plugin refused, by index.
    errors: Vec<DryRunError>,
    /// Its log lines.
    log: Vec<String>,
    /// A filter: whether each record passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<bool>")]
    kept: Option<Vec<bool>>,
    /// A filter: the records it keeps; a transform: what it makes of them (or
    /// `{error}` for a record it produced that does not decode).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<DryRecordShown>")]
    records: Option<Vec<Value>>,
    /// A rule: the records each one depends on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<Depends>")]
    depends: Option<Vec<Depends>>,
    /// A resolver: per record the decision and the version the site ends with.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<DecisionShown>")]
    decisions: Option<Vec<Value>>,
}

/// A record a plugin refused.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct DryRunError {
    /// Its index in `records`.
    index: u32,
    message: String,
}

impl From<&crate::plugins::runtime::RecordError> for DryRunError {
    fn from(e: &crate::plugins::runtime::RecordError) -> Self {
        DryRunError {
            index: e.index,
            message: e.message.clone(),
        }
    }
}

/// A dependency a rule declares: record `index` waits for `file`/`key`.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Depends {
    index: u32,
    file: String,
    key: String,
}

/// A record as a dry run shows it.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct DryRecordShown {
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alt: Option<BTreeMap<String, String>>,
    /// JSON, or the bytes as text when they are not JSON; `null` when empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<Value>,
    /// A record the transform produced that does not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A resolver's decision for one record.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct DecisionShown {
    decision: DecisionName,
    /// The version the site ends with.
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

#[derive(schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum DecisionName {
    Local,
    Remote,
    Merged,
}

pub async fn dry_run(
    State(app): App,
    Path((tenant, name, version)): Path<(String, String, String)>,
    Body(body): Body<DryRun>,
) -> Result<Json<DryRunAnswer>> {
    app.node.databases(&tenant)?;
    if body.records.len() > MAX_DRY_RUN_RECORDS {
        return Err(ApiError::malformed(format!(
            "a dry run takes at most {MAX_DRY_RUN_RECORDS} records"
        )));
    }
    if let Err(wait) = app.tenancy.quotas.plugin_cpu_available(&tenant) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota-exceeded",
            format!(
                "tenant '{tenant}' used its plugin CPU time quota; it refills in {} ms",
                wait.as_millis().max(1)
            ),
        ));
    }
    let (quotas, charged) = (app.tenancy.clone(), tenant.clone());
    let started = std::time::Instant::now();
    let _charge = scopeguard(move || quotas.quotas.charge_plugin_cpu(&charged, started.elapsed()));
    let plugins = app.plugins.clone();
    blocking(move || {
        let template = plugins.template(&tenant, &name, &version)?;
        run_dry(&template, &format!("{name}@{version}"), body).map(Json)
    })
    .await
}

/// Runs a dry-run body through a plugin's template: what `POST …/dry-run` answers, and
/// what `doppel plugin test` prints for a local component (the same runtime and limits).
pub fn run_dry(
    template: &crate::plugins::runtime::Template,
    label: &str,
    body: DryRun,
) -> Result<DryRunAnswer> {
    let config = body.config.map(|c| c.to_string()).unwrap_or_default();
    let n = body.records.len();
    // A resolver's other two sides: the remote versions, and the bases (or "no base").
    let sides = match (body.remote, body.base) {
        (None, None) => None,
        (Some(remote), base) => {
            if remote.len() != n {
                return Err(ApiError::invalid(format!(
                    "a resolver's dry run pairs records[i] (the local version) with remote[i]: got {n} records and {} remote",
                    remote.len()
                )));
            }
            let base = match base {
                None => (0..n).map(|_| None).collect(),
                Some(base) if base.len() == n => base,
                Some(base) => {
                    return Err(ApiError::invalid(format!(
                        "base[i] is the base version of records[i]: got {n} records and {} base (null for a record without one, or leave base out)",
                        base.len()
                    )))
                }
            };
            let mut bases = BatchBuilder::new();
            for (i, (b, local)) in base.into_iter().zip(&body.records).enumerate() {
                match b {
                    Some(b) => bases.push(&to_record(b, &format!("base[{i}]"))?),
                    None => bases.push(&no_base(&local.file, &local.key)),
                }
            }
            Some((to_batch(remote, "remote")?, bases))
        }
        (None, Some(_)) => return Err(ApiError::invalid(
            "base goes with remote: a resolver's dry run takes records (local), remote and base",
        )),
    };
    let input = to_batch(body.records, "records")?;
    let role = template.role();
    let mut stage = template.stage(&config)?;
    if role == Role::Resolver {
        return resolve_dry_run(&mut stage, label, input, sides);
    }
    if sides.is_some() {
        return Err(ApiError::invalid(format!(
            "remote and base are a resolver's; '{label}' is a {role}"
        )));
    }
    let out = stage.call(input.as_batch(), None)?;
    let mut v = DryRunAnswer {
        plugin: label.to_string(),
        role,
        errors: out.errors.iter().map(DryRunError::from).collect(),
        log: out.log,
        kept: None,
        records: None,
        depends: None,
        decisions: None,
    };
    match role {
        Role::Filter => {
            let kept: Vec<bool> = (0..n).map(|i| bit(&out.bitmap, i)).collect();
            let records: Vec<Value> = input
                .as_batch()
                .iter()
                .zip(&kept)
                .filter(|(_, k)| **k)
                .filter_map(|(r, _)| r.ok().map(|r| record_json(&r)))
                .collect();
            v.kept = Some(kept);
            v.records = Some(records);
        }
        Role::Transform => {
            let records: Vec<Value> = out
                .batch
                .as_batch()
                .iter()
                .map(|r| match r {
                    Ok(r) => record_json(&r),
                    Err(e) => json!({"error": e.to_string()}),
                })
                .collect();
            v.records = Some(records);
        }
        Role::Rule => {
            v.depends = Some(
                out.depends
                    .into_iter()
                    .map(|(index, file, key)| Depends { index, file, key })
                    .collect(),
            );
        }
        Role::Resolver => unreachable!("resolvers run through resolve_dry_run"),
    }
    Ok(v)
}

/// A resolver's dry run: per record the decision and the version the site ends with.
fn resolve_dry_run(
    stage: &mut crate::plugins::Stage,
    plugin: &str,
    local: BatchBuilder,
    sides: Option<(BatchBuilder, BatchBuilder)>,
) -> Result<DryRunAnswer> {
    let (remote, base) = sides.ok_or_else(|| {
        ApiError::invalid(format!(
            "'{plugin}' is a resolver: give remote (remote[i] conflicts with records[i]) and optionally base"
        ))
    })?;
    let out = stage.resolve(local.as_batch(), remote.as_batch(), base.as_batch())?;
    let version = |b: &BatchBuilder, i: usize| {
        b.as_batch()
            .get(i)
            .map(|r| {
                let j = record_json(&r);
                json!({"op": j["op"], "data": j["data"]})
            })
            .unwrap_or(Value::Null)
    };
    let decisions: Vec<Value> = out
        .decisions
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Resolution::Local => {
                let mut v = version(&local, i);
                v["decision"] = json!("local");
                v
            }
            Resolution::Remote => {
                let mut v = version(&remote, i);
                v["decision"] = json!("remote");
                v
            }
            Resolution::Merged(data) => json!({
                "decision": "merged",
                "op": "update",
                "data": serde_json::from_slice::<Value>(data).unwrap_or(Value::Null),
            }),
        })
        .collect();
    Ok(DryRunAnswer {
        plugin: plugin.to_string(),
        role: Role::Resolver,
        errors: out.errors.iter().map(DryRunError::from).collect(),
        log: out.log,
        kept: None,
        records: None,
        depends: None,
        decisions: Some(decisions),
    })
}
