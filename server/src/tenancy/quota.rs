//! Per-tenant quotas and usage.
//!
//! * **Memory**: the bytes of blocks held by all of a tenant's databases (the sum of
//!   their `memory_bytes`). A write route is refused with 507 `quota-exceeded` once the
//!   tenant is at or over its limit; the write that crosses the limit is still applied
//!   (a soft limit, checked before the request). Each database's own
//!   `memory_quota_bytes` stays a hard limit inside the store.
//! * **Request rate**: a token bucket per tenant (`requests_per_sec`, `burst`); an empty
//!   bucket answers 429 `rate-limited` with `Retry-After`. The node administrator
//!   (tenant `*`) is not limited.
//! * **Operation rate**: a request rate does not bound work (a batch of 1,000 operations
//!   is one request), so writes are also charged per operation (`operations_per_sec`,
//!   `operations_burst`, default one second's worth): a batch of n takes n tokens. A
//!   batch larger than the burst passes when the bucket is full and leaves it in debt,
//!   which later writes wait out; so a tenant's sustained rate is its quota whatever its
//!   batch size. Refused: 429 `rate-limited` with `Retry-After`, nothing written.
//! * **Byte rate**: the same for the bytes a write carries (`bytes_per_sec`,
//!   `bytes_burst`): each operation's key, alternate keys and data, so a tenant writing
//!   few large records is bounded as one writing many small ones (Kafka's
//!   `producer_byte_rate` bounds the same). A write is charged both or neither.
//! * **Concurrent writes**: at most `concurrent_writes` write requests of a tenant run
//!   at once; the others wait their turn (they are not refused). On a node with few
//!   cores a tenant flooding it from many connections otherwise holds every worker, and
//!   a neighbour's single put waits behind its batches. Applies to every caller,
//!   the node administrator too: it shares load, it is not a charge.
//! * **Storage**: the bytes of log chunks and snapshots the tenant's databases keep in
//!   sled (`LogStore::stored_bytes`, before sled's own overhead). Like memory, a soft
//!   limit checked before write and operate requests (snapshots add storage) with 507
//!   `quota-exceeded`; retention, snapshots pruning the A log, and deleting databases
//!   bring it down.
//! * Under both, `DELETE` requests always pass, so a tenant at its quota can free space.
//! * **Plugins**: the number of plugin versions in the registry and their wasm bytes,
//!   checked when a new version is uploaded (507 `quota-exceeded`; the check is in
//!   `api::plugins`).
//! * **Plugin CPU time**: a budget of milliseconds per second, refilled at that rate (one
//!   second's worth at most). A dry-run past it answers 429; a link's stages wait for
//!   it ([`Quotas::plugin_cpu_available`], [`Quotas::charge_plugin_cpu`]).
//!
//! Limits: the `[quotas]` section of the node config gives the defaults; the node
//! administrator sets a tenant's own with `PUT /v1/tenants/{tenant}/quotas` (kept in the
//! `config` tree under `quota/{tenant}`). Absent means unlimited.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::node::{Node, Result};

/// A tenant's limits. `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Bytes of blocks in RAM over all the tenant's databases.
    pub memory_bytes: Option<u64>,
    /// Bytes of log and snapshots in sled over all the tenant's databases.
    pub storage_bytes: Option<u64>,
    /// Sustained requests per second.
    pub requests_per_sec: Option<u32>,
    /// Requests allowed at once above the rate (default: one second's worth).
    pub burst: Option<u32>,
    /// Write requests of the tenant that run at once (others wait for a turn).
    pub concurrent_writes: Option<u32>,
    /// Sustained written operations per second (a batch of n counts n).
    pub operations_per_sec: Option<u32>,
    /// Operations allowed at once above the rate (default: one second's worth).
    pub operations_burst: Option<u32>,
    /// Sustained bytes written per second: each operation's key, alternate keys and
    /// data.
    pub bytes_per_sec: Option<u64>,
    /// Bytes allowed at once above the rate (default: one second's worth).
    pub bytes_burst: Option<u64>,
    /// Plugin versions in the registry.
    pub plugins: Option<u64>,
    /// Bytes of plugin wasm in the registry.
    pub plugin_bytes: Option<u64>,
    /// Milliseconds of plugin CPU time per second (dry-runs and link stages), with one
    /// second's worth as the burst.
    pub plugin_cpu_ms_per_sec: Option<u64>,
}

