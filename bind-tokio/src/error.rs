//! The error type of the tokio binding's API.

use octopii_core::KernelConfigError;
use octopii_core::raft::NodeError;
use octopii_core::transport::chunk::TransferError;
use octopii_core::transport::rpc::RpcError;
use octopii_core::wal::{WalConfigError, WalError};

/// Why an Octopii operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OctopiiError {
    /// A file or directory could not be used.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The write-ahead log refused or failed the operation: the variant
    /// inside says which (entry too large, write failed, corruption, ...).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A node's configuration is invalid: its log, Raft or transport
    /// settings, or a transport configured for another node.
    #[error("invalid node configuration: {0}")]
    NodeConfig(#[from] KernelConfigError),
    /// A [`crate::Config`] is refused: a field out of range, a file that
    /// does not parse, a TLS identity that cannot be read.
    #[error(transparent)]
    InvalidConfig(#[from] octopii_mio::ConfigError),
    /// Raft refused or could not finish the request: not the leader (with
    /// the leader if known), dropped by a change of leader, timed out,
    /// storage failed, unknown peer.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The state machine refused the command, with its message.
    #[error("the state machine refused the command: {0}")]
    Rejected(String),
    /// No such member (for example, promoting a node that is not a
    /// learner).
    #[error("node {0} is not a member in that role")]
    NodeNotFound(u64),
    /// A message or request to a peer failed: timed out, connection lost,
    /// peer unreachable or unknown, too large, queue full.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// A Shipping Lane transfer failed: checksum mismatch, interrupted,
    /// refused, or its file unreadable.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// A message could not be encoded or decoded.
    #[error("serialization: {0}")]
    Serialization(String),
    /// The component has shut down and takes no more requests.
    #[error("shut down")]
    Shutdown,
}

impl From<octopii_mio::Error> for OctopiiError {
    fn from(error: octopii_mio::Error) -> Self {
        match error {
            octopii_mio::Error::Io(error) => OctopiiError::Io(error),
            octopii_mio::Error::Config(error) => error.into(),
            octopii_mio::Error::Wal(error) => OctopiiError::Wal(error),
            _ => OctopiiError::Shutdown,
        }
    }
}

impl From<WalConfigError> for OctopiiError {
    fn from(error: WalConfigError) -> Self {
        OctopiiError::Config(error.to_string())
    }
}

/// Result with [`OctopiiError`].
pub type Result<T> = std::result::Result<T, OctopiiError>;
