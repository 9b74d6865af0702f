//! The audit log: every admin or operator action (a change made through a route whose
//! permission is `Operate`, `Manage` or `NodeAdmin`), allowed or refused, with who, what,
//! when and the result. Kept in the sled `audit` tree, keyed `tenant/ id (big-endian)`,
//! so it survives restarts and reads back in order. Entries hold the route and path,
//! never headers, bodies or tokens.

use serde::{Deserialize, Serialize};

use crate::node::{Node, Result};

/// One recorded action.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Entry {
    /// Increasing across the node.
    pub id: u64,
    pub at_ms: u64,
    /// The token's `sub`.
    pub who: String,
    /// The tenant of the caller's token (`*`: the node administrator).
    pub caller_tenant: String,
    pub role: String,
    /// Method and route, e.g. `POST /v1/tenants/{tenant}/databases`.
    pub action: String,
    /// The request path (no query string).
    pub path: String,
    /// The HTTP status answered.
    pub status: u16,
    /// `ok`, `refused` (401, 403, 404, 429, 507) or `failed`.
    pub result: String,
}

/// The audit log of a node.
pub struct Audit {
    tree: sled::Tree,
    node: std::sync::Arc<Node>,
}

fn key(tenant: &str, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 9);
    key.extend_from_slice(tenant.as_bytes());
    key.push(b'/');
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The result word for a status.
pub fn result_of(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        401 | 403 | 404 | 429 | 507 => "refused",
        _ => "failed",
    }
}

impl Audit {
    pub fn open(node: std::sync::Arc<Node>) -> Result<Audit> {
        Ok(Audit {
            tree: node.tree("audit")?,
            node,
        })
    }

    /// Records an action in `tenant`'s log. Failures are logged, not returned: the
    /// action itself has already happened.
    pub fn record(&self, tenant: &str, mut entry: Entry) {
        let stored = self.node.generate_id().and_then(|id| {
            entry.id = id;
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| crate::node::Error::Unavailable(e.to_string()))?;
            self.tree
                .insert(key(tenant, id), bytes)
                .map_err(crate::log::LogError::from)?;
            Ok(())
        });
        if let Err(e) = stored {
            tracing::warn!(tenant, error = %e, "cannot record an audit entry");
        }
    }

    /// Entries of `tenant` with an id above `after`, oldest first, at most `limit`.
    pub fn read(&self, tenant: &str, after: u64, limit: usize) -> Result<Vec<Entry>> {
        let start = key(tenant, after.saturating_add(1));
        let end = key(tenant, u64::MAX);
        let mut out = Vec::new();
        for item in self.tree.range(start..=end).take(limit) {
            let (_, value) = item.map_err(crate::log::LogError::from)?;
            let entry: Entry = serde_json::from_slice(&value)
                .map_err(|e| crate::node::Error::Unavailable(e.to_string()))?;
            out.push(entry);
        }
        Ok(out)
    }
}