impl Limits {
    /// `self` with `defaults` filling what it leaves unset.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            storage_bytes: self.storage_bytes.or(defaults.storage_bytes),
            requests_per_sec: self.requests_per_sec.or(defaults.requests_per_sec),
            burst: self.burst.or(defaults.burst),
            operations_per_sec: self.operations_per_sec.or(defaults.operations_per_sec),
            concurrent_writes: self.concurrent_writes.or(defaults.concurrent_writes),
            operations_burst: self.operations_burst.or(defaults.operations_burst),
            bytes_per_sec: self.bytes_per_sec.or(defaults.bytes_per_sec),
            bytes_burst: self.bytes_burst.or(defaults.bytes_burst),
            plugins: self.plugins.or(defaults.plugins),
            plugin_bytes: self.plugin_bytes.or(defaults.plugin_bytes),
            plugin_cpu_ms_per_sec: self
                .plugin_cpu_ms_per_sec
                .or(defaults.plugin_cpu_ms_per_sec),
        }
    }
}

/// The write-rate quota that refused a write ([`Quotas::take_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateQuota {
    Operations,
    Bytes,
}

/// A tenant's turns for write requests, and how many wait for one.
struct Turns {
    turns: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// `tenant`'s bucket in `buckets` (full when new), refilled at `rate` tokens a
    /// second up to `cap` for the time since it was last looked at.
    fn refilled<'a>(
        buckets: &'a mut HashMap<String, Bucket>,
        tenant: &str,
        rate: f64,
        cap: f64,
    ) -> &'a mut Bucket {
        let now = Instant::now();
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: cap,
            last: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * rate).min(cap);
        bucket.last = now;
        bucket
    }
}

/// A token bucket's settings: `rate` a second, at most `burst` at once (default: one
/// second's worth). The request, operation and byte quotas are each one.
#[derive(Clone, Copy)]
struct TokenRate {
    rate: f64,
    burst: f64,
}

impl TokenRate {
    /// None when there is no rate (unlimited).
    fn of(per_sec: Option<impl Into<u64>>, burst: Option<impl Into<u64>>) -> Option<TokenRate> {
        let rate = per_sec.map(Into::into).filter(|r| *r > 0)? as f64;
        Some(TokenRate {
            rate,
            burst: burst.map_or(rate, |b| b.into() as f64).max(1.0),
        })
    }

    /// Put `n` tokens taken by [`Self::take`] back (the write they were for was refused
    /// by another quota).
    fn give_back(self, buckets: &Mutex<HashMap<String, Bucket>>, tenant: &str, n: usize) {
        if let Some(bucket) = buckets.lock().get_mut(tenant) {
            bucket.tokens = (bucket.tokens + n as f64).min(self.burst);
        }
    }

    /// Take `n` tokens from `tenant`'s bucket; `Err(wait)` until it holds them, or
    /// until it is full when `n` is more than the burst (it is then left in debt).
    fn take(
        self,
        buckets: &Mutex<HashMap<String, Bucket>>,
        tenant: &str,
        n: usize,
    ) -> std::result::Result<(), Duration> {
        let mut buckets = buckets.lock();
        let bucket = Bucket::refilled(&mut buckets, tenant, self.rate, self.burst);
        let n = n as f64;
        let needed = n.min(self.burst);
        if bucket.tokens >= needed {
            bucket.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (needed - bucket.tokens) / self.rate,
            ))
        }
    }

    /// Tokens `tenant`'s bucket would hold now (negative: in debt).
    fn available(self, buckets: &Mutex<HashMap<String, Bucket>>, tenant: &str) -> f64 {
        buckets.lock().get(tenant).map_or(self.burst, |b| {
            (b.tokens + b.last.elapsed().as_secs_f64() * self.rate).min(self.burst)
        })
    }
}

