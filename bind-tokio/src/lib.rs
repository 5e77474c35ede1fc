//! Octopii on tokio: the API an application embeds.
//!
//! Every decision is made by the sans-IO core ([`octopii_core`]); this crate
//! runs it on a tokio task, executes its disk work on a dedicated thread, and
//! hands answers back to async callers.
//!
//! It offers a replicated node started from a [`Config`]
//! ([`OctopiiNode`], on an [`OctopiiRuntime`]), the same node driven by raw
//! kernel commands ([`NodeLoop`]), the write-ahead log on its own
//! ([`WriteAheadLog`]), and the transport on its own, addressed by socket
//! address ([`transport::QuicTransport`], [`rpc::RpcHandler`]).

mod error;
mod node;
mod node_loop;
mod runtime;
pub mod transport;
mod wal;

/// Requests, responses and one-way messages between nodes.
pub mod rpc {
    pub use crate::transport::RpcHandler;
    pub use octopii_core::transport::rpc::{
        MessageId, OneWayMessage, RequestPayload, ResponsePayload, RpcError, RpcRequest, RpcResponse,
    };

    use crate::{OctopiiError, Result};

    /// Encodes `message` with bincode (standard configuration), for the
    /// `data` of custom payloads.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Serialization`] if serde refuses the value.
    pub fn serialize<T: serde::Serialize>(message: &T) -> Result<bytes::Bytes> {
        bincode::serde::encode_to_vec(message, bincode::config::standard())
            .map(bytes::Bytes::from)
            .map_err(|error| OctopiiError::Serialization(error.to_string()))
    }

    /// Decodes what [`serialize`] encoded. Bytes from a peer are untrusted:
    /// bad input is an error, and no length in it is allocated beyond
    /// the input's own size.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Serialization`] for bytes that do not decode to a
    /// `T`, or with bytes left over.
    pub fn deserialize<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T> {
        let config = bincode::config::standard().with_limit::<{ 64 * 1024 * 1024 }>();
        let (message, read) = bincode::serde::decode_from_slice(data, config)
            .map_err(|error| OctopiiError::Serialization(error.to_string()))?;
        if read != data.len() {
            return Err(OctopiiError::Serialization(format!("{} bytes left over", data.len() - read)));
        }
        Ok(message)
    }
}

/// Verified transfers of large bodies (Shipping Lane).
pub mod chunk {
    pub use crate::transport::TransferResult;
    pub use octopii_core::transport::chunk::{ChunkSource, TransferError, TransferReport};
}

pub use error::{OctopiiError, Result};
pub use node::OctopiiNode;
pub use node_loop::NodeLoop;
pub use octopii_core::raft::NodeError;
pub use octopii_core::raft::state_machine::{KvStateMachine, StateMachine, StateMachineTrait};
pub use octopii_core::wal::{RecoveryReport, TornTail, WalConfig, WalEntry, WalError, WalStats};
pub use octopii_core::{NodeStatus, PeerProgress};
pub use octopii_mio::NodeOptions;
pub use octopii_mio::driver::Delivery;
pub use octopii_mio::{ConfStateCompat, Config, ConfigError, TlsPaths};
pub use runtime::OctopiiRuntime;
pub use wal::WriteAheadLog;
