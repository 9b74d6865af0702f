//! The errors a node's operations return. The API maps each to a problem+json code.

use crate::log::LogError;
use crate::store::StoreError;
use crate::txn::locks::LockError;

/// Why a node operation failed. Every message is safe to show to a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request does not parse, or breaks a bound its schema states (400).
    #[error("{0}")]
    Malformed(String),
    /// A request that parsed into its type and meets its schema, refused on meaning: a
    /// rule between fields, or what it names cannot take it (422 `invalid-request`).
    #[error("{0}")]
    Invalid(String),
    /// A replica's operation (promote) asked of a database that is not a replica (409
    /// `not-a-replica`: the request is well formed, the database's state refuses it).
    #[error("{0}")]
    NotAReplica(String),
    /// The database has open interactive transactions, whose locks the operation would
    /// wait for (a replay rewrites records they may hold): 409 `transactions-open`.
    #[error("{0}")]
    TransactionsOpen(String),
    /// A link's target node answered with a problem of its own (a 4xx: its replica or
    /// database is gone, its credential is refused): 409 `link-refused`.
    #[error("{0}")]
    LinkRefused(String),
    /// The link is not streaming (paused, stopped by its error policy, or retrying
    /// after an error): what needs its replica at one serial (verify, repair) is
    /// refused rather than waited for (409 `link-not-streaming`).
    #[error("{0}")]
    LinkNotStreaming(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// An error caused by operation `index` of a transaction.
    #[error("operation {index}: {err}")]
    AtOp { index: usize, err: Box<Error> },
    #[error("{0}")]
    Lock(#[from] LockError),
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("{0}")]
    Unavailable(String),
    /// A write to a replica, whose data comes only through its link.
    #[error("{0}")]
    ReadOnlyReplica(String),
    /// Committed locally, but the synchronous quorum did not confirm in time.
    #[error("{0}")]
    ReplicationTimeout(String),
    /// A database of a cluster on a node that may not acknowledge its writes now: it is
    /// fenced (its lease could expire) or lost its leader key. `primary`: the current
    /// primary's API when known.
    #[error("{detail}")]
    NotPrimary {
        detail: String,
        primary: Option<String>,
    },
    /// A write sent to a replica of a cluster: `primary` is where to send it.
    #[error("{detail}")]
    Misdirected {
        detail: String,
        primary: Option<String>,
    },
    /// A replica asked to take over has not applied everything its source announced.
    #[error("{0}")]
    NotCaughtUp(String),
    /// A write, or a second restore, while a point-in-time restore runs.
    #[error("{0}")]
    RestoreInProgress(String),
    /// A restore point older than what the retained log and snapshots reach.
    #[error("{detail}")]
    OutsideRetention {
        detail: String,
        oldest_serial: u64,
        oldest_timestamp_us: Option<u64>,
    },
    /// A restore point after the last update or in the future.
    #[error("{0}")]
    PointInFuture(String),
    /// The database's log is further ahead of the disk than the node allows, and a
    /// flush did not bring it back in time: nothing was written; retry later.
    #[error("{detail}")]
    LogBacklog {
        detail: String,
        retry_after_secs: u64,
    },
}

impl Error {
    /// Mark this error as caused by operation `index` of a transaction.
    pub fn at_op(self, index: usize) -> Error {
        Error::AtOp {
            index,
            err: Box::new(self),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