/// Quotas of a node's tenants.
pub struct Quotas {
    defaults: Limits,
    limits: Mutex<HashMap<String, Limits>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Written operations, per tenant.
    operations: Mutex<HashMap<String, Bucket>>,
    /// Written bytes, per tenant.
    bytes: Mutex<HashMap<String, Bucket>>,
    /// Turns for write requests, per tenant with a `concurrent_writes` limit.
    writers: Mutex<HashMap<String, Arc<Turns>>>,
    /// Plugin CPU budgets: milliseconds left, refilled at the tenant's rate.
    cpu: Mutex<HashMap<String, Bucket>>,
}

fn config_key(tenant: &str) -> String {
    format!("quota/{tenant}")
}

impl Quotas {
    /// Loads every tenant's limits from the node's `config` tree.
    pub fn load(node: &Node, defaults: Limits) -> Result<Quotas> {
        let mut limits = HashMap::new();
        for tenant in node.tenants() {
            if let Some(bytes) = node.config_value(&config_key(&tenant))? {
                let own: Limits = serde_json::from_slice(&bytes)
                    .map_err(|e| crate::node::Error::Unavailable(e.to_string()))?;
                limits.insert(tenant, own);
            }
        }
        let quotas = Quotas::new(defaults);
        *quotas.limits.lock() = limits;
        Ok(quotas)
    }

    /// Quotas with `defaults` for every tenant and nothing of their own yet.
    pub fn new(defaults: Limits) -> Quotas {
        Quotas {
            defaults,
            limits: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            operations: Mutex::new(HashMap::new()),
            bytes: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            cpu: Mutex::new(HashMap::new()),
        }
    }

    /// The limits in force for `tenant`.
    pub fn limits(&self, tenant: &str) -> Limits {
        let own = self.limits.lock().get(tenant).copied().unwrap_or_default();
        own.or(self.defaults)
    }

    /// Sets `tenant`'s own limits, durably.
    pub fn set(&self, node: &Node, tenant: &str, limits: Limits) -> Result<()> {
        let bytes = serde_json::to_vec(&limits)
            .map_err(|e| crate::node::Error::Unavailable(e.to_string()))?;
        node.set_config_value(&config_key(tenant), &bytes)?;
        self.limits.lock().insert(tenant.to_string(), limits);
        self.buckets.lock().remove(tenant);
        self.operations.lock().remove(tenant);
        self.bytes.lock().remove(tenant);
        self.writers.lock().remove(tenant);
        self.cpu.lock().remove(tenant);
        Ok(())
    }

