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
    #[error("{0}")]
    Malformed(String),
    /// A store refusal, with the index of the transaction operation that caused it.
    #[error("{}{err}", op_index.map(|i| format!("operation {i}: ")).unwrap_or_default())]
    Store {
        op_index: Option<usize>,
        err: StoreError,
    },
    #[error("{0}")]
    Lock(#[from] LockError),
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        Error::Store {
            op_index: None,
            err,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
