//! The fence: whether this node may acknowledge client writes of a database now.
//!
//! In a cluster (`crate::cluster`), a replicated database takes writes only on the node
//! that holds its leader key in etcd, and only while that node's lease is certainly
//! alive: a primary that cannot renew its lease stops acknowledging **before** the lease
//! can expire for the other members (so two primaries never both acknowledge). The
//! node cannot reach the cluster (dependencies point down), so the cluster installs an
//! implementation of [`Fence`] on the node at start-up, as transport does with the write
//! gate ([`super::gate`]). Without a cluster there is no fence and nothing changes.
//!
//! [`super::Database::execute`] asks it twice: before a write (refused with nothing
//! written) and again once the write is committed and replicated, before it is
//! acknowledged: a write whose lease ran out meanwhile is refused (it stays in the
//! local log as a tail the next primary's history makes this node discard).

use super::Result;

/// What a node in a cluster says about client writes (see the module).
pub trait Fence: Send + Sync {
    /// `Ok` when writes of `database` of `tenant` may be acknowledged now, else the
    /// refusal ([`super::Error::NotPrimary`], [`super::Error::Misdirected`]).
    fn admit(&self, tenant: &str, database: &str) -> Result<()>;
}