    /// Whether `tenant` may run plugins now; `Err(wait)` until its CPU budget refills.
    /// The budget may go below zero by the last call's cost, which later calls repay.
    pub fn plugin_cpu_available(&self, tenant: &str) -> std::result::Result<(), Duration> {
        let Some(rate) = self.limits(tenant).plugin_cpu_ms_per_sec.filter(|r| *r > 0) else {
            return Ok(());
        };
        let rate = rate as f64;
        let mut cpu = self.cpu.lock();
        let bucket = Bucket::refilled(&mut cpu, tenant, rate, rate);
        if bucket.tokens > 0.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((-bucket.tokens + 1.0) / rate))
        }
    }

    /// Charge `spent` plugin CPU time to `tenant`.
    pub fn charge_plugin_cpu(&self, tenant: &str, spent: Duration) {
        if self.limits(tenant).plugin_cpu_ms_per_sec.is_none() {
            return;
        }
        if let Some(bucket) = self.cpu.lock().get_mut(tenant) {
            bucket.tokens -= spent.as_secs_f64() * 1000.0;
        }
    }

    /// Takes one request from `tenant`'s bucket; `Err(wait)` when it is empty.
    pub fn take_request(&self, tenant: &str) -> std::result::Result<(), Duration> {
        let limits = self.limits(tenant);
        match TokenRate::of(limits.requests_per_sec, limits.burst) {
            Some(r) => r.take(&self.buckets, tenant, 1),
            None => Ok(()),
        }
    }

    /// Takes `n` written operations from `tenant`'s bucket; `Err(wait)` until it holds
    /// them (or, for a batch larger than the burst, until it is full: the batch then
    /// leaves it in debt).
    pub fn take_operations(&self, tenant: &str, n: usize) -> std::result::Result<(), Duration> {
        self.take_write(tenant, n, 0).map_err(|(wait, _)| wait)
    }

    /// Charge a write of `ops` operations carrying `bytes` to `tenant`'s operation and
    /// byte quotas, both or neither; `Err` names the quota that refused it and how long
    /// to wait.
    pub fn take_write(
        &self,
        tenant: &str,
        ops: usize,
        bytes: u64,
    ) -> std::result::Result<(), (Duration, RateQuota)> {
        let limits = self.limits(tenant);
        let operations = TokenRate::of(limits.operations_per_sec, limits.operations_burst);
        if let Some(r) = operations {
            r.take(&self.operations, tenant, ops)
                .map_err(|wait| (wait, RateQuota::Operations))?;
        }
        if let Some(r) = TokenRate::of(limits.bytes_per_sec, limits.bytes_burst) {
            let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
            if let Err(wait) = r.take(&self.bytes, tenant, bytes) {
                if let Some(o) = operations {
                    o.give_back(&self.operations, tenant, ops);
                }
                return Err((wait, RateQuota::Bytes));
            }
        }
        Ok(())
    }

    /// Bytes `tenant` could write at once now (None: unlimited; negative: in debt).
    pub fn available_bytes(&self, tenant: &str) -> Option<i64> {
        let limits = self.limits(tenant);
        TokenRate::of(limits.bytes_per_sec, limits.bytes_burst)
            .map(|r| r.available(&self.bytes, tenant) as i64)
    }

    /// Wait for a turn to run a write request of `tenant`; the turn ends when the
    /// returned permit drops. None: the tenant's writes are not limited.
    pub async fn write_turn(&self, tenant: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let limit = self.limits(tenant).concurrent_writes.filter(|n| *n > 0)?;
        let turns = self
            .writers
            .lock()
            .entry(tenant.to_string())
            .or_insert_with(|| {
                Arc::new(Turns {
                    turns: Arc::new(tokio::sync::Semaphore::new(limit as usize)),
                    waiting: Default::default(),
                })
            })
            .clone();
        turns.waiting.fetch_add(1, Ordering::Relaxed);
        let turn = turns.turns.clone().acquire_owned().await.ok();
        turns.waiting.fetch_sub(1, Ordering::Relaxed);
        turn
    }

    /// Write requests of `tenant` waiting for a turn now.
    pub fn writes_waiting(&self, tenant: &str) -> usize {
        self.writers
            .lock()
            .get(tenant)
            .map_or(0, |t| t.waiting.load(Ordering::Relaxed))
    }

    /// Operations `tenant` could write at once now (None: unlimited; negative: in debt).
    pub fn available_operations(&self, tenant: &str) -> Option<i64> {
        let limits = self.limits(tenant);
        TokenRate::of(limits.operations_per_sec, limits.operations_burst)
            .map(|r| r.available(&self.operations, tenant) as i64)
    }

    /// Requests `tenant` could make at once now (None: unlimited).
    pub fn available_requests(&self, tenant: &str) -> Option<u64> {
        let limits = self.limits(tenant);
        TokenRate::of(limits.requests_per_sec, limits.burst)
            .map(|r| r.available(&self.buckets, tenant) as u64)
    }

    /// Bytes of blocks `tenant`'s databases hold.
    pub fn memory_used(node: &Node, tenant: &str) -> u64 {
        node.databases(tenant)
            .map(|dbs| dbs.iter().map(|db| db.memory_bytes()).sum())
            .unwrap_or(0)
    }

    /// Bytes of log and snapshots `tenant`'s databases keep in sled.
    pub fn storage_used(node: &Node, tenant: &str) -> u64 {
        node.databases(tenant)
            .map(|dbs| dbs.iter().map(|db| db.stored_bytes().unwrap_or(0)).sum())
            .unwrap_or(0)
    }

    /// `Err((used, limit))` when `tenant` is at or over its storage limit.
    pub fn check_storage(&self, node: &Node, tenant: &str) -> std::result::Result<(), (u64, u64)> {
        at_limit(self.limits(tenant).storage_bytes, || {
            Self::storage_used(node, tenant)
        })
    }

    /// `Err((used, limit))` when `tenant` is at or over its memory limit.
    pub fn check_memory(&self, node: &Node, tenant: &str) -> std::result::Result<(), (u64, u64)> {
        at_limit(self.limits(tenant).memory_bytes, || {
            Self::memory_used(node, tenant)
        })
    }
}

