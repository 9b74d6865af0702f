//! A small blocking client for etcd v3 through its JSON gateway (`/v3/...` on the client
//! port: `kv/range`, `kv/put`, `kv/txn`, `kv/deleterange`, `lease/grant`,
//! `lease/keepalive`, `watch`), over the `ureq` the code base already uses.
//!
//! Why not the `etcd-client` crate: it brings tonic, prost and a protoc build step; on
//! the project's 2-core machine its cold build added minutes (docs/ARCHITECTURE.md has
//! the figure), for six calls whose JSON form is stable since etcd 3.4.
//!
//! Keys and values are base64 in the gateway's JSON, and int64 fields are strings; this
//! module hides both. A call tries each endpoint in turn, starting with the last one that
//! answered, so a cluster that lost a member keeps answering.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// Why an etcd call gave no answer to use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (down, cut off, deadline passed).
    #[error("etcd is unreachable: {0}")]
    Unreachable(String),
    /// An endpoint answered with an error.
    #[error("etcd refused: {0}")]
    Refused(String),
}

/// One key as read.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub lease: i64,
}

/// A comparison of a transaction.
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key was last modified at this revision (0: does not exist).
    ModRevision(String, i64),
    /// The key is attached to this lease.
    Lease(String, i64),
}

/// An operation of a transaction.
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(String),
}

/// The client: the cluster's endpoints and a per-call deadline.
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    preferred: AtomicUsize,
    timeout: Duration,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return b64(&bytes);
        }
    }
    b64(&[0])
}

fn decode_kv(v: &Value) -> Kv {
    let raw = |f: &str| B64.decode(v[f].as_str().unwrap_or("")).unwrap_or_default();
    Kv {
        key: String::from_utf8_lossy(&raw("key")).into_owned(),
        value: raw("value"),
        mod_revision: int(&v["mod_revision"]),
        create_revision: int(&v["create_revision"]),
        lease: int(&v["lease"]),
    }
}

impl Etcd {
    /// A client for `endpoints` (`http://host:port`), each call bounded by `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Etcd {
        Etcd {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            agent: ureq::AgentBuilder::new()
                .timeout(timeout)
                .max_idle_connections_per_host(4)
                .build(),
            preferred: AtomicUsize::new(0),
            timeout,
        }
    }

    /// POST `body` to `path` on the first endpoint that answers.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.endpoints.len().max(1);
        let first = self.preferred.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let Some(endpoint) = self.endpoints.get(at) else {
                break;
            };
            match self
                .agent
                .post(&format!("{endpoint}/v3/{path}"))
                .send_json(body)
            {
                Ok(resp) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    let v: Value = resp
                        .into_json()
                        .map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {e}")))?;
                    // keepalive answers {"result": …}; an error {"error": …}.
                    if let Some(e) = v.get("error") {
                        return Err(EtcdError::Refused(e.to_string()));
                    }
                    return Ok(v.get("result").cloned().unwrap_or(v));
                }
                Err(ureq::Error::Status(status, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    // A member without quorum answers 503: another may have it.
                    if status >= 500 {
                        reasons.push(format!("{endpoint}: {status} {text}"));
                        continue;
                    }
                    return Err(EtcdError::Refused(format!("{status} {text}")));
                }
                Err(e) => reasons.push(format!("{endpoint}: {e}")),
            }
        }
        Err(EtcdError::Unreachable(reasons.join("; ")))
    }

    /// A lease of `ttl_secs` seconds; its id.
    pub fn grant(&self, ttl_secs: i64) -> Result<i64, EtcdError> {
        let v = self.call("lease/grant", &json!({"TTL": ttl_secs}))?;
        Ok(int(&v["ID"]))
    }

    /// Renew a lease: the TTL it has again, 0 when it expired.
    pub fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        let v = self.call("lease/keepalive", &json!({"ID": lease.to_string()}))?;
        Ok(int(&v["TTL"]))
    }

    /// Put `key` (attached to `lease` unless 0).
    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        self.call("kv/put", &body).map(|_| ())
    }

    pub fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("kv/deleterange", &json!({"key": b64(key.as_bytes())}))
            .map(|_| ())
    }

    /// One key, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("kv/range", &json!({"key": b64(key.as_bytes())}))?;
        Ok(v["kvs"].as_array().and_then(|a| a.first()).map(decode_kv))
    }

    /// Every key starting with `prefix`, and the store's revision.
    pub fn range(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        let v = self.call(
            "kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": prefix_end(prefix)}),
        )?;
        let kvs = v["kvs"]
            .as_array()
            .map(|a| a.iter().map(decode_kv).collect())
            .unwrap_or_default();
        Ok((kvs, int(&v["header"]["revision"])))
    }

    /// If every comparison holds, do `ops`; whether it did.
    pub fn txn(&self, compare: &[Compare], ops: &[TxnOp]) -> Result<bool, EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::Absent(key) => json!({"key": b64(key.as_bytes()), "target": "CREATE",
                                               "result": "EQUAL", "create_revision": "0"}),
                Compare::ModRevision(key, rev) => {
                    json!({"key": b64(key.as_bytes()), "target": "MOD",
                                               "result": "EQUAL", "mod_revision": rev.to_string()})
                }
                Compare::Lease(key, lease) => json!({"key": b64(key.as_bytes()), "target": "LEASE",
                                               "result": "EQUAL", "lease": lease.to_string()}),
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => {
                    let mut put = json!({"key": b64(key.as_bytes()), "value": b64(value)});
                    if *lease != 0 {
                        put["lease"] = json!(lease.to_string());
                    }
                    json!({"request_put": put})
                }
                TxnOp::Delete(key) => {
                    json!({"request_delete_range": {"key": b64(key.as_bytes())}})
                }
            })
            .collect();
        let v = self.call("kv/txn", &json!({"compare": compare, "success": success}))?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Watch the keys under `prefix` from `revision` on; `on_event` is called for each
    /// batch of changes until it returns false or the stream ends (an error, the
    /// endpoint gone, or `idle` without news: call again).
    pub fn watch(
        &self,
        prefix: &str,
        revision: i64,
        idle: Duration,
        mut on_event: impl FnMut(i64) -> bool,
    ) -> Result<(), EtcdError> {
        let endpoint =
            &self.endpoints[self.preferred.load(Ordering::Relaxed) % self.endpoints.len()];
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(self.timeout)
            .timeout_read(idle)
            .build();
        let body = json!({"create_request": {"key": b64(prefix.as_bytes()),
                          "range_end": prefix_end(prefix),
                          "start_revision": revision.to_string()}});
        let resp = agent
            .post(&format!("{endpoint}/v3/watch"))
            .send_json(&body)
            .map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {e}")))?;
        let stream = serde_json::Deserializer::from_reader(resp.into_reader()).into_iter::<Value>();
        for item in stream {
            let v = item.map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {e}")))?;
            if v.get("error").is_some() {
                return Err(EtcdError::Refused(v["error"].to_string()));
            }
            let rev = int(&v["result"]["header"]["revision"]);
            if !on_event(rev) {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_the_last_key_with_that_prefix() {
        assert_eq!(B64.decode(prefix_end("/a/")).unwrap(), b"/a0");
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }
}