/// `Err((used, limit))` when there is a limit and usage has reached it.
fn at_limit(limit: Option<u64>, used: impl FnOnce() -> u64) -> std::result::Result<(), (u64, u64)> {
    let Some(limit) = limit else {
        return Ok(());
    };
    match used() {
        used if used >= limit => Err((used, limit)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(limits: Limits) -> Quotas {
        let q = Quotas {
            defaults: Limits::default(),
            limits: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            operations: Mutex::new(HashMap::new()),
            bytes: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            cpu: Mutex::new(HashMap::new()),
        };
        q.limits.lock().insert("t".into(), limits);
        q
    }

    #[test]
    fn a_batch_larger_than_the_burst_passes_a_full_bucket_and_leaves_a_debt() {
        let q = quotas(Limits {
            operations_per_sec: Some(10),
            operations_burst: Some(100),
            ..Limits::default()
        });
        q.take_operations("t", 250)
            .expect("a full bucket lets a big batch pass");
        // 150 operations in debt at 10 a second: the next one waits about 15 s.
        let wait = q.take_operations("t", 1).unwrap_err();
        assert!(wait > Duration::from_secs(14), "{wait:?}");
        assert!(q.available_operations("t").unwrap() < -140);
        // Without an operation quota, nothing is counted.
        q.take_operations("other", 1_000_000).unwrap();
        assert_eq!(q.available_operations("other"), None);
    }

    #[test]
    fn a_write_is_charged_to_both_rates_or_to_neither() {
        let q = quotas(Limits {
            operations_per_sec: Some(100),
            bytes_per_sec: Some(1_000),
            bytes_burst: Some(2_000),
            ..Limits::default()
        });
        q.take_write("t", 10, 1_500).unwrap();
        assert_eq!(q.available_bytes("t").map(|b| b / 100), Some(5));
        // Over the byte rate: refused, naming it, and its operations given back.
        let before = q.available_operations("t").unwrap();
        let (wait, which) = q.take_write("t", 10, 1_500).unwrap_err();
        assert_eq!(which, RateQuota::Bytes);
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        assert!(q.available_operations("t").unwrap() >= before);
        // Over the operation rate: the bytes are not taken.
        let (_, which) = q.take_write("t", 1_000, 1).unwrap_err();
        assert_eq!(which, RateQuota::Operations);
        assert!(q.available_bytes("t").unwrap() < 600);
        // Without either quota, nothing is counted.
        q.take_write("other", 1 << 20, u64::MAX).unwrap();
        assert_eq!(q.available_bytes("other"), None);
    }

    #[test]
    fn operations_within_the_burst_pass_until_it_is_spent() {
        let q = quotas(Limits {
            operations_per_sec: Some(1),
            operations_burst: Some(10),
            ..Limits::default()
        });
        q.take_operations("t", 6).unwrap();
        q.take_operations("t", 4).unwrap();
        let wait = q.take_operations("t", 3).unwrap_err();
        assert!(wait > Duration::from_secs(2), "{wait:?}");
    }
}
